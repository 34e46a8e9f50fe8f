"""The ServerApp: round orchestration, aggregation of deltas, central evaluation,
checkpoints and the run summary."""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import ServerConfig
from .replies import screen_replies
from .rounds import RoundAborted, RoundLog, run_round
from .strategy import StrategyConfig, StrategyName, build_strategy

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "RoundAborted",
    "RoundLog",
    "ServerConfig",
    "StrategyConfig",
    "StrategyName",
    "build_strategy",
    "load_checkpoint",
    "run_round",
    "save_checkpoint",
    "screen_replies",
]
