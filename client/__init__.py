"""The ClientApp: site data, the local DP trainer, message handlers."""

from .config import ClientConfig
from .data import (
    LabeledTexts,
    SiteDataConfig,
    SiteDataError,
    read_labeled_file,
    tokenize,
)
from .evaluate import EvalResult, evaluate_model
from .trainer import TrainConfig, TrainResult, train_site

__all__ = [
    "ClientConfig",
    "EvalResult",
    "LabeledTexts",
    "SiteDataConfig",
    "SiteDataError",
    "TrainConfig",
    "TrainResult",
    "evaluate_model",
    "read_labeled_file",
    "tokenize",
    "train_site",
]
