"""The ServerApp: round orchestration, aggregation of deltas, central evaluation,
checkpoints and the run summary."""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import ServerConfig
from .rounds import RoundAborted, RoundLog, run_round, screen_replies

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "RoundAborted",
    "RoundLog",
    "ServerConfig",
    "load_checkpoint",
    "run_round",
    "save_checkpoint",
    "screen_replies",
]
