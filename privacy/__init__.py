"""Privacy mechanisms, independent of Flower: DP-SGD setup and accounting, durable
storage of privacy state, book-keeping per-sample clipping, the site ledger."""

from .dp import (
    AccountantKind,
    DPConfig,
    GradSampleMode,
    PrivateTraining,
    accountant_from_json,
    accountant_to_json,
    default_grad_sample_mode,
    epsilon_of,
    make_non_private,
    make_private,
    noise_for_target_epsilon,
)
from .ledger import (
    LedgerEntry,
    LedgerError,
    Mechanism,
    SiteLedger,
    VerifyReport,
)
from .storage import atomic_write_bytes, atomic_write_json

__all__ = [
    "AccountantKind",
    "DPConfig",
    "GradSampleMode",
    "LedgerEntry",
    "LedgerError",
    "Mechanism",
    "PrivateTraining",
    "SiteLedger",
    "VerifyReport",
    "accountant_from_json",
    "accountant_to_json",
    "atomic_write_bytes",
    "atomic_write_json",
    "default_grad_sample_mode",
    "epsilon_of",
    "make_non_private",
    "make_private",
    "noise_for_target_epsilon",
]
