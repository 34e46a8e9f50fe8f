"""The server's client-level accountant and ledger (see :mod:`privacy.client_dp`
for the mechanism and what its epsilon protects).

Every round that applies a noisy aggregate is one release, appended to the
server's ledger in ``<out-dir>/ledger`` (the same signed, hash-chained format as a
site's ledger) *before* the new global model is evaluated, checkpointed or
reported; the run's client-level epsilon composes every such entry of this run, so
it keeps composing across ``resume=true``:

- central (no secure aggregation): the server's Gaussian noise, mechanism
  ``client-gaussian``, release ``(sigma = z, q = 1, steps = 1)``, composed by the
  run's Opacus accountant;
- distributed (under secure aggregation): the sites' Skellam noise, mechanism
  ``client-skellam``, one RDP round ``(Delta_2, Delta_1, mu)`` with ``mu`` the
  variance the round's survivors reported, composed by
  :func:`privacy.distributed_dp.distributed_epsilon`.

No amplification by sampling (q = 1): Flower samples a fixed number of sites
without replacement, with randomness the coordinator controls, and the Poisson
bound does not hold for that. Every round counts in full.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedshield.common.layout import RunLayout
from fedshield.privacy.budget import Release, accountant_of, compose_epsilon
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.privacy.distributed_dp import (
    DistributedRound,
    SkellamCalibration,
    distributed_epsilon,
)
from fedshield.privacy.dp import AccountantKind, accountant_to_json
from fedshield.privacy.ledger import (
    PUBLIC_KEY_NAME,
    LedgerEntry,
    LedgerReader,
    Mechanism,
    SiteLedger,
)

__all__ = ["ClientLevelAccountant"]


class ClientLevelAccountant:
    """Records the run's client-level releases and reports their epsilon."""

    def __init__(
        self,
        *,
        out_dir: Path,
        run_id: str,
        config: ClientDPConfig,
        accountant: AccountantKind,
        distributed: SkellamCalibration | None = None,
    ) -> None:
        self.state_dir = RunLayout(out_dir).server_ledger
        self.run_id = run_id
        self.config = config
        self.accountant = accountant
        self.distributed = distributed  # the sensitivities, for Skellam rounds

    def key_fingerprint(self) -> str | None:
        """SHA-256 of the ledger's public key, once the first round made it."""
        pub = self.state_dir / PUBLIC_KEY_NAME
        return hashlib.sha256(pub.read_bytes()).hexdigest() if pub.exists() else None

    def _history(self, ledger: LedgerReader) -> list[Release]:
        return ledger.client_history(run_id=self.run_id)

    def record_round(
        self,
        *,
        server_round: int,
        sampled: int,
        available: int,
        noise_variance: float | None = None,
    ) -> float:
        """Append this round's release; return the run's epsilon after it.
        ``noise_variance``: the survivors' total Skellam variance (distributed)."""
        if not 0 < sampled <= available:
            raise ValueError(
                f"Round {server_round}: {sampled} sampled of {available} available "
                "sites is not a sampling rate in (0, 1]."
            )
        if (self.distributed is None) != (noise_variance is None):
            raise ValueError(
                f"Round {server_round}: distributed DP is "
                f"{'on' if self.distributed else 'off'} but the round "
                f"{'has no' if noise_variance is None else 'has a'} noise variance."
            )
        with SiteLedger(self.state_dir) as ledger:
            if self.distributed is not None and noise_variance is not None:
                entry = self._skellam_entry(ledger, server_round, noise_variance)
            else:
                entry = self._gaussian_entry(ledger, server_round)
            ledger.append(entry)
        return entry.epsilon

    def _entry(self, server_round: int, **fields: Any) -> LedgerEntry:
        return LedgerEntry(
            run_id=self.run_id,
            server_round=server_round,
            dataset_fingerprint=f"federation:{self.run_id}",
            noise_multiplier=self.config.noise_multiplier,
            sample_rate=1.0,
            steps=1,
            delta=self.config.delta,
            timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
            **fields,
        )

    def _gaussian_entry(self, ledger: LedgerReader, server_round: int) -> LedgerEntry:
        history = [*self._history(ledger), Release(self.config.noise_multiplier, 1, 1)]
        return self._entry(
            server_round,
            mechanism=Mechanism.CLIENT_GAUSSIAN,
            accountant=self.accountant.value,
            accountant_state=accountant_to_json(
                accountant_of(self.accountant, history)
            ),
            epsilon=compose_epsilon(
                history, delta=self.config.delta, accountant=self.accountant
            ),
        )

    def _skellam_entry(
        self, ledger: LedgerReader, server_round: int, variance: float
    ) -> LedgerEntry:
        assert self.distributed is not None
        this = (
            self.distributed.l2_sensitivity,
            self.distributed.l1_sensitivity,
            variance,
        )
        rounds = [*ledger.skellam_history(run_id=self.run_id), this]
        return self._entry(
            server_round,
            mechanism=Mechanism.CLIENT_SKELLAM,
            accountant="skellam-rdp",
            accountant_state=json.dumps({"round": list(this)}),
            epsilon=self._skellam_epsilon(rounds),
        )

    def _skellam_epsilon(self, rounds: list[tuple[float, float, float]]) -> float:
        return distributed_epsilon(
            [
                DistributedRound(l2_sensitivity=l2, l1_sensitivity=l1, variance=v)
                for l2, l1, v in rounds
            ],
            delta=self.config.delta,
        )

    def summary(self) -> dict[str, Any]:
        """The client-level block of summary.json, read back from the ledger."""
        epsilon, rounds = 0.0, 0
        if (self.state_dir / "ledger.sqlite").exists():
            with LedgerReader(self.state_dir) as ledger:
                history = self._history(ledger)
                skellam = ledger.skellam_history(run_id=self.run_id)
            rounds = len(history) + len(skellam)
            if skellam:
                epsilon = self._skellam_epsilon(skellam)
            elif history:
                epsilon = compose_epsilon(
                    history, delta=self.config.delta, accountant=self.accountant
                )
        return {
            "enabled": True,
            "noise": "distributed (Skellam, added by the sites before masking)"
            if self.distributed
            else "central (Gaussian, added by the server)",
            "epsilon": epsilon,
            "delta": self.config.delta,
            "noise_multiplier": self.config.noise_multiplier,
            "clip_norm": self.config.clip_norm,
            "rounds": rounds,
            "accountant": "skellam-rdp" if self.distributed else self.accountant.value,
            "ledger": self.state_dir.name,
            "neighbouring": "zero-out: one site's update replaced by zeros (which "
            "sites took part is public under secure aggregation)"
            if self.distributed
            else "add/remove one site's entire dataset (an absent site counts as a "
            "zero update: the mean divides by the sites sampled)",
            "scope": "every round of this run (all sites' contributions)",
        }
