"""Client-level DP noise, measured at the server, with secure aggregation on and off.

In the clear the server applies ``(sum_k clip(delta_k) + N(0, z^2 S^2 I)) / m``.
Under secure aggregation the *sites* add it (distributed DP): each adds Skellam
noise of variance ``(z S)^2 / m_min`` (``client-dp.min-survivors`` = 2) to its
quantized update before masking, so the m = 4 survivors' sum carries variance
``(m / m_min) (z S)^2``, and the server adds nothing. Each test runs one real round
(``server.rounds.run_round``; with secure aggregation through the sites' real
secagg mod) on 4 sites whose clipped deltas are known, over a 100,000-coordinate
model, and compares the applied update with the exact uniform mean. With 10^5
samples the std estimate's relative standard error is 0.22 %, so the 4 % tolerance
is 18 standard errors (the noise comes from the OS CSPRNG and cannot be seeded; a
false failure is below 1e-60). Too little noise, no noise, or noise on the mean
instead of the sum each fail.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg

from fedshield.client.secagg_mod import secagg_mod
from fedshield.models import state_to_arrays
from fedshield.privacy.client_dp import ClientDPConfig, clip_update
from fedshield.privacy.secagg import SecAggConfig
from fedshield.server.rounds import run_round

from .grid import InMemoryGrid

pytestmark = pytest.mark.usefixtures("task_identity")

NODES = [11, 22, 33, 44]
CLIP, Z = 0.5, 1.7
GLOBAL = OrderedDict(w=torch.zeros(100, 1000))
SECAGG_CONFIG = {
    "secagg.enabled": True,
    "secagg.num-shares": 1.0,
    "secagg.threshold": 0.5,
    "secagg.clip-range": 1.0,
    "secagg.quantization-bits": 24,
}


def _delta(node: int) -> OrderedDict:
    """A fixed delta per site, clipped to S as the site's train handler clips it
    (client/app.py), with example counts that differ: uniform weights must win."""
    g = torch.Generator().manual_seed(node)
    raw = OrderedDict(w=torch.randn(100, 1000, generator=g))
    return OrderedDict(clip_update(raw, clip_norm=CLIP)[0])


def _train(msg: Message, context: Context) -> Message:
    node = context.node_id
    metrics = MetricRecord(
        {"num-examples": node, "train-loss": 0.5, "steps": 3, "epsilon": 1.0}
    )
    metrics["delta"] = 1e-5
    return Message(
        content=RecordDict(
            {
                "arrays": state_to_arrays(_delta(node)),
                "metrics": metrics,
                "site": ConfigRecord({"name": f"site-{node}"}),
            }
        ),
        reply_to=msg,
    )


class Sites(InMemoryGrid):
    """Each message goes to its site's handler, through the real secagg mod when
    secure aggregation is on; ``arrays`` collects every array record the server
    receives."""

    def __init__(
        self,
        *,
        secure: bool,
        client_dp: ClientDPConfig,
        secagg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            NODES,
            {
                **(secagg or SECAGG_CONFIG),
                "client-dp.enabled": client_dp.enabled,
                "client-dp.clip-norm": client_dp.clip_norm,
                "client-dp.noise-multiplier": client_dp.noise_multiplier,
            },
        )
        self.secure = secure
        self.arrays: list[ArrayRecord] = []

    def reply(self, msg: Message, node: int) -> Message:
        ctx = self.contexts[node]
        reply = secagg_mod(msg, ctx, _train) if self.secure else _train(msg, ctx)
        self.arrays.extend(reply.content.array_records.values())
        return reply


def _applied_noise(
    *,
    secure: bool,
    client_dp: ClientDPConfig,
    secagg: dict[str, Any] | None = None,
) -> torch.Tensor:
    """One round; the applied update minus the exact uniform mean of the deltas."""
    secagg = secagg or SECAGG_CONFIG
    sites = Sites(secure=secure, client_dp=client_dp, secagg=secagg)
    state, log = run_round(
        grid=sites,
        strategy=FedAvg(min_train_nodes=1, min_available_nodes=1),
        train_config=ConfigRecord({"run-key": "k"}),
        server_round=1,
        global_state=GLOBAL,
        min_sites=2,
        timeout=5.0,
        progress=lambda done, total: None,
        client_dp=client_dp,
        secagg=SecAggConfig.from_run_config({**secagg, "secagg.enabled": secure}),
    )
    assert sorted(log.sites) == [f"site-{n}" for n in NODES] and not log.failures
    if secure:  # the server only ever received masked vectors
        assert all(list(rec) == ["y"] for rec in sites.arrays)
    exact = sum(_delta(n)["w"] for n in NODES) / len(NODES)
    return state["w"] - exact


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
def test_server_adds_client_level_noise_of_std_z_s_over_m(secure: bool) -> None:
    noise = _applied_noise(
        secure=secure,
        client_dp=ClientDPConfig(enabled=True, clip_norm=CLIP, noise_multiplier=Z),
    )
    m = len(NODES)
    # distributed: the sites calibrate for 2 survivors, so 4 carry twice the variance
    std = Z * CLIP * (m / 2) ** 0.5 / m if secure else Z * CLIP / m
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.02 * std)
    assert float(noise.std()) == pytest.approx(std, rel=0.04)
    # no coordinate wrapped around the modulus: a misread one is off by 2^k steps
    # (4 here), far beyond 7 std (a false alarm over 1e5 draws: < 3e-7)
    assert float(noise.abs().max()) < 7 * std


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
def test_without_client_level_dp_the_mean_is_exact(secure: bool) -> None:
    """The control: the same round without client-level DP has no noise (only
    24-bit quantization error under secure aggregation). In the clear it weights
    sites by their example counts; under secure aggregation the sites mask their
    unweighted updates (a server-chosen weight per site could single one out), so
    the mean is uniform."""
    noise = _applied_noise(secure=secure, client_dp=ClientDPConfig(enabled=False))
    weighted = sum(_delta(n)["w"] * n for n in NODES) / sum(NODES)
    uniform = sum(_delta(n)["w"] for n in NODES) / len(NODES)
    got = noise + uniform
    assert torch.allclose(got, uniform if secure else weighted, atol=1e-5)
    assert float((weighted - uniform).abs().max()) > 1e-3  # weights do differ


def test_the_noised_sum_never_wraps_the_modulus() -> None:
    """12-bit quantization with a narrow clip range: each site's Skellam noise is
    ~300 times the range of one encoded input, so the noise-free modulus (15 bits)
    would wrap almost every coordinate. The server plans the headroom the noise
    needs: the applied noise is still the accounted one, and no coordinate is
    misread."""
    coarse = {
        **SECAGG_CONFIG,
        "secagg.clip-range": 0.002,
        "secagg.quantization-bits": 12,
    }
    noise = _applied_noise(
        secure=True,
        client_dp=ClientDPConfig(enabled=True, clip_norm=CLIP, noise_multiplier=Z),
        secagg=coarse,
    )
    m = len(NODES)
    std = Z * CLIP * (m / 2) ** 0.5 / m
    # the clip range saturates some coordinates of the deltas (a bias of < 0.002)
    assert float(noise.std()) == pytest.approx(std, rel=0.04)
    assert float(noise.abs().max()) < 7 * std
