"""Robust aggregation (Flower's FedMedian, FedTrimmedAvg, Krum, MultiKrum,
Bulyan) against a poisoned site: a round of 7 sites, 6 honest updates near +1
and one attacker sending its update sign-flipped and scaled ×20. The plain mean
follows the attacker; every robust strategy stays with the honest sites. And a
robust strategy is refused where the server must not see single updates."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from flwr.app import Message

from fedshield.common.config import ConfigError
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.server.config import ServerConfig
from fedshield.server.strategy import StrategyConfig, build_strategy

from .test_rounds import FakeGrid, _reply, _run

pytestmark = pytest.mark.usefixtures("task_identity")

NODES = list(range(1, 8))
ATTACKER = 7


def _honest(node: int) -> OrderedDict:
    g = torch.Generator().manual_seed(node)
    return OrderedDict(
        w=1.0 + 0.05 * torch.randn(2, 3, generator=g),
        b=1.0 + 0.05 * torch.randn(3, generator=g),
    )


def _answer(node: int, msg: Message) -> Message:
    delta = _honest(node)
    if node == ATTACKER:  # sign flip, scaled: the model is pushed the other way
        delta = OrderedDict((k, -20.0 * v) for k, v in delta.items())
    return _reply(f"site-{node}", delta)


def _strategy(name: str, **settings: object):
    config = StrategyConfig.from_run_config({"strategy.name": name, **settings})
    return build_strategy(
        config,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_evaluate_nodes=0,
        min_available_nodes=1,
    )


def _round(name: str, **settings: object) -> torch.Tensor:
    strategy = _strategy(name, **settings)
    state, log = _run(FakeGrid(NODES, _answer), ClientDPConfig(), strategy)
    assert len(log.sites) == 7
    return torch.cat([state["w"].ravel(), state["b"].ravel()])


def test_the_plain_mean_follows_the_attacker() -> None:
    mean = _round("fedavg")
    assert (mean < 0).all()  # (6 * 1 - 20) / 7: the attack succeeds


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("fedmedian", {}),
        ("fedtrimmedavg", {"strategy.trim-fraction": 0.2}),
        ("krum", {"strategy.num-malicious": 1}),
        ("multikrum", {"strategy.num-malicious": 1, "strategy.num-select": 3}),
        ("bulyan", {"strategy.num-malicious": 1}),
    ],
)
def test_a_robust_strategy_stays_with_the_honest_sites(name, settings) -> None:
    model = _round(name, **settings)
    assert ((model - 1.0).abs() < 0.2).all(), model  # the honest sites' +1


@pytest.mark.parametrize(
    ("override", "blocked"),
    [({"secagg.enabled": True}, "secure aggregation"), ({}, "client-level DP")],
)
def test_a_robust_strategy_is_refused_where_single_updates_stay_hidden(
    tiny_run_config, tmp_path, override, blocked
) -> None:
    run = {
        **tiny_run_config,
        "out-dir": str(tmp_path / "run"),
        "strategy.name": "krum",
        "min-train-sites": 5,
        "secagg.enabled": False,
        "client-dp.enabled": not override,
        **override,
    }
    with pytest.raises(ConfigError, match=f"krum combines.*{blocked}"):
        ServerConfig.from_run_config(run)
    run.update({"secagg.enabled": False, "client-dp.enabled": False})
    assert ServerConfig.from_run_config(run).strategy.name == "krum"


@pytest.mark.parametrize(
    ("name", "settings", "least"),
    [
        ("fedmedian", {}, 3),
        ("fedtrimmedavg", {"strategy.trim-fraction": 0.2}, 5),
        ("krum", {"strategy.num-malicious": 1}, 5),
        ("multikrum", {"strategy.num-malicious": 1, "strategy.num-select": 5}, 6),
        ("bulyan", {"strategy.num-malicious": 1}, 7),
    ],
)
def test_too_few_sites_for_the_rule_are_refused_at_start(
    tiny_run_config, tmp_path, name, settings, least
) -> None:
    """With 4 sites a trimmed mean at 0.2 cuts nothing (the plain mean: the
    attacker wins) and Bulyan has no answer: refused before the run, with the
    number of sites that would do."""
    run = {
        **tiny_run_config,
        "out-dir": str(tmp_path / "run"),
        "strategy.name": name,
        **settings,
        "secagg.enabled": False,
        "client-dp.enabled": False,
        "min-train-sites": least - 1,
    }
    with pytest.raises(ConfigError, match=f"at least {least} updates"):
        ServerConfig.from_run_config(run)
    run["min-train-sites"] = least
    ServerConfig.from_run_config(run)


def test_a_round_with_too_few_updates_for_the_rule_aborts() -> None:
    from fedshield.server.rounds import RoundAborted

    strategy = _strategy("bulyan", **{"strategy.num-malicious": 1})
    with pytest.raises(RoundAborted, match="Bulyan needs at least 7"):
        _run(FakeGrid(NODES[:4], _answer), ClientDPConfig(), strategy)
