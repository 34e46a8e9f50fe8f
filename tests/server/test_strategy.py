"""``strategy.*``: parsing, Flower's defaults, and the server optimizer's state across
a resume (through the real checkpoint file)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi

from fedshield.common.config import ConfigError
from fedshield.models import state_to_arrays
from fedshield.server.aggregation import server_step
from fedshield.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedshield.server.strategy import (
    STRATEGY_STATE_KEY,
    StrategyConfig,
    StrategyName,
    build_strategy,
    restore_strategy_state,
    strategy_state,
)

pytestmark = pytest.mark.usefixtures("task_identity")

SAMPLING = {
    "fraction_train": 1.0,
    "fraction_evaluate": 0.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}
GEN = torch.Generator().manual_seed(3)
GLOBAL = OrderedDict(
    w=torch.randn(3, 4, generator=GEN), b=torch.randn(4, generator=GEN)
)
MEANS = [
    OrderedDict(
        (k, 0.1 * torch.randn(v.shape, generator=GEN)) for k, v in GLOBAL.items()
    )
    for _ in range(3)
]


def _strategy(run_config: dict[str, Any], **overrides: Any) -> FedAvg:
    cfg = StrategyConfig.from_run_config({**run_config, **overrides})
    return build_strategy(cfg, **SAMPLING)


class _Sites:
    def get_node_ids(self) -> list[int]:
        return [1]


def _step(strategy: FedAvg, server_round: int, state: dict) -> dict:
    """One round's server step from MEANS, configured as run_round configures it."""
    arrays = state_to_arrays(state)
    list(strategy.configure_train(server_round, arrays, ConfigRecord(), _Sites()))
    mean = MEANS[server_round - 1]
    return server_step(
        strategy, server_round=server_round, global_state=state, mean=mean
    )


def test_the_default_is_fedavg(default_run_config: dict[str, Any]) -> None:
    cfg = StrategyConfig.from_run_config(default_run_config)
    assert cfg == StrategyConfig() and cfg.name is StrategyName.FEDAVG
    assert type(build_strategy(cfg, **SAMPLING)) is FedAvg


def test_unknown_strategy_names_the_allowed_ones(default_run_config) -> None:
    with pytest.raises(ConfigError) as err:
        StrategyConfig.from_run_config(
            {**default_run_config, "strategy.name": "fedsgd"}
        )
    message = str(err.value)
    assert "`strategy.name`" in message and "'fedsgd'" in message
    for name in ("fedavg", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "krum"):
        assert f"'{name}'" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("strategy.beta-1", 1.0),
        ("strategy.beta-2", -0.1),
        ("strategy.tau", 0.0),
        ("strategy.server-lr", -0.5),
        ("strategy.momentum", 1.5),
    ],
)
def test_out_of_range_values_are_refused_with_the_value(
    default_run_config, key: str, value: float
) -> None:
    with pytest.raises(ConfigError, match=rf"`{key}`.*Found {value}"):
        StrategyConfig.from_run_config({**default_run_config, key: value})


@pytest.mark.parametrize(
    ("name", "kind", "eta"),
    [
        ("fedadam", FedAdam, 0.1),
        ("fedyogi", FedYogi, 0.01),
        ("fedadagrad", FedAdagrad, 0.1),
    ],
)
def test_fedopt_strategies_get_flowers_defaults_or_the_configured_keys(
    default_run_config, name: str, kind: type, eta: float
) -> None:
    strategy = _strategy(default_run_config, **{"strategy.name": name})
    assert type(strategy) is kind
    reference = kind()  # Flower's own defaults
    assert (strategy.eta, strategy.tau) == (eta, reference.tau) == (reference.eta, 1e-3)
    assert (strategy.beta_1, strategy.beta_2) == (reference.beta_1, reference.beta_2)
    tuned = _strategy(
        default_run_config,
        **{"strategy.name": name, "strategy.server-lr": 0.03, "strategy.tau": 1e-2},
    )
    assert (tuned.eta, tuned.tau) == (0.03, 1e-2)


def test_fedavgm_gets_its_learning_rate_and_momentum(default_run_config) -> None:
    plain = _strategy(default_run_config, **{"strategy.name": "fedavgm"})
    assert isinstance(plain, FedAvgM)
    assert (plain.server_learning_rate, plain.server_momentum) == (1.0, 0.0)
    tuned = _strategy(
        default_run_config,
        **{"strategy.name": "fedavgm", "strategy.momentum": 0.9},
    )
    assert tuned.server_momentum == 0.9 and tuned.server_opt


def test_a_key_the_strategy_does_not_use_is_reported(
    default_run_config, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fedshield.server.strategy"):
        _strategy(default_run_config, **{"strategy.momentum": 0.5})
    assert "strategy.name=fedavg does not use strategy.momentum" in caplog.text


@pytest.mark.parametrize(
    "overrides",
    [
        {"strategy.name": "fedadam"},
        {"strategy.name": "fedyogi"},
        {"strategy.name": "fedadagrad"},
        {"strategy.name": "fedavgm", "strategy.momentum": 0.9},
    ],
    ids=["fedadam", "fedyogi", "fedadagrad", "fedavgm"],
)
def test_a_resumed_run_takes_the_same_server_steps(
    default_run_config, overrides: dict[str, Any], tmp_path: Path
) -> None:
    """Rounds 1-3 in one go, or rounds 1-2, a checkpoint, a new strategy (a new
    ServerApp process) and round 3: the same model. Without the saved moments,
    round 3 differs, so the state is what makes them equal."""
    straight = _strategy(default_run_config, **overrides)
    state = GLOBAL
    for server_round in (1, 2, 3):
        state = _step(straight, server_round, state)

    first = _strategy(default_run_config, **overrides)
    resumed_state = _step(first, 2, _step(first, 1, GLOBAL))
    history = {"rounds": [], STRATEGY_STATE_KEY: strategy_state(first)}
    save_checkpoint(
        tmp_path,
        Checkpoint(server_round=2, state=resumed_state, history=history, run_config={}),
    )
    ckpt = load_checkpoint(tmp_path)  # torch.load(weights_only=True)
    second = _strategy(default_run_config, **overrides)
    restore_strategy_state(
        second, ckpt.history[STRATEGY_STATE_KEY], template=ckpt.state
    )
    resumed = _step(second, 3, ckpt.state)
    assert all(torch.equal(resumed[k], state[k]) for k in state)

    forgetful = _strategy(default_run_config, **overrides)
    restarted = _step(forgetful, 3, ckpt.state)
    assert not torch.allclose(restarted["w"], state["w"])


def test_fedavg_keeps_no_state_and_refuses_anothers(default_run_config) -> None:
    fedavg = _strategy(default_run_config)
    _step(fedavg, 1, GLOBAL)
    assert strategy_state(fedavg) == {}
    adam = _strategy(default_run_config, **{"strategy.name": "fedadam"})
    _step(adam, 1, GLOBAL)
    with pytest.raises(ValueError, match="must match the checkpoint"):
        restore_strategy_state(fedavg, strategy_state(adam), template=GLOBAL)
