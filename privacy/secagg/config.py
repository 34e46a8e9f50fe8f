"""``secagg.*`` run-config keys, parsed once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedshield.models.config import ConfigError, require

from .protocol import resolve_count
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

    enabled: bool = True
    num_shares: float | int = 1.0
    threshold: float | int = 0.5
    clip_range: float = 1.0
    quantization_bits: int = 24

    def __post_init__(self) -> None:
        try:
            self.quantizer  # noqa: B018 - validates clip range and bits
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
    def from_run_config(cls, run_config: dict[str, Any]) -> SecAggConfig:
        def count(key: str) -> float | int:
            value = run_config.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(
                    f"`{key}` must be a number (an int count or a float fraction). "
                    f"Found {value!r}."
                )
            return value

        return cls(
            enabled=require(run_config, "secagg.enabled", bool),
            num_shares=count("secagg.num-shares"),
            threshold=count("secagg.threshold"),
            clip_range=require(run_config, "secagg.clip-range", float),
            quantization_bits=require(run_config, "secagg.quantization-bits", int),
        )
