"""Client-level DP (DP-FedAvg with fixed clipping): protects a *whole site*.

Mechanism (McMahan et al. 2018, "Learning differentially private recurrent
language models"; Andrew et al. 2021 for the fixed-clipping Gaussian variant).
Site k clips its whole update before it leaves the site::

    clip(Delta_k) = Delta_k * min(1, S / ||Delta_k||_2)        (L2 over all tensors)

The server adds Gaussian noise to the *sum* of the m updates it received and
applies their mean::

    theta <- theta + (sum_k clip(Delta_k) + N(0, z^2 S^2 I)) / m

Neighbouring relation: two federations that differ by one site's *entire*
dataset (add/remove one site). Adding or removing a site changes the sum by at
most S, so each round is a Gaussian mechanism with noise multiplier ``z``;
dividing by ``m`` and adding to ``theta`` is post-processing. Updates are
weighted uniformly: weighting by example counts would let one large site move the
sum by more than S.

Accounting. Each round samples sites at rate ``q = sampled / available`` and is
composed by the server's accountant (Opacus RDP or PRV; see
:mod:`privacy.budget`) as a subsampled Gaussian step. Flower samples a fixed number
of sites without replacement, not Poisson; treating ``q`` as a Poisson rate is the
usual approximation (McMahan et al. 2018; Flower's accountant offers no
amplification at all). With ``fraction-train = 1`` (the default), ``q = 1`` and the
accounting is exact. The resulting (epsilon, delta) bounds what the final model
and every round's aggregate reveal about whether any one site took part; delta
should be well below 1 / (number of sites).

What it does not cover: the metrics sites report in plaintext (example counts,
train loss, sample-level epsilon), which the server sees outside the noisy sum.

Noise source. Gaussian noise is drawn from the operating system's CSPRNG
(``os.urandom``) by the Box-Muller transform in float64, not from a seeded
Mersenne Twister, so the server's noise cannot be reproduced from a 32- or 64-bit
seed.

Why our own code: Flower's ``DifferentialPrivacy*FixedClipping`` wrappers clip
*parameters* against the current model, divide the noise by a fixed configured
number of sampled clients, require that every sampled client replies (strict
mode) and account without subsampling; our sites send deltas, refusals and
screened-out replies change ``m`` per round, and the sampling rate should count.
The accounting itself is Opacus'.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedshield.common.config import ConfigError
from fedshield.common.run_config import check_fields, default, read_fields

__all__ = [
    "ClientDPConfig",
    "clip_update",
    "l2_norm",
    "noisy_mean",
    "noisy_mean_of_sum",
    "noisy_sum",
    "secure_normal",
]

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientDPConfig:
    """Client-level DP settings of a run (``client-dp.*`` in the run config).

    Attributes:
        enabled: clip each site's update and add server noise (default off).
        clip_norm: S, the L2 bound of a site's whole update (delta of the trainable
            parameters) for one round.
        noise_multiplier: z; the server's noise on the sum has std z * S.
        delta: the delta of the run's client-level (epsilon, delta).
        min_survivors: under secure aggregation, the fewest survivors whose
            Skellam noise shares (:mod:`privacy.distributed_dp`) add up to the
            accounted noise; a site uses this or its policy's minimum, whichever
            is higher, and reveals no share for a smaller sum.
    """

    enabled: bool = default("client-dp.enabled")
    clip_norm: float = default("client-dp.clip-norm")
    noise_multiplier: float = default("client-dp.noise-multiplier")
    delta: float = default("client-dp.delta")
    min_survivors: int = default("client-dp.min-survivors")

    KEYS: ClassVar[dict[str, str]] = {
        "enabled": "client-dp.enabled",
        "clip_norm": "client-dp.clip-norm",
        "noise_multiplier": "client-dp.noise-multiplier",
        "delta": "client-dp.delta",
        "min_survivors": "client-dp.min-survivors",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)
        if self.enabled and not self.noise_multiplier > 0:
            raise ConfigError(
                f"`client-dp.noise-multiplier` must be > 0 when client-level DP is "
                f"on. Found {self.noise_multiplier}. Set client-dp.enabled=false to "
                "turn it off."
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ClientDPConfig:
        return cls(**read_fields(run_config, cls.KEYS))


def l2_norm(update: State) -> float:
    """L2 norm of all tensors of ``update`` taken as one vector."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))


def clip_update(update: State, *, clip_norm: float) -> tuple[State, float]:
    """``update * min(1, S / ||update||)`` and the norm before clipping."""
    norm = l2_norm(update)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: v * factor for k, v in update.items()}, norm


def secure_normal(shape: torch.Size, *, std: float) -> torch.Tensor:
    """i.i.d. N(0, std^2) float32 samples from ``os.urandom`` (Box-Muller)."""
    n = math.prod(shape)
    pairs = (n + 1) // 2
    raw = torch.frombuffer(bytearray(os.urandom(16 * pairs)), dtype=torch.int64)
    # top 53 random bits (masked: >> is arithmetic on int64) -> uniform in (0, 1),
    # never 0: (k + 0.5) / 2^53
    bits = (raw >> 11) & ((1 << 53) - 1)
    u = (bits.to(torch.float64) + 0.5) * 2.0**-53  # (2 * pairs,)
    u1, u2 = u[:pairs], u[pairs:]
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = 2 * math.pi * u2
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])
    return (z[:n] * std).to(torch.float32).reshape(shape)


def noisy_mean(
    updates: list[State], *, clip_norm: float, noise_multiplier: float
) -> State:
    """``(sum_k updates_k + N(0, (z S)^2 I)) / m`` for clipped ``updates``.

    Raises ValueError if any update's norm exceeds ``clip_norm`` (beyond float32
    rounding): the sensitivity bound would not hold.
    """
    if not updates:
        raise ValueError("noisy_mean needs at least one update.")
    for i, update in enumerate(updates):
        norm = l2_norm(update)
        if norm > clip_norm * (1 + 1e-4):
            raise ValueError(
                f"update {i} has L2 norm {norm:.6g} > client-dp.clip-norm={clip_norm}"
            )
    total = {k: torch.stack([u[k] for u in updates]).sum(0) for k in updates[0]}
    return noisy_mean_of_sum(
        total, len(updates), clip_norm=clip_norm, noise_multiplier=noise_multiplier
    )


def noisy_mean_of_sum(
    total: State, count: int, *, clip_norm: float, noise_multiplier: float
) -> State:
    """``(total + N(0, (z S)^2 I)) / count``: the mechanism on a sum of ``count``
    clipped updates (also the securely aggregated sum, which the server never sees
    in parts)."""
    noisy = noisy_sum(total, clip_norm=clip_norm, noise_multiplier=noise_multiplier)
    return {k: v / count for k, v in noisy.items()}


def noisy_sum(total: State, *, clip_norm: float, noise_multiplier: float) -> State:
    """``total + N(0, (z S)^2 I)``: the Gaussian mechanism on a sum of updates each
    clipped to S (sensitivity S under add/remove one site), one independent draw
    per coordinate of every tensor. The one place the server's client-level noise
    is drawn: :func:`noisy_mean_of_sum` and the server's aggregation
    (:mod:`server.aggregation`) both call it."""
    std = noise_multiplier * clip_norm
    return {k: v + secure_normal(v.shape, std=std) for k, v in total.items()}
