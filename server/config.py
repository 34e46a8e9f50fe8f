"""The server's view of the run config, parsed once at the ServerApp's boundary.

The server reads the privacy settings it must act on (the sample-level DP it
reports, client-level noise, secure aggregation) from the same declarations the
sites parse; it never imports the client's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fedshield.common.config import ConfigError
from fedshield.common.layout import RunLayout
from fedshield.common.run_config import RunConfig, check_fields, read_fields
from fedshield.models import ModelConfig, TaskKind
from fedshield.privacy.adversarial.robustness import RobustnessConfig
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.privacy.dp import DPConfig, GradSampleMode, default_grad_sample_mode
from fedshield.privacy.secagg import SecAggConfig

from .guard import GuardConfig
from .strategy import ROBUST, StrategyConfig, StrategyName, check_robust

# adaptive FedOpt: a norm bound on the mean does not bound their step
GUARD_REFUSES = {StrategyName.FEDADAM, StrategyName.FEDYOGI, StrategyName.FEDADAGRAD}

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
        checkpoint_key: the checkpoint signing key's path ("" = unsigned).
    """

    model: ModelConfig
    dp: DPConfig
    client_dp: ClientDPConfig
    secagg: SecAggConfig
    strategy: StrategyConfig
    guard: GuardConfig
    robustness: RobustnessConfig
    run_config: RunConfig  # every key, parsed (what summary.json and resume compare)
    num_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_train_sites: int
    out_dir: Path
    resume: bool
    round_timeout: float
    eval_batch_size: int
    test_path: str
    checkpoint_key: str
    seed: int

    KEYS: ClassVar[dict[str, str]] = {
        "num_rounds": "num-server-rounds",
        "fraction_train": "fraction-train",
        "fraction_evaluate": "fraction-evaluate",
        "min_train_sites": "min-train-sites",
        "resume": "resume",
        "round_timeout": "round-timeout",
        "eval_batch_size": "eval.batch-size",
        "test_path": "data.test-path",
        "checkpoint_key": "checkpoint.signing-key",
        "seed": "seed",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)
        if self.secagg.enabled:  # fail at run start, not deep inside round 1
            self.secagg.counts(max(2, self.min_train_sites))
        check_robust(
            self.strategy,
            secagg=self.secagg.enabled,
            client_dp=self.client_dp.enabled,
            min_sites=self.min_train_sites,
        )
        if self.guard.enabled and self.strategy.name in ROBUST:
            raise ConfigError(
                f"strategy.root-guard tests the round's mean; strategy.name = "
                f"{self.strategy.name.value!r} aggregates the sites' updates one by "
                "one and takes no mean. Choose one: the guard (with fedavg or "
                "fedavgm, also under secure aggregation) or the robust rule."
            )
        if self.guard.enabled and self.strategy.name in GUARD_REFUSES:
            raise ConfigError(
                f"strategy.root-guard bounds the norm of the round's mean, but "
                f"strategy.name = {self.strategy.name.value!r} scales each "
                "coordinate of its step by that coordinate's history, so the bound "
                "would not hold (and its moments keep moving the model in a round "
                "the guard rejects). Use the guard with fedavg or fedavgm."
            )
        key = self.signing_key_path
        if key is not None and (
            not key.is_absolute()
            or key.is_relative_to(self.out_dir)
            or key.resolve().is_relative_to(self.out_dir)
        ):
            raise ConfigError(
                "Expected `checkpoint.signing-key` to be an absolute path outside "
                f"out-dir ({self.out_dir}): whoever can write the checkpoint must not "
                f"also hold the key that vouches for it. Found {self.checkpoint_key!r}."
            )
        if self.robustness.enabled and self.model.task is TaskKind.CAUSAL_LM:
            raise ConfigError(
                "`eval.attacks` = true measures a classifier's robust accuracy and "
                "character-attack success; found model.task = 'causal-lm', which "
                "has neither. Set eval.attacks=false for a causal LM."
            )

    @property
    def grad_sample_mode(self) -> GradSampleMode:
        """How the sites compute per-sample gradients (for the run's banner)."""
        return default_grad_sample_mode(self.model.finetune)

    @property
    def signing_key_path(self) -> Path | None:
        return Path(self.checkpoint_key).expanduser() if self.checkpoint_key else None

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.out_dir)

    @classmethod
    def from_run_config(cls, raw: Mapping[str, Any]) -> ServerConfig:
        """Parse the run config once (unknown keys refused, defaults filled in)."""
        run_config = RunConfig.parse(raw)
        return cls(
            model=ModelConfig.from_run_config(run_config),
            dp=DPConfig.from_run_config(run_config),
            client_dp=ClientDPConfig.from_run_config(run_config),
            secagg=SecAggConfig.from_run_config(run_config),
            strategy=StrategyConfig.from_run_config(run_config),
            guard=GuardConfig.from_run_config(run_config),
            robustness=RobustnessConfig.from_run_config(run_config),
            run_config=run_config,
            out_dir=Path(run_config["out-dir"]).expanduser().resolve(),
            **read_fields(run_config, cls.KEYS),
        )
