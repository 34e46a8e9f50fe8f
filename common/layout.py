"""The run folder (``out-dir``): every path in it, named once.

<out-dir>/
  summary.json                  per round and per site; status of the run
  progress.json                 the round in flight (for progress displays)
  checkpoint.pt                 resumable state after the last round
  checkpoint.sig.json           its signature, when `checkpoint.signing-key` is set
  final_trainable.safetensors   the final trainable weights (adapter + head)
  adapter/ | encoder/ | model/  the final model as a Hugging Face/peft folder
  flwr.log                      the full log of `fedshield simulate`
  ledger/                       the server's client-level ledger (client-dp.*)
  sites/<site>/                 a simulated site's state dir (ledger, keys,
                                scrub cache); deployed sites keep their own
  audit.json, report.html       `fedshield audit`'s numbers and report
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["AuditLayout", "RunLayout"]


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder."""

    root: Path

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def checkpoint_signatures(self) -> Path:
        return self.root / "checkpoint.sig.json"

    @property
    def final_trainable(self) -> Path:
        return self.root / "final_trainable.safetensors"

    def pretrained(self, folder: str) -> Path:
        """The final model's Hugging Face/peft folder (``adapter``, ``encoder`` or
        ``model``, as summary.json's ``weights.pretrained`` names it)."""
        return self.root / folder

    @property
    def log(self) -> Path:
        return self.root / "flwr.log"

    @property
    def superlink_log(self) -> Path:
        return self.root / "superlink.log"

    @property
    def server_ledger(self) -> Path:
        return self.root / "ledger"

    @property
    def sites(self) -> Path:
        return self.root / "sites"

    def site(self, name: str) -> Path:
        return self.sites / name

    @property
    def audit(self) -> AuditLayout:
        return AuditLayout(self.root / "audit")

    def outputs(self) -> list[Path]:
        """What a started run leaves: a new run never writes where these exist."""
        return [self.summary, self.checkpoint]


@dataclass(frozen=True)
class AuditLayout:
    """The folder ``fedshield audit`` writes (``<out-dir>/audit`` by default)."""

    root: Path

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def numbers(self) -> Path:
        return self.root / "audit.json"

    def outputs(self) -> list[Path]:
        """Never overwritten by a later audit."""
        return [self.report, self.numbers]
