"""Fixed-point encoding of float updates for aggregation in Z_{2^k}.

Each coordinate x is clipped to [-c, c] (a *saturated* value is one that was
clipped) and mapped to an integer in [0, L], L = 2^b - 1, by stochastic rounding::

    u = (clip(x, -c, c) + c) / (2c) * L,    q = floor(u) + Bernoulli(u - floor(u))

so E[q] = u (unbiased) and |q - u| < 1. The rounding coins are 53-bit uniforms from
a ChaCha20 keystream under a fresh OS-random key (:class:`primitives.Uniforms`).
The sum of m encoded inputs is at most m L; with modulus 2^k, k = b + ceil(log2(n))
for n participants, that sum never wraps (:func:`modulus_bits` checks it). Decoding
the sum of m inputs::

    sum x  ~=  sum q * 2c / L - m c      (error per coordinate: < m * 2c / L)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .primitives import Uniforms

__all__ = ["Encoded", "Quantizer", "modulus_bits"]

MAX_MODULUS_BITS = 64


def modulus_bits(quantization_bits: int, participants: int) -> int:
    """Smallest k such that ``participants`` inputs of ``quantization_bits`` bits
    cannot wrap mod 2^k; raises ValueError if that exceeds 64 bits."""
    k = quantization_bits + max(1, math.ceil(math.log2(participants + 1)))
    if k > MAX_MODULUS_BITS:
        raise ValueError(
            f"{participants} sites with secagg.quantization-bits={quantization_bits} "
            f"need a {k}-bit modulus so their sum cannot wrap; the limit is "
            f"{MAX_MODULUS_BITS}. Lower secagg.quantization-bits or sample fewer sites."
        )
    return k


@dataclass(frozen=True)
class Encoded:
    values: np.ndarray  # integers in [0, L], dtype of the modulus
    saturated: int  # coordinates clipped to [-c, c]


@dataclass(frozen=True)
class Quantizer:
    """Attributes: clip_range c (> 0); bits b of each encoded value (1..62)."""

    clip_range: float
    bits: int

    def __post_init__(self) -> None:
        if not (self.clip_range > 0 and math.isfinite(self.clip_range)):
            raise ValueError(
                f"`secagg.clip-range` must be a finite number > 0. Found "
                f"{self.clip_range}."
            )
        if not 1 <= self.bits <= 62:
            raise ValueError(
                f"`secagg.quantization-bits` must be in [1, 62]. Found {self.bits}."
            )

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def encode(self, x: np.ndarray, *, modulus: int) -> Encoded:
        x = np.asarray(x, dtype=np.float64).ravel()
        if not np.isfinite(x).all():
            raise ValueError("The update holds NaN or inf; it cannot be encoded.")
        c = self.clip_range
        saturated = int(np.count_nonzero(np.abs(x) > c))
        u = (np.clip(x, -c, c) + c) / (2 * c) * self.levels  # in [0, L]
        low = np.floor(u)
        q = low + (Uniforms().draw(x.size) < (u - low))  # CSPRNG coins
        q = np.minimum(q, self.levels)
        dtype = np.uint32 if modulus <= 32 else np.uint64
        return Encoded(values=q.astype(dtype), saturated=saturated)

    def decode_sum(self, total: np.ndarray, *, count: int) -> np.ndarray:
        """The float sum of ``count`` encoded inputs from their integer sum."""
        scale = 2 * self.clip_range / self.levels
        return total.astype(np.float64) * scale - count * self.clip_range
