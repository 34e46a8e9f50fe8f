"""Membership-inference audits that test the privacy claims empirically: attacks on
the final model (confidence threshold, offline LiRA), the one-run canary audit (Steinke
et al. 2023), Secret-Sharer exposure of planted secrets (causal LM) and the run's
HTML/JSON audit report."""

from .attacks import lira_offline_scores, logit_confidence
from .canaries import SECRET_FORMAT, Canaries, CanaryKind, make_canaries
from .config import AuditConfig
from .exposure import (
    ExposureAudit,
    ExposureMethod,
    PlantedSecrets,
    SecretFormat,
    chance_exposure,
    measure_exposure,
    plant_secrets,
)
from .gradient_canaries import (
    CanaryInjector,
    GradientCanaries,
    gradient_canary_scores,
    make_gradient_canaries,
    trainable_sizes,
    trainable_vector,
)
from .one_run import (
    PRIMARY_ANALYSIS,
    PRIMARY_BOUND,
    OneRunAudit,
    audit_guesses,
    empirical_epsilon,
    p_value,
)
from .roc import REPORTED_FPRS, LowFpr, RocCurve, clopper_pearson, roc
from .verdict import CanaryTest, SiteAudit, Verdict

__all__ = [
    "PRIMARY_ANALYSIS",
    "PRIMARY_BOUND",
    "REPORTED_FPRS",
    "SECRET_FORMAT",
    "AuditConfig",
    "CanaryInjector",
    "CanaryTest",
    "Canaries",
    "CanaryKind",
    "ExposureAudit",
    "ExposureMethod",
    "GradientCanaries",
    "LowFpr",
    "OneRunAudit",
    "PlantedSecrets",
    "RocCurve",
    "SecretFormat",
    "SiteAudit",
    "Verdict",
    "audit_guesses",
    "chance_exposure",
    "clopper_pearson",
    "empirical_epsilon",
    "lira_offline_scores",
    "logit_confidence",
    "gradient_canary_scores",
    "make_canaries",
    "make_gradient_canaries",
    "measure_exposure",
    "p_value",
    "plant_secrets",
    "roc",
    "trainable_sizes",
    "trainable_vector",
]
