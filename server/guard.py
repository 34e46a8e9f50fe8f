"""A robust step on the round's mean: the server's root update as the yardstick.

Under secure aggregation the server sees one vector per round, the (noisy) mean
``Delta`` of the sites' updates; the robust strategies (median, Krum, ...) need
every update and are refused there (:func:`server.strategy.check_robust`). What
remains is to test the one aggregate against something the server trusts. FLTrust
(Cao, Fang, Liu and Gong, NDSS 2021) gives the server a small clean *root* dataset
and scores each update by its cosine with the server's own update ``g0`` on it,
rescaled to ``g0``'s norm; here the test is applied to the aggregate:

- ``cos(Delta, g0) <= strategy.root-min-cosine``: the mean points away from what
  clean data asks for (a sign-flipped or inverted attack that dominates the sum);
  no server step is taken and the round leaves the model unchanged;
- else ``Delta <- Delta * min(1, f ||g0|| / ||Delta||)`` with ``f`` =
  ``strategy.root-norm-factor``: a boosted (scaled) update cannot move the model
  further than ``f`` root updates in one round.

Only with ``fedavg`` and ``fedavgm``: the adaptive FedOpt strategies (FedAdam,
FedYogi, FedAdagrad) normalise each coordinate of the step by its history, so a
norm bound on the mean would not bound the step they take; they are refused with
the guard (:class:`server.config.ServerConfig`).

``g0`` is one round of the run's own local training (the same epochs, batch size
and learning rates, without DP: the data is the coordinator's) from the current
global model on the root data: ``strategy.root-data-path`` (the coordinator's
labelled file), or in a simulation on the packaged dataset
``strategy.root-examples`` snippets of its population split, which no simulated
site, test set or probe holds.

Privacy: the guard reads only ``Delta``, which the server holds anyway, and its own
data; what it does is post-processing of a released mean and costs no epsilon. It
changes nothing at a site. What it does not do: find *which* site attacked (the
secure sum hides that by design), stop an attack that stays within ``f`` root
norms and points along the root update's half-space (a targeted backdoor can), or
help when the root data is unlike the sites' (its cosine test then rejects honest
rounds: the round table's title and summary.json show every decision). Measured in
``tests/server/test_root_guard.py``.

Written here rather than taken from a library: Flower ships FLTrust for neither API,
and its robust strategies work on individual updates only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedshield.common.config import ConfigError
from fedshield.common.run_config import check_fields, default, read_fields
from fedshield.models import (
    LoadedModel,
    load_model,
    load_trainable_state,
    tasks,
    trainable_state,
)
from fedshield.models.texts import LabeledTexts

__all__ = [
    "GuardConfig",
    "GuardDecision",
    "RootData",
    "RootDataLoader",
    "RootGuard",
    "guard_mean",
]

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RootData:
    """The coordinator's root records and how to train on them: ``train(model,
    encoded records, seed)`` is one round of the run's local training without DP,
    in place (the wiring binds the run config: the server never imports the
    client's trainer itself)."""

    records: LabeledTexts
    train: Callable[[torch.nn.Module, Any, int], None]
    batch_size: int


# (strategy.root-data-path, the parsed run config) -> the coordinator's root data
RootDataLoader = Callable[[str, Mapping[str, Any]], RootData]


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    """``strategy.root-*``: the server's root-update test of the mean."""

    enabled: bool = default("strategy.root-guard")
    data_path: str = default("strategy.root-data-path")
    examples: int = default("strategy.root-examples")
    norm_factor: float = default("strategy.root-norm-factor")
    min_cosine: float = default("strategy.root-min-cosine")

    KEYS: ClassVar[dict[str, str]] = {
        "enabled": "strategy.root-guard",
        "data_path": "strategy.root-data-path",
        "examples": "strategy.root-examples",
        "norm_factor": "strategy.root-norm-factor",
        "min_cosine": "strategy.root-min-cosine",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> GuardConfig:
        return cls(**read_fields(run_config, cls.KEYS))


@dataclass(frozen=True)
class GuardDecision:
    """What the guard did with one round's mean (in the round's log)."""

    cosine: float
    mean_norm: float
    root_norm: float
    action: str  # "kept", "clipped" or "rejected"

    def as_dict(self) -> dict[str, Any]:
        return {
            "cosine": round(self.cosine, 6),
            "mean_norm": self.mean_norm,
            "root_norm": self.root_norm,
            "action": self.action,
        }


def _flat(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).double() for k in sorted(state)])


def guard_mean(
    mean: State, root: State, *, norm_factor: float, min_cosine: float
) -> tuple[State | None, GuardDecision]:
    """The mean update the server applies, given its root update ``root``; None
    when it applies none (the round leaves the model as it was)."""
    if sorted(mean) != sorted(root):
        raise ValueError(
            "the root update and the mean update hold different parameters: "
            f"{sorted(set(mean) ^ set(root))[:5]}"
        )
    d, g = _flat(mean), _flat(root)
    d_norm, g_norm = float(d.norm()), float(g.norm())
    if not (math.isfinite(d_norm) and math.isfinite(g_norm)):
        raise ValueError(
            f"the root guard found non-finite norms: mean update {d_norm}, root "
            f"update {g_norm}"
        )
    cosine = float(d @ g) / (d_norm * g_norm) if d_norm > 0 and g_norm > 0 else 0.0
    if cosine <= min_cosine:
        return None, GuardDecision(cosine, d_norm, g_norm, "rejected")
    bound = norm_factor * g_norm
    if d_norm <= bound:
        return mean, GuardDecision(cosine, d_norm, g_norm, "kept")
    scale = bound / d_norm
    clipped = {k: v * scale for k, v in mean.items()}
    return clipped, GuardDecision(cosine, d_norm, g_norm, "clipped")


class RootGuard:
    """The server's root data, a model of its own, and the run's local training."""

    def __init__(
        self, config: GuardConfig, *, root: RootData, model_config: Any, seed: int
    ) -> None:
        if len(root.records) < root.batch_size:
            raise ConfigError(
                f"strategy.root-guard needs at least train.batch-size "
                f"({root.batch_size}) root records to train on; found "
                f"{len(root.records)}. Give a larger strategy.root-data-path file "
                "or raise strategy.root-examples."
            )
        self.config = config
        self.root = root
        self.loaded: LoadedModel = load_model(model_config)
        self.dataset = tasks.encode(root.records, self.loaded.tokenizer, model_config)
        self.seed = seed

    def root_update(self, global_state: State, server_round: int) -> State:
        """``g0``: the root data's update from ``global_state`` (no DP)."""
        model = self.loaded.model
        load_trainable_state(model, global_state)
        self.root.train(model, self.dataset, self.seed * 1_000_003 + server_round)
        trained = trainable_state(model)
        return {k: trained[k] - global_state[k] for k in global_state}

    def __call__(
        self, mean: State, *, global_state: State, server_round: int
    ) -> tuple[State | None, GuardDecision]:
        return guard_mean(
            mean,
            self.root_update(global_state, server_round),
            norm_factor=self.config.norm_factor,
            min_cosine=self.config.min_cosine,
        )
