"""The client's view of the run config, parsed once per message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedshield.common.run_config import RunConfig, check_fields, read_fields
from fedshield.models import ModelConfig
from fedshield.privacy.adversarial import AdversarialConfig
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
    adversarial: AdversarialConfig
    client_dp: ClientDPConfig
    secagg: SecAggConfig
    pii: PIIConfig
    data: SiteDataConfig
    num_rounds: int
    seed: int
    eval_batch_size: int  # federated evaluation at the site (``eval.batch-size``)

    KEYS: ClassVar[dict[str, str]] = {
        "num_rounds": "num-server-rounds",
        "seed": "seed",
        "eval_batch_size": "eval.batch-size",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)

    @property
    def grad_sample_mode(self) -> GradSampleMode:
        return default_grad_sample_mode(self.model.finetune)

    @classmethod
    def from_run_config(cls, raw: Mapping[str, Any]) -> ClientConfig:
        """Parse the run config once (unknown keys refused, defaults filled in)."""
        run_config = RunConfig.parse(raw)
        return cls(
            model=ModelConfig.from_run_config(run_config),
            train=TrainConfig.from_run_config(run_config),
            dp=DPConfig.from_run_config(run_config),
            adversarial=AdversarialConfig.from_run_config(run_config),
            client_dp=ClientDPConfig.from_run_config(run_config),
            secagg=SecAggConfig.from_run_config(run_config),
            pii=PIIConfig.from_run_config(run_config),
            data=SiteDataConfig.from_run_config(run_config),
            **read_fields(run_config, cls.KEYS),
        )
