"""What a model is, as configuration: task kind, source, fine-tuning mode, LoRA.

Parsed once from the run config (``[tool.flwr.app.config]`` / ``Context.run_config``)
into a frozen dataclass; every other module receives the dataclass, never raw keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

__all__ = [
    "ConfigError",
    "FinetuneMode",
    "ModelConfig",
    "Pooling",
    "TaskKind",
    "require",
]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class TaskKind(StrEnum):
    """What the model is trained to do."""

    SEQUENCE_CLASSIFICATION = "sequence-classification"
    CAUSAL_LM = "causal-lm"


class FinetuneMode(StrEnum):
    """Which parameters train: LoRA adapters + task head, or every parameter."""

    LORA = "lora"
    FULL = "full"


class Pooling(StrEnum):
    """How a sequence becomes one vector for the classification head."""

    MEAN = "mean"  # masked mean of the last hidden states (sentence encoders)
    CLS = "cls"  # Hugging Face's own sequence-classification head ([CLS]/pooler)


def require(run_config: dict[str, Any], key: str, kind: type) -> Any:
    """Return ``run_config[key]`` checked to be of ``kind`` (int accepted for float).

    Raises:
        ConfigError: naming the key, the expected type and the value found.
    """
    if key not in run_config:
        raise ConfigError(
            f"Run config key `{key}` is missing. Add it to [tool.flwr.app.config] "
            f'in pyproject.toml or pass it with --run-config "{key}=...".'
        )
    value = run_config[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"`{key}` must be an integer. Found {value!r}.")
    if not isinstance(value, kind):
        raise ConfigError(
            f"`{key}` must be of type {kind.__name__}. Found {value!r} "
            f"({type(value).__name__})."
        )
    return value


def parse_enum(enum: type[Enum], key: str, value: str) -> Any:
    """Map a kebab-case string to an enum member, or say which values exist."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)  # type: ignore[attr-defined]
        raise ConfigError(
            f"`{key}` must be one of {allowed}. Found {value!r}."
        ) from None


@dataclass(frozen=True)
class ModelConfig:
    """How to build the shared model.

    Attributes:
        source: local folder or Hugging Face hub id; ``""`` selects the packaged
            all-MiniLM-L6-v2 (6-layer BERT, 22M parameters).
        task: sequence classification (BERT-style) or causal LM (GPT-style).
        num_labels: classes of the classification head.
        max_length: tokens per example after truncation/padding.
        finetune: LoRA adapters (+ task head) or full fine-tuning.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: dropout on the LoRA branch.
        lora_targets: module names LoRA wraps (e.g. ``("query", "value")``).
        pooling: ``mean`` (masked mean of the last hidden states, our head) or
            ``cls`` (the Hugging Face sequence-classification head of the model).
        dropout: dropout before the ``mean`` head's classifier.
        init_seed: seed for every randomly initialised weight (head, LoRA), so the
            server and all sites build bit-identical starting models.
    """

    source: str = ""
    task: TaskKind = TaskKind.SEQUENCE_CLASSIFICATION
    num_labels: int = 2
    max_length: int = 64
    finetune: FinetuneMode = FinetuneMode.LORA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("query", "value")
    pooling: Pooling = Pooling.MEAN
    dropout: float = 0.1
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.task is not TaskKind.SEQUENCE_CLASSIFICATION:
            raise ConfigError(
                f"`model.task` = {self.task.value!r} is not available yet; only "
                "'sequence-classification' is. "
                'Set model.task="sequence-classification".'
            )
        if self.num_labels < 2:
            raise ConfigError(
                f"`model.num-labels` must be >= 2. Found {self.num_labels}."
            )
        if not 8 <= self.max_length <= 4096:
            raise ConfigError(
                f"`model.max-length` must be in [8, 4096]. Found {self.max_length}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(
                f"`model.dropout` must be in [0, 1). Found {self.dropout}."
            )
        if self.finetune is FinetuneMode.LORA:
            if self.lora_r < 1:
                raise ConfigError(f"`model.lora.r` must be >= 1. Found {self.lora_r}.")
            if self.lora_alpha < 1:
                raise ConfigError(
                    f"`model.lora.alpha` must be >= 1. Found {self.lora_alpha}."
                )
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ConfigError(
                    "`model.lora.dropout` must be in [0, 1). "
                    f"Found {self.lora_dropout}."
                )
            if not self.lora_targets:
                raise ConfigError(
                    "`model.lora.targets` is empty. Name the modules LoRA wraps, "
                    'e.g. model.lora.targets="query,value".'
                )

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ModelConfig:
        """Parse the ``model.*`` keys (and ``seed``) of a Flower run config."""
        targets = require(run_config, "model.lora.targets", str)
        return cls(
            source=require(run_config, "model.source", str),
            task=parse_enum(
                TaskKind, "model.task", require(run_config, "model.task", str)
            ),
            num_labels=require(run_config, "model.num-labels", int),
            max_length=require(run_config, "model.max-length", int),
            finetune=parse_enum(
                FinetuneMode,
                "model.finetune",
                require(run_config, "model.finetune", str),
            ),
            lora_r=require(run_config, "model.lora.r", int),
            lora_alpha=require(run_config, "model.lora.alpha", int),
            lora_dropout=require(run_config, "model.lora.dropout", float),
            lora_targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
            pooling=parse_enum(
                Pooling, "model.pooling", require(run_config, "model.pooling", str)
            ),
            dropout=require(run_config, "model.dropout", float),
            init_seed=require(run_config, "seed", int),
        )
