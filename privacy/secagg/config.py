"""``secagg.*`` run-config keys, parsed once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedshield.common.config import ConfigError
from fedshield.common.run_config import check_fields, default, read_fields

from .quantize import Quantizer

__all__ = ["SecAggConfig"]


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation settings of a run.

    Attributes:
        enabled: aggregate masked updates (the server learns only their sum).
        num_shares: share holders per site, itself included: ``1.0`` (or an int at
            least the round's number of sites) is SecAgg's complete graph, the only
            graph sites take part in; a sparse SecAgg+ ring is refused (see
            :mod:`.params` for the attack on it).
        threshold: shares needed to reconstruct a secret, always more than half
            of the holders: a float f in [0.5, 1] gives t = floor(f h) + 1 (at
            most h, at least 2) for h holders, valid for every number of sites;
            an int is absolute (capped at h) and must exceed h / 2. The round
            survives up to h - t dropouts and hides each input from up to t - 1
            colluding sites.
        clip_range: c; each coordinate of an update is clipped to [-c, c] before
            quantization (clipped values are counted as saturated).
        quantization_bits: b; each coordinate becomes an integer in [0, 2^b - 1].
    """

    enabled: bool = default("secagg.enabled")
    num_shares: float | int = default("secagg.num-shares")
    threshold: float | int = default("secagg.threshold")
    clip_range: float = default("secagg.clip-range")
    quantization_bits: int = default("secagg.quantization-bits")

    KEYS: ClassVar[dict[str, str]] = {
        "enabled": "secagg.enabled",
        "num_shares": "secagg.num-shares",
        "threshold": "secagg.threshold",
        "clip_range": "secagg.clip-range",
        "quantization_bits": "secagg.quantization-bits",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)
        if isinstance(self.num_shares, float) and self.num_shares != 1.0:
            raise ConfigError(
                f"`secagg.num-shares` = {self.num_shares}: sparse SecAgg+ graphs are "
                "refused (a server that controls dropouts can unmask a site in "
                "them). Use 1.0, every site holding shares of every other."
            )
        if isinstance(self.threshold, float) and not 0.5 <= self.threshold <= 1:
            raise ConfigError(
                f"`secagg.threshold` as a fraction must be in [0.5, 1]: the "
                f"threshold must exceed half of the share holders. Found "
                f"{self.threshold}."
            )
        if isinstance(self.threshold, int) and self.threshold < 2:
            raise ConfigError(
                f"`secagg.threshold` must be at least 2 (one share alone would be "
                f"the secret). Found {self.threshold}."
            )

    @property
    def quantizer(self) -> Quantizer:
        return Quantizer(clip_range=self.clip_range, bits=self.quantization_bits)

    def counts(self, participants: int) -> tuple[int, int]:
        """(num_shares, threshold) as absolute counts for ``participants`` sites."""
        n = participants
        if isinstance(self.num_shares, int) and self.num_shares < n:
            raise ConfigError(
                f"`secagg.num-shares` = {self.num_shares} for {n} sites makes a "
                "sparse SecAgg+ graph, which sites refuse (a server that controls "
                "dropouts can unmask a site in it). Use 1.0."
            )
        holders = n
        if isinstance(self.threshold, float):
            t = min(holders, max(2, math.floor(self.threshold * holders) + 1))
        else:
            t = min(int(self.threshold), holders)
        if not (2 <= t <= holders and 2 * t > holders):
            raise ConfigError(
                f"`secagg.threshold` = {self.threshold} gives t = {t} for {n} sites; "
                f"it must exceed half of them ({holders // 2 + 1} or more). Give a "
                "fraction such as 0.5, which is valid for every number of sites."
            )
        return n, t

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> SecAggConfig:
        return cls(**read_fields(run_config, cls.KEYS))
