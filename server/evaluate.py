"""Central evaluation of the global model on a held-out test set, every round."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedshield.common.device import pick_device
from fedshield.models import LoadedModel, load_model, load_trainable_state, tasks
from fedshield.models.evaluate import EvalResult
from fedshield.models.texts import LabeledTexts

from .config import ServerConfig

__all__ = ["CentralEvaluator", "CentralTestLoader"]

# (data.test-path, the parsed run config) -> the central test set; the wiring
# (fedshield.simulations.apps) reads the file or falls back to the packaged data
CentralTestLoader = Callable[[str, Mapping[str, Any]], LabeledTexts]


class CentralEvaluator:
    """Holds one model and the tokenized test set; evaluates any trainable state."""

    def __init__(self, cfg: ServerConfig, test: LabeledTexts) -> None:
        self.loaded: LoadedModel = load_model(cfg.model)
        self.device = pick_device()
        self.dataset = tasks.encode(test, self.loaded.tokenizer, cfg.model)
        self.batch_size = cfg.eval_batch_size

    def __call__(self, state: dict[str, torch.Tensor]) -> EvalResult:
        load_trainable_state(self.loaded.model, state)
        return tasks.evaluate(
            self.loaded.model,
            self.dataset,
            self.loaded.config,
            batch_size=self.batch_size,
            device=self.device,
        )
