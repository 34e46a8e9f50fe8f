"""Central evaluation of the global model on a held-out test split, every round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fedshield.client.data import (
    LabeledTexts,
    SiteDataConfig,
    read_labeled_file,
    tokenize,
)
from fedshield.client.evaluate import EvalResult, evaluate_model
from fedshield.client.trainer import pick_device
from fedshield.models import LoadedModel, load_model, load_trainable_state

from .config import ServerConfig

__all__ = ["CentralEvaluator", "central_test_data"]


def central_test_data(cfg: ServerConfig, run_config: dict[str, Any]) -> LabeledTexts:
    """The test file named by ``data.test-path``, else the default test split."""
    if cfg.test_path:
        return read_labeled_file(
            Path(cfg.test_path), SiteDataConfig.from_run_config(run_config)
        )
    from fedshield.simulations.scenario import central_test_split

    return central_test_split(run_config)


class CentralEvaluator:
    """Holds one model and the tokenized test set; evaluates any trainable state."""

    def __init__(self, cfg: ServerConfig, test: LabeledTexts) -> None:
        self.loaded: LoadedModel = load_model(cfg.model)
        self.device = pick_device()
        self.dataset = tokenize(
            test, self.loaded.tokenizer, max_length=cfg.model.max_length
        )
        self.batch_size = cfg.eval_batch_size

    def __call__(self, state: dict[str, torch.Tensor]) -> EvalResult:
        load_trainable_state(self.loaded.model, state)
        return evaluate_model(
            self.loaded.model,
            self.dataset,
            batch_size=self.batch_size,
            device=self.device,
        )
