"""The client's view of the run config, parsed once per message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedshield.models import ModelConfig
from fedshield.models.config import ConfigError, require
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.privacy.dp import DPConfig, GradSampleMode, default_grad_sample_mode
from fedshield.privacy.pii import PIIConfig
from fedshield.privacy.secagg import SecAggConfig

from .data import SiteDataConfig
from .trainer import TrainConfig

__all__ = ["ClientConfig"]


@dataclass(frozen=True)
class ClientConfig:
    model: ModelConfig
    train: TrainConfig
    dp: DPConfig
    client_dp: ClientDPConfig
    secagg: SecAggConfig
    pii: PIIConfig
    data: SiteDataConfig
    num_rounds: int
    seed: int
    eval_batch_size: int  # federated evaluation at the site (``eval.batch-size``)

    @property
    def grad_sample_mode(self) -> GradSampleMode:
        return default_grad_sample_mode(self.model.finetune)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ClientConfig:
        rounds = require(run_config, "num-server-rounds", int)
        if rounds < 1:
            raise ConfigError(f"`num-server-rounds` must be >= 1. Found {rounds}.")
        return cls(
            model=ModelConfig.from_run_config(run_config),
            train=TrainConfig.from_run_config(run_config),
            dp=DPConfig.from_run_config(run_config),
            client_dp=ClientDPConfig.from_run_config(run_config),
            secagg=SecAggConfig.from_run_config(run_config),
            pii=PIIConfig.from_run_config(run_config),
            data=SiteDataConfig.from_run_config(run_config),
            num_rounds=rounds,
            seed=require(run_config, "seed", int),
            eval_batch_size=_eval_batch_size(run_config),
        )


def _eval_batch_size(run_config: dict[str, Any]) -> int:
    size = require(run_config, "eval.batch-size", int)
    if size < 1:
        raise ConfigError(f"`eval.batch-size` must be >= 1. Found {size}.")
    return size
