"""What a ledger records: one entry per private release, as the site's accountant
saw it, and the shapes in which entries, the signed head and a verification come
back.

Each entry records one release: run, round, dataset fingerprint, mechanism, noise
multiplier, sample rate, steps, delta, accountant kind and serialised state, the
epsilon after the entry, and a UTC timestamp.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from fedshield.common.schema import epsilon_from_json, epsilon_to_json

from ..budget import Release

__all__ = [
    "Head",
    "LedgerEntry",
    "LedgerError",
    "Mechanism",
    "RecordedEntry",
    "VerifyReport",
]


class LedgerError(RuntimeError):
    """The ledger cannot be opened or written; the message says what to do."""


class Mechanism(StrEnum):
    """What a release protects: one record (sample-level) or one site (client-level)."""

    DP_SGD = "dp-sgd"  # sample-level: subsampled Gaussian on per-record gradients
    CLIENT_GAUSSIAN = "client-gaussian"  # client-level: Gaussian on clipped updates
    # client-level, distributed: the sites' Skellam noise under secure aggregation
    CLIENT_SKELLAM = "client-skellam"
    NON_PRIVATE = "non-private"  # dp.enabled=false: the update itself (epsilon inf)


@dataclass(frozen=True)
class LedgerEntry:
    """One private release, as the site's accountant saw it."""

    run_id: str
    server_round: int
    dataset_fingerprint: str
    mechanism: Mechanism
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    accountant_state: str
    epsilon: float  # cumulative over the entry's scope after it; inf if non-private
    timestamp: str
    max_epsilon: float = 0.0  # the site's budget when it was recorded; 0 = none

    @property
    def release(self) -> Release:
        return Release(self.noise_multiplier, self.sample_rate, self.steps)

    def canonical(self) -> dict[str, Any]:
        """JSON-safe fields (infinite epsilon as the string "inf")."""
        fields = asdict(self)
        fields["mechanism"] = self.mechanism.value
        fields["epsilon"] = epsilon_to_json(self.epsilon)
        return fields

    @classmethod
    def from_canonical(cls, fields: dict[str, Any]) -> LedgerEntry:
        fields = dict(fields)
        fields["mechanism"] = Mechanism(fields["mechanism"])
        fields["epsilon"] = epsilon_from_json(fields["epsilon"])
        return cls(**fields)


@dataclass(frozen=True)
class RecordedEntry:
    seq: int
    entry: LedgerEntry
    prev_hash: str
    entry_hash: str
    signature: bytes


@dataclass(frozen=True)
class Head:
    """The signed ``(seq, hash)`` of the last entry."""

    seq: int
    entry_hash: str
    signature: bytes


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems
