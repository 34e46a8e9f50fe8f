"""Privacy mechanisms, independent of Flower: DP-SGD setup, budgets and their
accounting, client-level DP, dataset fingerprints, the signed site ledger, and
book-keeping per-sample clipping."""

from .budget import (
    BudgetCheck,
    Release,
    accountant_of,
    check_budget,
    compose_epsilon,
    exclusive,
    plan_release,
)
from .client_dp import ClientDPConfig, clip_update, l2_norm, noisy_mean, secure_normal
from .dp import (
    AccountantKind,
    DPConfig,
    GradSampleMode,
    PrivateTraining,
    accountant_to_json,
    default_grad_sample_mode,
    make_non_private,
    make_private,
    noise_for_target_epsilon,
)
from .fingerprint import dataset_fingerprint
from .ledger import (
    LedgerEntry,
    LedgerError,
    LedgerReader,
    Mechanism,
    SiteLedger,
    VerifyReport,
)

__all__ = [
    "AccountantKind",
    "BudgetCheck",
    "ClientDPConfig",
    "DPConfig",
    "GradSampleMode",
    "LedgerEntry",
    "LedgerError",
    "LedgerReader",
    "Mechanism",
    "PrivateTraining",
    "Release",
    "SiteLedger",
    "VerifyReport",
    "accountant_of",
    "accountant_to_json",
    "check_budget",
    "clip_update",
    "compose_epsilon",
    "dataset_fingerprint",
    "default_grad_sample_mode",
    "exclusive",
    "l2_norm",
    "make_non_private",
    "make_private",
    "noise_for_target_epsilon",
    "noisy_mean",
    "plan_release",
    "secure_normal",
]
