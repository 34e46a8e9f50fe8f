"""The root guard's test of one round's mean (:func:`server.guard.guard_mean`) and
where it is refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedshield.common.config import ConfigError
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.server.aggregation import UpdateSum, aggregate
from fedshield.server.config import ServerConfig
from fedshield.server.guard import guard_mean
from fedshield.simulations.apps import root_records

ROOT = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0])}  # norm 5


def _guard(mean: dict[str, torch.Tensor], **kw: Any) -> tuple[dict, Any]:
    return guard_mean(
        mean, ROOT, norm_factor=kw.get("f", 2.0), min_cosine=kw.get("c", 0.0)
    )


def test_an_aligned_mean_within_the_bound_is_applied_unchanged() -> None:
    mean = {"a": torch.tensor([2.0, 2.0]), "b": torch.tensor([1.0])}
    applied, decision = _guard(mean)
    assert decision.action == "kept" and applied is mean
    assert decision.cosine == pytest.approx(14 / (5 * 3))
    assert decision.root_norm == pytest.approx(5.0)


def test_a_boosted_mean_is_clipped_to_the_factor_times_the_root_norm() -> None:
    mean = {"a": torch.tensor([30.0, 40.0]), "b": torch.tensor([0.0])}  # norm 50
    applied, decision = _guard(mean, f=2.0)
    assert decision.action == "clipped" and decision.mean_norm == pytest.approx(50)
    assert torch.allclose(applied["a"], torch.tensor([6.0, 8.0]))  # norm 10 = 2 x 5
    assert torch.equal(applied["b"], torch.tensor([0.0]))


@pytest.mark.parametrize("scale", [0.001, 1.0, 1000.0])
def test_a_mean_pointing_away_is_never_applied_whatever_its_size(
    scale: float,
) -> None:
    mean = {"a": torch.tensor([-3.0, -4.0]) * scale, "b": torch.tensor([0.5])}
    applied, decision = _guard(mean)
    assert decision.action == "rejected" and decision.cosine < 0
    assert applied is None


def test_the_cosine_threshold_is_the_sites_choice_of_strictness() -> None:
    orthogonal = {"a": torch.tensor([4.0, -3.0]), "b": torch.tensor([0.0])}
    assert _guard(orthogonal, c=0.0)[1].action == "rejected"  # cos 0 <= 0
    assert _guard(orthogonal, c=-0.5)[1].action == "kept"
    slight = {"a": torch.tensor([4.0, -2.9]), "b": torch.tensor([0.0])}
    assert _guard(slight, c=0.0)[1].action == "kept"
    assert _guard(slight, c=0.1)[1].action == "rejected"


def test_a_zero_mean_is_rejected_and_bad_inputs_fail() -> None:
    zero = {k: torch.zeros_like(v) for k, v in ROOT.items()}
    assert _guard(zero)[1].action == "rejected"
    with pytest.raises(ValueError, match="different parameters"):
        _guard({"a": torch.tensor([1.0, 1.0])})
    with pytest.raises(ValueError, match="root guard found non-finite"):
        _guard({"a": torch.tensor([float("nan"), 1.0]), "b": torch.tensor([0.0])})


def test_the_guard_with_a_robust_rule_is_refused(
    default_run_config: dict[str, Any], tmp_path: Any
) -> None:
    cfg = {
        **default_run_config,
        "out-dir": str(tmp_path),
        "strategy.root-guard": True,
        "strategy.name": "fedmedian",
        "secagg.enabled": False,
        "min-train-sites": 3,
    }
    with pytest.raises(ConfigError, match="aggregates the sites' updates one by one"):
        ServerConfig.from_run_config(cfg)
    for adaptive in ("fedadam", "fedyogi", "fedadagrad"):
        cfg["strategy.name"] = adaptive
        with pytest.raises(ConfigError, match="would not hold"):
            ServerConfig.from_run_config(cfg)
    cfg["strategy.name"] = "fedavgm"
    assert ServerConfig.from_run_config(cfg).guard.enabled


def test_a_rejected_mean_takes_no_server_step() -> None:
    """Server momentum (FedAvgM) would keep moving the model on a zero mean: a
    rejected round never reaches the strategy."""

    class Untouchable:
        def aggregate_train(self, *_: Any) -> Any:
            raise AssertionError("the strategy stepped on a rejected round")

    theta = {"a": torch.tensor([1.0, 2.0])}
    summed = UpdateSum(total={"a": torch.tensor([5.0, 5.0])}, weight=5.0, count=5)
    new = aggregate(
        summed,
        client_dp=ClientDPConfig(),
        strategy=Untouchable(),  # type: ignore[arg-type]
        server_round=2,
        global_state=theta,
        guard=lambda mean: None,
    )
    assert new is theta


def test_root_data_is_the_coordinators_own_outside_the_packaged_simulation(
    default_run_config: dict[str, Any], tmp_path: Any
) -> None:
    user = {**default_run_config, "data.test-path": str(tmp_path / "t.csv")}
    with pytest.raises(ConfigError, match="strategy.root-data-path"):
        root_records("", user)
    packaged = {
        **default_run_config,
        "data.train-examples": 100,
        "data.test-examples": 50,
        "strategy.root-examples": 40,
    }
    root = root_records("", packaged)
    from fedshield.simulations.datasets import default_split

    split = default_split(seed=packaged["seed"], train_examples=100, test_examples=50)
    assert len(root) == 40
    assert not set(root.texts) & (set(split.train.texts) | set(split.test.texts))
    with pytest.raises(ConfigError, match="only"):
        root_records("", {**packaged, "strategy.root-examples": 10**6})
