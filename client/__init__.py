"""The ClientApp: site data, the local DP trainer, message handlers."""

from .config import ClientConfig
from .data import SiteDataConfig, SiteDataError, read_labeled_file
from .trainer import TrainConfig, TrainResult, train_site

__all__ = [
    "ClientConfig",
    "SiteDataConfig",
    "SiteDataError",
    "TrainConfig",
    "TrainResult",
    "read_labeled_file",
    "train_site",
]
