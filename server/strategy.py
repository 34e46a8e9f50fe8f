"""The server's optimizer: which Flower Message-API strategy takes the server step,
its settings (``strategy.*`` in the run config), and its state across a resume.

The strategy samples the sites (``configure_train``) and turns the round's mean
update into the next global model (``aggregate_train``); how it gets that one mean
is :mod:`server.aggregation`. Strategies (Reddi et al. 2021, "Adaptive Federated
Optimization"; Hsu et al. 2019 for FedAvgM), with Flower's defaults:

- ``fedavg``: theta <- theta + Delta.
- ``fedadam``: eta = 0.1, beta-1 = 0.9, beta-2 = 0.99, tau = 1e-3.
- ``fedyogi``: eta = 0.01, beta-1 = 0.9, beta-2 = 0.99, tau = 1e-3.
- ``fedadagrad``: eta = 0.1, tau = 1e-3.
- ``fedavgm``: server learning rate 1.0, momentum 0.0 (= FedAvg until changed).

Each is a post-processing of the round's (noisy) mean, so none changes either
epsilon.

Robust strategies (Flower's own: ``fedmedian``, the coordinate-wise median;
``fedtrimmedavg``, the mean after cutting ``strategy.trim-fraction`` at each end;
``krum`` / ``multikrum``, the update(s) closest to their n - f - 2 neighbours, f =
``strategy.num-malicious``; ``bulyan``, MultiKrum selection then a trimmed
median) combine the sites' *individual* updates
(:func:`server.aggregation.robust_step`). Secure aggregation and client-level DP
exist to withhold those, so a robust strategy is refused with either
(:func:`check_robust`).

State across a resume: FedOpt's first and second moments (``m_t``, ``v_t``) and
FedAvgM's momentum live in the strategy object. :func:`strategy_state` exports them
as tensors after every round, the checkpoint stores them with the global model, and
:func:`restore_strategy_state` loads them into the new strategy on ``resume=true``,
so a resumed run takes the same server steps as an uninterrupted one. The arrays
FedOpt differentiates against (``current_arrays``) need no saving: every round's
``configure_train`` sets them to the global model, as in Flower's own loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)

from fedshield.common.config import ConfigError
from fedshield.common.run_config import check_fields, default, read_fields
from fedshield.models import check_same_layout

__all__ = [
    "STRATEGY_STATE_KEY",
    "StrategyConfig",
    "StrategyName",
    "build_strategy",
    "check_robust",
    "is_robust",
    "robust_minimum",
    "restore_strategy_state",
    "strategy_state",
]

logger = logging.getLogger(__name__)

State = dict[str, torch.Tensor]

STRATEGY_STATE_KEY = "strategy-state"  # where the checkpoint's history keeps it


class StrategyName(StrEnum):
    FEDAVG = "fedavg"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDADAGRAD = "fedadagrad"
    FEDAVGM = "fedavgm"
    FEDMEDIAN = "fedmedian"
    FEDTRIMMEDAVG = "fedtrimmedavg"
    KRUM = "krum"
    MULTIKRUM = "multikrum"
    BULYAN = "bulyan"


ROBUST = {
    StrategyName.FEDMEDIAN,
    StrategyName.FEDTRIMMEDAVG,
    StrategyName.KRUM,
    StrategyName.MULTIKRUM,
    StrategyName.BULYAN,
}


# Flower's default server learning rate of each strategy (``strategy.server-lr = 0``)
FLOWER_SERVER_LR = {
    StrategyName.FEDADAM: 1e-1,
    StrategyName.FEDYOGI: 1e-2,
    StrategyName.FEDADAGRAD: 1e-1,
    StrategyName.FEDAVGM: 1.0,
}

# the keys each strategy reads; the others are ignored (with a warning if set)
_USES = {
    StrategyName.FEDAVG: set(),
    StrategyName.FEDADAM: {"server-lr", "beta-1", "beta-2", "tau"},
    StrategyName.FEDYOGI: {"server-lr", "beta-1", "beta-2", "tau"},
    StrategyName.FEDADAGRAD: {"server-lr", "tau"},
    StrategyName.FEDAVGM: {"server-lr", "momentum"},
    StrategyName.FEDMEDIAN: set(),
    StrategyName.FEDTRIMMEDAVG: {"trim-fraction"},
    StrategyName.KRUM: {"num-malicious"},
    StrategyName.MULTIKRUM: {"num-malicious", "num-select"},
    StrategyName.BULYAN: {"num-malicious"},
}


@dataclass(frozen=True, kw_only=True)
class StrategyConfig:
    """The server step (``strategy.*`` in the run config).

    Attributes:
        name: the Flower strategy that takes the server step.
        server_lr: eta of FedAdam/FedYogi/FedAdagrad, the learning rate of FedAvgM;
            0 = Flower's default for the strategy (:data:`FLOWER_SERVER_LR`).
        beta_1: first-moment decay of FedAdam and FedYogi.
        beta_2: second-moment decay of FedAdam and FedYogi.
        tau: adaptivity (added to sqrt(v_t)) of FedAdam, FedYogi and FedAdagrad.
        momentum: server momentum of FedAvgM.
        trim_fraction: FedTrimmedAvg's beta.
        num_malicious: f of Krum, MultiKrum and Bulyan.
        num_select: how many updates MultiKrum averages.
    """

    name: StrategyName = StrategyName(default("strategy.name"))
    server_lr: float = default("strategy.server-lr")
    beta_1: float = default("strategy.beta-1")
    beta_2: float = default("strategy.beta-2")
    tau: float = default("strategy.tau")
    momentum: float = default("strategy.momentum")
    trim_fraction: float = default("strategy.trim-fraction")
    num_malicious: int = default("strategy.num-malicious")
    num_select: int = default("strategy.num-select")

    KEYS: ClassVar[dict[str, str]] = {
        "name": "strategy.name",
        "server_lr": "strategy.server-lr",
        "beta_1": "strategy.beta-1",
        "beta_2": "strategy.beta-2",
        "tau": "strategy.tau",
        "momentum": "strategy.momentum",
        "trim_fraction": "strategy.trim-fraction",
        "num_malicious": "strategy.num-malicious",
        "num_select": "strategy.num-select",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)

    @property
    def eta(self) -> float:
        """The server learning rate in effect (the configured one, or Flower's)."""
        return self.server_lr or FLOWER_SERVER_LR.get(self.name, 1.0)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> StrategyConfig:
        cfg = cls(**read_fields(run_config, cls.KEYS, convert={"name": StrategyName}))
        baseline = cls(name=cfg.name)
        ignored = [
            key
            for field, key in cls.KEYS.items()
            if field != "name"
            and key.removeprefix("strategy.") not in _USES[cfg.name]
            and getattr(cfg, field) != getattr(baseline, field)
        ]
        if ignored:
            logger.warning(
                "strategy.name=%s does not use %s; the value is ignored.",
                cfg.name.value,
                ", ".join(ignored),
            )
        return cfg


def build_strategy(
    config: StrategyConfig,
    *,
    fraction_train: float,
    fraction_evaluate: float,
    min_train_nodes: int,
    min_evaluate_nodes: int,
    min_available_nodes: int,
) -> FedAvg:
    """The configured Flower strategy (all of them are FedAvg subclasses: they
    sample like FedAvg and take their server step in ``aggregate_train``)."""
    sampling: dict[str, Any] = {
        "fraction_train": fraction_train,
        "fraction_evaluate": fraction_evaluate,
        "min_train_nodes": min_train_nodes,
        "min_evaluate_nodes": min_evaluate_nodes,
        "min_available_nodes": min_available_nodes,
    }
    c = config
    match c.name:
        case StrategyName.FEDAVG:
            return FedAvg(**sampling)
        case StrategyName.FEDADAM:
            return FedAdam(
                **sampling, eta=c.eta, beta_1=c.beta_1, beta_2=c.beta_2, tau=c.tau
            )
        case StrategyName.FEDYOGI:
            return FedYogi(
                **sampling, eta=c.eta, beta_1=c.beta_1, beta_2=c.beta_2, tau=c.tau
            )
        case StrategyName.FEDADAGRAD:
            return FedAdagrad(**sampling, eta=c.eta, tau=c.tau)
        case StrategyName.FEDAVGM:
            return FedAvgM(
                **sampling, server_learning_rate=c.eta, server_momentum=c.momentum
            )
        case StrategyName.FEDMEDIAN:
            return FedMedian(**sampling)
        case StrategyName.FEDTRIMMEDAVG:
            return FedTrimmedAvg(**sampling, beta=c.trim_fraction)
        case StrategyName.KRUM:
            return Krum(**sampling, num_malicious_nodes=c.num_malicious)
        case StrategyName.MULTIKRUM:
            return MultiKrum(
                **sampling,
                num_malicious_nodes=c.num_malicious,
                num_nodes_to_select=c.num_select,
            )
        case StrategyName.BULYAN:
            return Bulyan(**sampling, num_malicious_nodes=c.num_malicious)
    raise AssertionError(c.name)  # pragma: no cover - the match is exhaustive


def _moments(strategy: FedAvg) -> dict[str, dict[str, np.ndarray] | None]:
    """The strategy's state by group: FedOpt's ``m_t``/``v_t`` (by parameter name)
    and FedAvgM's momentum (a list in the order of ``current_arrays``)."""
    if isinstance(strategy, FedAvgM):
        if strategy.momentum_vector is None or strategy.current_arrays is None:
            return {"momentum": None}
        names = list(strategy.current_arrays.keys())
        return {"momentum": dict(zip(names, strategy.momentum_vector, strict=True))}
    if isinstance(strategy, FedAdam | FedYogi | FedAdagrad):
        return {"m_t": strategy.m_t, "v_t": strategy.v_t}
    return {}


def strategy_state(strategy: FedAvg) -> State:
    """The strategy's optimizer state as tensors ``{"<group>/<param>": tensor}``
    (empty for FedAvg, and before the first server step)."""
    return {
        f"{group}/{name}": torch.from_numpy(np.array(value, copy=True))
        for group, arrays in _moments(strategy).items()
        for name, value in (arrays or {}).items()
    }


def restore_strategy_state(strategy: FedAvg, saved: State, *, template: State) -> None:
    """Load what :func:`strategy_state` exported into a fresh strategy of the same
    kind; ``template`` (the global state) fixes the names and shapes."""
    groups: dict[str, State] = {}
    for key, value in saved.items():
        group, _, name = key.partition("/")
        groups.setdefault(group, {})[name] = value
    known = set(_moments(strategy))
    if set(groups) - known:
        raise ValueError(
            f"The checkpoint's strategy state holds {sorted(groups)}, but a "
            f"{type(strategy).__name__} keeps {sorted(known) or 'no state'}. The run "
            "config's strategy.* keys must match the checkpoint's."
        )
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for group, state in groups.items():
        check_same_layout(template, state, f"The checkpoint's strategy {group}")
        arrays[group] = {k: state[k].numpy().copy() for k in template}
    if isinstance(strategy, FedAvgM):
        if "momentum" in arrays:
            strategy.momentum_vector = list(arrays["momentum"].values())
    elif isinstance(strategy, FedAdam | FedYogi | FedAdagrad):
        strategy.m_t = arrays.get("m_t")
        strategy.v_t = arrays.get("v_t")


def is_robust(strategy: FedAvg) -> bool:
    """Whether ``strategy`` combines the sites' individual updates (a robust
    strategy) rather than stepping from their mean."""
    return isinstance(strategy, (FedMedian, FedTrimmedAvg, MultiKrum, Bulyan))


def _least(kind: StrategyName, f: int, beta: float, select: int) -> int:
    match kind:
        case StrategyName.FEDMEDIAN:
            return 3
        case StrategyName.FEDTRIMMEDAVG:
            return 0 if beta == 0 else math.ceil(1 / beta - 1e-9)
        case StrategyName.KRUM:
            return 2 * f + 3
        case StrategyName.MULTIKRUM:
            return max(2 * f + 3, select + f)
        case StrategyName.BULYAN:
            return 4 * f + 3
    return 0


def robust_minimum(config: StrategyConfig | FedAvg) -> int:
    """The fewest updates with which a robust rule still tolerates what it claims
    (0 for a mean-based strategy), of a config or a built strategy: Krum and
    MultiKrum need n >= 2f + 3 (Blanchard et al. 2017), Bulyan n >= 4f + 3 (El
    Mhamdi et al. 2018), the trimmed mean floor(beta n) >= 1 update cut at each
    end (beta = 0: the plain mean, knowingly), the median 3 (of 2 it is their
    mean); MultiKrum must also leave the f suspects out of its selection
    (num-select <= n - f)."""
    if isinstance(config, StrategyConfig):
        return _least(
            config.name, config.num_malicious, config.trim_fraction, config.num_select
        )
    f = int(getattr(config, "num_malicious_nodes", 0))
    if isinstance(config, Krum):
        return _least(StrategyName.KRUM, f, 0.0, 1)
    if isinstance(config, MultiKrum):
        return _least(StrategyName.MULTIKRUM, f, 0.0, config.num_nodes_to_select)
    if isinstance(config, Bulyan):
        return _least(StrategyName.BULYAN, f, 0.0, 1)
    if isinstance(config, FedTrimmedAvg):
        return _least(StrategyName.FEDTRIMMEDAVG, 0, config.beta, 1)
    if isinstance(config, FedMedian):
        return _least(StrategyName.FEDMEDIAN, 0, 0.0, 1)
    return 0


def check_robust(
    config: StrategyConfig, *, secagg: bool, client_dp: bool, min_sites: int
) -> None:
    """Refuse a robust strategy where the server must not see single updates, or
    where ``min-train-sites`` lets a round have too few updates for its rule."""
    if config.name not in ROBUST:
        return
    least = robust_minimum(config)
    if min_sites < least:
        raise ConfigError(
            f"strategy.name={config.name.value} (strategy.num-malicious="
            f"{config.num_malicious}, trim-fraction={config.trim_fraction}, "
            f"num-select={config.num_select}) needs at least {least} updates a round "
            f"to hold against its attackers; min-train-sites is {min_sites}. Raise "
            f"min-train-sites to {least} (and simulate that many sites), or lower "
            "strategy.num-malicious."
        )
    if secagg or client_dp:
        what = "secure aggregation" if secagg else "client-level DP"
        raise ConfigError(
            f"strategy.name={config.name.value} combines the sites' individual "
            f"updates, which {what} exists to withhold from the server. Set "
            f"{'secagg.enabled' if secagg else 'client-dp.enabled'}=false to use it "
            "(deployed sites that require secure aggregation will refuse the run), "
            "or keep a mean-based strategy (fedavg, fedadam, ...): under secure "
            "aggregation each site's update is already bounded by its clip."
        )
