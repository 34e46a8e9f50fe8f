"""Privacy mechanisms, independent of Flower: DP-SGD setup and accounting, durable
storage of privacy state, book-keeping per-sample clipping."""

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
from .storage import atomic_write_bytes, atomic_write_json

__all__ = [
    "AccountantKind",
    "DPConfig",
    "GradSampleMode",
    "PrivateTraining",
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
