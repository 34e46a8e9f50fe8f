"""Membership-inference audits that test the privacy claims empirically: attacks on
the final model (loss threshold, offline LiRA), the one-run canary audit (Steinke
et al. 2023) and the run's HTML/JSON audit report."""

from .attacks import lira_offline_scores, logit_confidence, loss_threshold_scores
from .canaries import Canaries, CanaryKind, make_canaries
from .config import AuditConfig
from .one_run import OneRunAudit, audit_guesses, empirical_epsilon, p_value
from .roc import REPORTED_FPRS, RocCurve, roc
from .verdict import SiteAudit

__all__ = [
    "REPORTED_FPRS",
    "AuditConfig",
    "Canaries",
    "CanaryKind",
    "OneRunAudit",
    "RocCurve",
    "SiteAudit",
    "audit_guesses",
    "empirical_epsilon",
    "lira_offline_scores",
    "logit_confidence",
    "loss_threshold_scores",
    "make_canaries",
    "p_value",
    "roc",
]
