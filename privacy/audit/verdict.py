"""One site's audit result: the attacks' ROC curves, the canary audit, the claim,
and the one-line verdict the report and the CLI print."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .one_run import OneRunAudit
from .roc import RocCurve

__all__ = ["SiteAudit"]


@dataclass(frozen=True)
class SiteAudit:
    site: str
    loss_attack: RocCurve
    lira: RocCurve | None
    canaries: OneRunAudit | None
    claimed_epsilon: float  # this run's sample-level epsilon (inf without DP)
    delta: float

    @property
    def violation(self) -> bool:
        return self.canaries is not None and (
            self.canaries.empirical_epsilon > self.claimed_epsilon
        )

    def verdict(self) -> str:
        if self.canaries is None:
            return "no canaries planted (audit.canaries = 0): no empirical epsilon"
        emp, claimed = self.canaries.empirical_epsilon, self.claimed_epsilon
        if math.isinf(claimed):
            return (
                "no sample-level DP: nothing is claimed for one record; the canaries "
                f"alone prove epsilon >= {emp:.3f}"
            )
        if self.violation:
            return (
                f"VIOLATION: empirical epsilon {emp:.3f} exceeds the claimed "
                f"{claimed:.3f}. The implementation does not give the guarantee it "
                "reports; this is a bug to report."
            )
        return f"consistent: empirical lower bound {emp:.3f} <= claimed {claimed:.3f}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "loss_attack": self.loss_attack.to_dict(),
            "lira": self.lira.to_dict() if self.lira else None,
            "canaries": self.canaries.to_dict() if self.canaries else None,
            "claimed_epsilon": self.claimed_epsilon,
            "delta": self.delta,
            "violation": self.violation,
            "verdict": self.verdict(),
        }
