"""The aggregation pipeline without a grid: sum -> client-level noise -> mean over
the fixed denominator -> the strategy's server step, against the formulas the server
used before the pipeline existed (FedAvg's weighted mean of the deltas, the noisy
uniform mean of privacy.client_dp, the secure sum divided by its weight) and against
FedAdam's update written out independently (tests/server/fedadam.py)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg

import fedshield.privacy.client_dp as client_dp_module
from fedshield.models import add_delta, arrays_to_state, state_to_arrays
from fedshield.privacy.client_dp import ClientDPConfig, noisy_mean, noisy_mean_of_sum
from fedshield.server.aggregation import (
    UpdateSum,
    aggregate,
    mean_update,
    plain_sum,
    server_step,
    with_client_noise,
)

from .fedadam import fedadam_reference

pytestmark = pytest.mark.usefixtures("task_identity")

GEN = torch.Generator().manual_seed(7)
GLOBAL = OrderedDict(
    w=torch.randn(4, 5, generator=GEN), b=torch.randn(5, generator=GEN)
)
DELTAS = [
    OrderedDict(
        (k, 0.05 * torch.randn(v.shape, generator=GEN)) for k, v in GLOBAL.items()
    )
    for _ in range(9)  # >= 7 updates: the summation order shows in float32
]
COUNTS = [float(3 * i + 5) for i in range(len(DELTAS))]


class _Sites:
    """Just enough of a Grid for ``configure_train`` to sample."""

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def _configured(strategy: FedAvg, server_round: int, state) -> FedAvg:
    """The strategy after ``configure_train`` of ``state``, as run_round does it."""
    list(
        strategy.configure_train(
            server_round, state_to_arrays(state), ConfigRecord(), _Sites()
        )
    )
    return strategy


def _deterministic_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the CSPRNG by seeded draws, so two computations can be compared."""

    def seeded(shape: torch.Size, *, std: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(shape.numel())
        return (torch.randn(shape, generator=g, dtype=torch.float64) * std).float()

    monkeypatch.setattr(client_dp_module, "secure_normal", seeded)


def _equal(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_plain_fedavg_is_the_example_weighted_mean_flower_computed_before() -> None:
    """The old update was FedAvg.aggregate_train over the delta replies; the pipeline
    divides the weighted sum once instead of weighting by n_k / N: float32 rounding
    apart (a few ulps), the same update."""
    replies = [
        Message(
            content=RecordDict(
                {
                    "arrays": state_to_arrays(d),
                    "metrics": MetricRecord({"num-examples": n}),
                }
            ),
            dst_node_id=0,
            message_type="train",
        )
        for d, n in zip(DELTAS, COUNTS, strict=True)
    ]
    old_arrays, _ = FedAvg().aggregate_train(1, replies)
    old = add_delta(GLOBAL, arrays_to_state(old_arrays))
    strategy = _configured(FedAvg(min_available_nodes=1), 1, GLOBAL)
    new = aggregate(
        plain_sum(deltas=DELTAS, weights=COUNTS),
        client_dp=ClientDPConfig(),
        strategy=strategy,
        server_round=1,
        global_state=GLOBAL,
    )
    for k in GLOBAL:
        torch.testing.assert_close(new[k], old[k], rtol=0, atol=4e-7)
    exact = {
        k: sum(d[k].double() * n for d, n in zip(DELTAS, COUNTS, strict=True))
        / sum(COUNTS)
        for k in GLOBAL
    }
    for k in GLOBAL:
        torch.testing.assert_close(
            new[k].double() - GLOBAL[k].double(), exact[k], rtol=0, atol=4e-7
        )


def test_fedavg_with_client_level_dp_is_bit_for_bit_the_old_noisy_mean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _deterministic_noise(monkeypatch)
    cdp = ClientDPConfig(enabled=True, clip_norm=1.0, noise_multiplier=1.3)
    old = add_delta(GLOBAL, noisy_mean(DELTAS, clip_norm=1.0, noise_multiplier=1.3))
    new = aggregate(
        plain_sum(deltas=DELTAS, weights=[1.0] * len(DELTAS)),
        client_dp=cdp,
        strategy=_configured(FedAvg(min_available_nodes=1), 1, GLOBAL),
        server_round=1,
        global_state=GLOBAL,
        sampled=len(DELTAS),
    )
    assert _equal(new, old)


@pytest.mark.parametrize("noise", [False, True], ids=["fedavg", "client-dp"])
def test_fedavg_of_a_secure_sum_is_bit_for_bit_the_old_update(
    noise: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ``theta + T / W`` (secure sum), ``theta + noisy_mean_of_sum(T, m)``
    (with client-level DP, where W = m)."""
    _deterministic_noise(monkeypatch)
    total = OrderedDict((k, sum(d[k] for d in DELTAS)) for k in GLOBAL)
    m = len(DELTAS)
    weight = float(m) if noise else 6.25
    if noise:
        old_update = noisy_mean_of_sum(total, m, clip_norm=0.5, noise_multiplier=0.9)
    else:
        old_update = {k: v / weight for k, v in total.items()}
    new = aggregate(
        UpdateSum(total=total, weight=weight, count=m),
        client_dp=ClientDPConfig(enabled=noise, clip_norm=0.5, noise_multiplier=0.9),
        strategy=_configured(FedAvg(min_available_nodes=1), 1, GLOBAL),
        server_round=1,
        global_state=GLOBAL,
        sampled=m,
    )
    assert _equal(new, add_delta(GLOBAL, old_update))


def test_client_level_noise_refuses_a_weighted_sum() -> None:
    """Example-count weights: one site could move the sum by more than S."""
    summed = plain_sum(deltas=DELTAS[:2], weights=[10.0, 30.0])
    with pytest.raises(ValueError, match="needs uniform weights"):
        with_client_noise(summed, client_dp=ClientDPConfig(enabled=True))


def test_client_level_noise_is_added_to_the_sum_not_the_mean() -> None:
    zeros = UpdateSum(total={"x": torch.zeros(200_000)}, weight=4.0, count=4)
    cdp = ClientDPConfig(enabled=True, clip_norm=0.5, noise_multiplier=2.0)
    noisy = with_client_noise(zeros, client_dp=cdp)
    assert float(noisy.total["x"].std()) == pytest.approx(1.0, rel=0.02)  # z S
    assert float(mean_update(noisy)["x"].std()) == pytest.approx(0.25, rel=0.02)


def test_fedadam_steps_from_the_mean_update_with_its_moments() -> None:
    strategy = FedAdam(min_available_nodes=1)
    state, means = GLOBAL, []
    for server_round, updates in ((1, DELTAS[:3]), (2, DELTAS[3:6])):
        summed = plain_sum(deltas=updates, weights=[1.0, 2.0, 3.0])
        means.append(mean_update(summed))
        _configured(strategy, server_round, state)
        state = server_step(
            strategy, server_round=server_round, global_state=state, mean=means[-1]
        )
    for k in GLOBAL:
        expected = fedadam_reference(
            GLOBAL[k].double().numpy(), [m[k].double().numpy() for m in means]
        )
        np.testing.assert_allclose(state[k].double().numpy(), expected, atol=2e-6)
    # and it is not FedAvg's step
    assert not torch.allclose(state["w"], GLOBAL["w"] + means[0]["w"] + means[1]["w"])
