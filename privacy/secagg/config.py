"""``secagg.*`` run-config keys, parsed once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedshield.common.config import ConfigError
from fedshield.common.run_config import check_fields, default, read_fields

from .params import resolve_count
from .quantize import Quantizer

__all__ = ["SecAggConfig"]


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation settings of a run.

    Attributes:
        enabled: aggregate masked updates (the server learns only their sum).
        num_shares: share holders per site, itself included: an int is absolute, a
            float in (0, 1] a fraction of the round's sites; >= all sites gives
            SecAgg's complete graph, fewer a SecAgg+ ring (rounded up to odd).
        threshold: shares needed to reconstruct a secret (int, or a float fraction
            of the holders); the round survives up to holders - threshold dropouts
            and hides each input from up to threshold - 1 colluding sites.
        clip_range: c; each coordinate of a (weighted) update is clipped to [-c, c]
            before quantization (clipped values are counted as saturated).
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
        try:
            resolve_count(self.num_shares, of=1000, key="secagg.num-shares", minimum=2)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    @property
    def quantizer(self) -> Quantizer:
        return Quantizer(clip_range=self.clip_range, bits=self.quantization_bits)

    def counts(self, participants: int) -> tuple[int, int]:
        """(num_shares, threshold) as absolute counts for ``participants`` sites."""
        try:
            shares = resolve_count(
                min(self.num_shares, participants)
                if isinstance(self.num_shares, int)
                else self.num_shares,
                of=participants,
                key="secagg.num-shares",
                minimum=2,
            )
            holders = participants if shares >= participants else 2 * (shares // 2) + 1
            threshold = resolve_count(
                self.threshold, of=holders, key="secagg.threshold", minimum=2
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return shares, threshold

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> SecAggConfig:
        return cls(**read_fields(run_config, cls.KEYS))
