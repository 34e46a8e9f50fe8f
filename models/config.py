"""What a model is, as configuration: task kind, source, fine-tuning mode, LoRA.

Parsed once from the run config (``[tool.flwr.app.config]`` / ``Context.run_config``)
into a frozen dataclass; every other module receives the dataclass, never raw keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from fedshield.common.config import ConfigError
from fedshield.common.run_config import check, check_fields, default, read_fields

__all__ = [
    "ALL_LINEAR",
    "ATTENTION",
    "FinetuneMode",
    "ModelConfig",
    "Pooling",
    "TaskKind",
]


class TaskKind(StrEnum):
    """What the model is trained to do."""

    SEQUENCE_CLASSIFICATION = "sequence-classification"
    CAUSAL_LM = "causal-lm"


class FinetuneMode(StrEnum):
    """Which parameters train: LoRA adapters + task head, every parameter, or the
    task head alone (a linear probe on the frozen encoder's features)."""

    LORA = "lora"
    FULL = "full"
    HEAD = "head"


class Pooling(StrEnum):
    """How a sequence becomes one vector for the classification head."""

    MEAN = "mean"  # masked mean of the last hidden states (sentence encoders)
    CLS = "cls"  # Hugging Face's own sequence-classification head ([CLS]/pooler)


#: ``model.lora.targets`` values that name no module: the architecture's attention
#: query/value projections (resolved in :func:`.loading.lora_targets`), or every
#: linear layer but the output head.
ATTENTION = "attention"
ALL_LINEAR = "all-linear"


def _names(value: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in value.split(",") if t.strip())


@dataclass(frozen=True)
class ModelConfig:
    """How to build the shared model.

    Attributes:
        source: local folder or Hugging Face hub id; ``""`` selects the task's
            packaged model: all-MiniLM-L6-v2 (6-layer BERT, 22M parameters) or,
            for the causal LM, SmolLM2-135M-Instruct.
        task: sequence classification (BERT-style) or causal LM (GPT-style).
        num_labels: classes of the classification head (unused by the causal LM).
        max_length: tokens per example after truncation/padding.
        finetune: LoRA adapters (+ task head) or full fine-tuning.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: dropout on the LoRA branch.
        lora_targets: module names LoRA wraps (e.g. ``("q_proj", "v_proj")``), or
            ``("attention",)`` (the architecture's query/value projections) or
            ``("all-linear",)``.
        lora_freeze_a: FFA-LoRA: the A matrices stay at their seeded
            initialisation and only B (and the head) train.
        pooling: ``mean`` (masked mean of the last hidden states, our head) or
            ``cls`` (the Hugging Face sequence-classification head of the model).
        dropout: dropout before the ``mean`` head's classifier.
        init_seed: seed for every randomly initialised weight (head, LoRA), so the
            server and all sites build bit-identical starting models.
    """

    source: str = default("model.source")
    task: TaskKind = TaskKind(default("model.task"))
    num_labels: int = default("model.num-labels")
    max_length: int = default("model.max-length")
    finetune: FinetuneMode = FinetuneMode(default("model.finetune"))
    lora_r: int = default("model.lora.r")
    lora_alpha: int = default("model.lora.alpha")
    lora_dropout: float = default("model.lora.dropout")
    lora_targets: tuple[str, ...] = _names(default("model.lora.targets"))
    lora_freeze_a: bool = default("model.lora.freeze-a")
    pooling: Pooling = Pooling(default("model.pooling"))
    dropout: float = default("model.dropout")
    init_seed: int = 0

    KEYS: ClassVar[dict[str, str]] = {
        "source": "model.source",
        "task": "model.task",
        "num_labels": "model.num-labels",
        "max_length": "model.max-length",
        "finetune": "model.finetune",
        "lora_r": "model.lora.r",
        "lora_alpha": "model.lora.alpha",
        "lora_dropout": "model.lora.dropout",
        "lora_freeze_a": "model.lora.freeze-a",
        "pooling": "model.pooling",
        "dropout": "model.dropout",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)
        check("model.lora.targets", ",".join(self.lora_targets))
        if self.lora_freeze_a and self.finetune is not FinetuneMode.LORA:
            raise ConfigError(
                "`model.lora.freeze-a` = true freezes LoRA's A matrices, but "
                f"`model.finetune` = {self.finetune.value!r} has no LoRA adapters. "
                "Set model.finetune='lora' or drop model.lora.freeze-a."
            )
        if self.finetune is FinetuneMode.HEAD and self.task is TaskKind.CAUSAL_LM:
            raise ConfigError(
                "`model.finetune` = 'head' trains the classification head alone, "
                "but `model.task` = 'causal-lm' has no head of its own to train. "
                "Use model.finetune='lora' or 'full'."
            )
        special = {ATTENTION, ALL_LINEAR} & set(self.lora_targets)
        if special and len(self.lora_targets) > 1:
            raise ConfigError(
                f"`model.lora.targets` = {','.join(self.lora_targets)!r}: "
                f"{sorted(special)[0]!r} stands alone; give it, or module names."
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ModelConfig:
        """Parse the ``model.*`` keys (and ``seed``) of a Flower run config."""
        fields = read_fields(
            run_config,
            {**cls.KEYS, "lora_targets": "model.lora.targets", "init_seed": "seed"},
            convert={
                "task": TaskKind,
                "finetune": FinetuneMode,
                "pooling": Pooling,
                "lora_targets": _names,
            },
        )
        return cls(**fields)
