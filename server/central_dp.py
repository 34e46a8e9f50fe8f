"""The server's client-level accountant and ledger (see :mod:`privacy.client_dp`
for the mechanism and what its epsilon protects).

Every round that applies a noisy aggregate is one release
``(sigma = z, q = sampled / available, steps = 1)``. It is appended to the
server's ledger in ``<out-dir>/ledger`` (the same signed, hash-chained format as a
site's ledger, mechanism ``client-gaussian``) *before* the new global model is
evaluated, checkpointed or reported, and the run's client-level epsilon is the
accountant's composition of every such entry of this run, so it keeps composing
across ``resume=true``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedshield.common.layout import RunLayout
from fedshield.privacy.budget import Release, accountant_of, compose_epsilon
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.privacy.dp import AccountantKind, accountant_to_json
from fedshield.privacy.ledger import LedgerEntry, LedgerReader, Mechanism, SiteLedger

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
    ) -> None:
        self.state_dir = RunLayout(out_dir).server_ledger
        self.run_id = run_id
        self.config = config
        self.accountant = accountant

    def _history(self, ledger: LedgerReader) -> list[Release]:
        return ledger.client_history(run_id=self.run_id)

    def record_round(self, *, server_round: int, sampled: int, available: int) -> float:
        """Append this round's release; return the run's epsilon after it."""
        if not 0 < sampled <= available:
            raise ValueError(
                f"Round {server_round}: {sampled} sampled of {available} available "
                "sites is not a sampling rate in (0, 1]."
            )
        release = Release(self.config.noise_multiplier, sampled / available, 1)
        with SiteLedger(self.state_dir) as ledger:
            history = [*self._history(ledger), release]
            epsilon = compose_epsilon(
                history, delta=self.config.delta, accountant=self.accountant
            )
            ledger.append(
                LedgerEntry(
                    run_id=self.run_id,
                    server_round=server_round,
                    dataset_fingerprint=f"federation:{self.run_id}",
                    mechanism=Mechanism.CLIENT_GAUSSIAN,
                    noise_multiplier=release.noise_multiplier,
                    sample_rate=release.sample_rate,
                    steps=release.steps,
                    delta=self.config.delta,
                    accountant=self.accountant.value,
                    accountant_state=accountant_to_json(
                        accountant_of(self.accountant, history)
                    ),
                    epsilon=epsilon,
                    timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
                )
            )
        return epsilon

    def summary(self) -> dict[str, Any]:
        """The client-level block of summary.json, read back from the ledger."""
        epsilon, rounds = 0.0, 0
        if (self.state_dir / "ledger.sqlite").exists():
            with LedgerReader(self.state_dir) as ledger:
                history = self._history(ledger)
            rounds = len(history)
            epsilon = compose_epsilon(
                history, delta=self.config.delta, accountant=self.accountant
            )
        return {
            "enabled": True,
            "epsilon": epsilon,
            "delta": self.config.delta,
            "noise_multiplier": self.config.noise_multiplier,
            "clip_norm": self.config.clip_norm,
            "rounds": rounds,
            "accountant": self.accountant.value,
            "ledger": self.state_dir.name,
            "neighbouring": "add/remove one site's entire dataset",
            "scope": "every round of this run (all sites' contributions)",
        }
