"""Central evaluation of the global model on a held-out test set, every round."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedshield.common.device import pick_device
from fedshield.models import LoadedModel, load_model, load_trainable_state, tasks
from fedshield.models.evaluate import EvalResult
from fedshield.models.texts import LabeledTexts
from fedshield.privacy.adversarial.robustness import evaluate_robustness

from .config import ServerConfig

__all__ = ["CentralEvaluator", "CentralTestLoader", "ProbeLoader"]

# (data.test-path, the parsed run config) -> the central test set; the wiring
# (fedshield.simulations.apps) reads the file or falls back to the packaged data
CentralTestLoader = Callable[[str, Mapping[str, Any]], LabeledTexts]
# (the central test set, the run config) -> named probe sets, each labelled with
# what an attacker wants the model to say (simulations.poison.attack_probes); the
# share of a probe the model classifies as labelled is that attack's success
ProbeLoader = Callable[[LabeledTexts, Mapping[str, Any]], dict[str, LabeledTexts]]


class CentralEvaluator:
    """Holds one model and the tokenized test set; evaluates any trainable state
    (with ``eval.attacks``, its robustness too, on the same attacked records and
    attack randomness every round)."""

    def __init__(
        self,
        cfg: ServerConfig,
        test: LabeledTexts,
        probes: Mapping[str, LabeledTexts] | None = None,
    ) -> None:
        self.loaded: LoadedModel = load_model(cfg.model)
        self.device = pick_device()
        self.test = test
        self.dataset = tasks.encode(test, self.loaded.tokenizer, cfg.model)
        self.probes = {
            name: tasks.encode(records, self.loaded.tokenizer, cfg.model)
            for name, records in (probes or {}).items()
            if len(records)
        }
        self.batch_size = cfg.eval_batch_size
        self.robustness = cfg.robustness
        self.seed = cfg.seed

    def __call__(self, state: dict[str, torch.Tensor]) -> EvalResult:
        load_trainable_state(self.loaded.model, state)
        result = tasks.evaluate(
            self.loaded.model,
            self.dataset,
            self.loaded.config,
            batch_size=self.batch_size,
            device=self.device,
        )
        if self.probes:
            shares = {
                name: tasks.evaluate(
                    self.loaded.model,
                    probe,
                    self.loaded.config,
                    batch_size=self.batch_size,
                    device=self.device,
                ).accuracy
                for name, probe in self.probes.items()
            }
            result = dataclasses.replace(result, attack=shares)
        if not self.robustness.enabled:
            return result
        robust = evaluate_robustness(
            self.loaded.model,
            self.loaded.tokenizer,
            self.test,
            self.robustness,
            max_length=self.loaded.config.max_length,
            batch_size=self.batch_size,
            device=self.device,
            seed=self.seed,
        )
        return dataclasses.replace(
            result,
            robust_accuracy=robust.robust_accuracy,
            char_attack_success=robust.char_attack_success,
        )
