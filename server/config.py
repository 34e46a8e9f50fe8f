"""The server's view of the run config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.models import ModelConfig
from fedshield.models.config import ConfigError, require

__all__ = ["ServerConfig"]


@dataclass(frozen=True)
class ServerConfig:
    """Round orchestration settings.

    Attributes:
        num_rounds: federated rounds to run (in total, counting resumed ones).
        fraction_train: share of connected sites sampled per round.
        fraction_evaluate: share of sites asked for federated evaluation (their
            metrics are released without DP noise; default 0).
        min_train_sites: a round needs at least this many valid updates.
        out_dir: where summary.json, checkpoints and the final weights go.
        resume: continue the run whose checkpoint is in ``out_dir``.
        round_timeout: seconds to wait for sites' replies in a round.
        eval_batch_size: batch size of the central evaluation.
        test_path: central test file (CSV/JSONL); "" = default dataset's test split.
    """

    model: ModelConfig
    num_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_train_sites: int
    out_dir: Path
    resume: bool
    round_timeout: float
    eval_batch_size: int
    test_path: str
    seed: int

    def __post_init__(self) -> None:
        if self.num_rounds < 1:
            raise ConfigError(
                f"`num-server-rounds` must be >= 1. Found {self.num_rounds}."
            )
        for key, value in (
            ("fraction-train", self.fraction_train),
            ("fraction-evaluate", self.fraction_evaluate),
        ):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"`{key}` must be in [0, 1]. Found {value}.")
        if self.fraction_train == 0.0:
            raise ConfigError("`fraction-train` must be > 0 or no site ever trains.")
        if self.min_train_sites < 1:
            raise ConfigError(
                f"`min-train-sites` must be >= 1. Found {self.min_train_sites}."
            )
        if self.eval_batch_size < 1:
            raise ConfigError(
                f"`eval.batch-size` must be >= 1. Found {self.eval_batch_size}."
            )
        if not self.round_timeout > 0:
            raise ConfigError(
                f"`round-timeout` must be > 0. Found {self.round_timeout}."
            )

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ServerConfig:
        out = require(run_config, "out-dir", str)
        if not out:
            raise ConfigError(
                "`out-dir` is empty. Name a directory for the run's outputs."
            )
        return cls(
            model=ModelConfig.from_run_config(run_config),
            num_rounds=require(run_config, "num-server-rounds", int),
            fraction_train=require(run_config, "fraction-train", float),
            fraction_evaluate=require(run_config, "fraction-evaluate", float),
            min_train_sites=require(run_config, "min-train-sites", int),
            out_dir=Path(out).expanduser().resolve(),
            resume=require(run_config, "resume", bool),
            round_timeout=require(run_config, "round-timeout", float),
            eval_batch_size=require(run_config, "eval.batch-size", int),
            test_path=require(run_config, "data.test-path", str),
            seed=require(run_config, "seed", int),
        )
