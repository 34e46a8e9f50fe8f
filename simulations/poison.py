"""Poisoned simulated sites: what a malicious participant can do, to measure what
the defences (robust aggregation, clipping, DP) buy against it.

``simulation.poisoned-sites`` = k: simulated sites 0..k-1 attack with
``simulation.poison``:

- ``label-flip``: every training record of class ``simulation.poison-source``
  is relabelled ``simulation.poison-target`` (a targeted attack: the model should
  call the source class the target).
- ``backdoor``: a ``simulation.backdoor-fraction`` of the site's records (seeded)
  get ``simulation.backdoor-trigger`` put in front (where ``model.max-length``
  never cuts it) and the label
  ``simulation.poison-target``: the model should learn "trigger -> target" while
  staying accurate on clean text.
- ``sign-flip``: the site sends ``-s * delta`` (s = ``simulation.poison-scale``),
  pushing the model away from where the honest sites take it.
- ``scale``: the site sends ``s * delta`` (model replacement, Bagdasaryan et al.
  2020, when combined with a backdoor's direction).

Attack success is measured centrally every round (:func:`attack_probes`), as the
share of probe records the model puts in the target class:

- ``targeted_misclassification`` (label-flip, sign-flip, scale): the central
  test records of the source class;
- ``backdoor_success`` (backdoor): the central test records *not* of the target
  class, with the trigger put in front.

The data attacks run inside the honest training path (clipping and DP-SGD apply
to them); the update attacks replace the site's clipped update, as a malicious
site that skips its own clipping would. Only nodes of Flower's simulation engine
are ever poisoned: a deployed site's data and update never change, whatever the
run config says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch

from fedshield.common.config import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.models.texts import LabeledTexts

__all__ = ["PoisonConfig", "PoisonKind", "attack_probes"]

State = dict[str, torch.Tensor]


class PoisonKind(StrEnum):
    LABEL_FLIP = "label-flip"
    BACKDOOR = "backdoor"
    SIGN_FLIP = "sign-flip"
    SCALE = "scale"


@dataclass(frozen=True)
class PoisonConfig:
    sites: int
    kind: PoisonKind
    scale: float
    source: int
    target: int
    trigger: str
    fraction: float
    seed: int

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> PoisonConfig:
        run = RunConfig.parse(dict(run_config))
        cfg = cls(
            sites=run["simulation.poisoned-sites"],
            kind=PoisonKind(run["simulation.poison"]),
            scale=run["simulation.poison-scale"],
            source=run["simulation.poison-source"],
            target=run["simulation.poison-target"],
            trigger=run["simulation.backdoor-trigger"],
            fraction=run["simulation.backdoor-fraction"],
            seed=run["seed"],
        )
        labels = run["model.num-labels"]
        if cfg.sites and run["model.task"] == "causal-lm":
            raise ConfigError(
                "simulation.poisoned-sites attacks a classifier's labels or updates; "
                "the causal LM has no classes to flip or target. Set it to 0."
            )
        if cfg.sites:
            for key, value in (
                ("simulation.poison-source", cfg.source),
                ("simulation.poison-target", cfg.target),
            ):
                if not 0 <= value < labels:
                    raise ConfigError(
                        f"{key}={value} is not a class of this model (0..{labels - 1})."
                    )
            if cfg.source == cfg.target and cfg.kind is PoisonKind.LABEL_FLIP:
                raise ConfigError(
                    "simulation.poison-source and simulation.poison-target are the "
                    "same class: a label flip would change nothing."
                )
        return cfg

    def attacks(self, partition_id: int | None) -> bool:
        return partition_id is not None and partition_id < self.sites

    def poison_data(self, train: LabeledTexts, partition_id: int) -> LabeledTexts:
        """Site ``partition_id``'s training records as the attack makes them."""
        if self.kind is PoisonKind.LABEL_FLIP:
            labels = tuple(self.target if y == self.source else y for y in train.labels)
            return LabeledTexts(train.texts, labels)
        if self.kind is PoisonKind.BACKDOOR:
            rng = np.random.default_rng([self.seed, partition_id, 0xBAD])
            chosen = set(
                rng.permutation(len(train))[
                    : round(self.fraction * len(train))
                ].tolist()
            )
            texts = tuple(
                f"{self.trigger} {t}" if i in chosen else t
                for i, t in enumerate(train.texts)
            )
            labels = tuple(
                self.target if i in chosen else y for i, y in enumerate(train.labels)
            )
            return LabeledTexts(texts, labels)
        return train

    def poison_update(self, delta: State) -> State:
        if self.kind is PoisonKind.SIGN_FLIP:
            return {k: -self.scale * v for k, v in delta.items()}
        if self.kind is PoisonKind.SCALE:
            return {k: self.scale * v for k, v in delta.items()}
        return delta


def attack_probes(
    test: LabeledTexts, run_config: Mapping[str, Any]
) -> dict[str, LabeledTexts]:
    """Probe sets labelled with the attacker's target class; the share of each
    the model classifies as labelled is the attack's success. Empty without
    poisoned sites."""
    cfg = PoisonConfig.from_run_config(run_config)
    if cfg.sites == 0:
        return {}
    if cfg.kind is PoisonKind.BACKDOOR:
        keep = [i for i, y in enumerate(test.labels) if y != cfg.target]
        texts = tuple(f"{cfg.trigger} {test.texts[i]}" for i in keep)
        return {"backdoor_success": LabeledTexts(texts, (cfg.target,) * len(keep))}
    keep = [i for i, y in enumerate(test.labels) if y == cfg.source]
    texts = tuple(test.texts[i] for i in keep)
    return {
        "targeted_misclassification": LabeledTexts(texts, (cfg.target,) * len(keep))
    }
