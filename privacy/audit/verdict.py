"""What an audit may conclude, and never more: four verdicts.

A canary test compares an empirical lower bound on epsilon (:mod:`.one_run`) with
the epsilon a site claimed for the run. It can refute a claim; it cannot confirm
one. Its power is capped: even if every guess were right the bound could not
exceed the **ceiling** (:attr:`OneRunAudit.ceiling`), so a test whose ceiling is
below the claim could not have caught any over-claim, however large.

- ``violation``: the lower bound exceeds the claim. The implementation does not
  give the guarantee it reports (false alarm rate: 1 - confidence).
- ``consistent``: no violation, and the ceiling exceeds the claim, so a large
  enough over-claim would have shown.
- ``inconclusive``: no violation, but the ceiling is at or below the claim: this
  audit could not have shown one. More guesses (canaries x guess fraction, more
  sites pooled), gradient canaries, or a smaller claimed epsilon would.
- ``not tested``: nothing was tested: no canaries, no sample-level DP claim, or
  guesses too few to bound epsilon above 0 even if all were right.

Exit codes (``fedshield audit``, ``fedshield simulate --audit``): consistent 0,
violation 3, inconclusive 4, not tested 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .one_run import OneRunAudit
from .roc import RocCurve

__all__ = ["CanaryTest", "SiteAudit", "Verdict"]


class Verdict(StrEnum):
    VIOLATION = "violation"
    CONSISTENT = "consistent"
    INCONCLUSIVE = "inconclusive"
    NOT_TESTED = "not tested"

    @property
    def exit_code(self) -> int:
        return _EXIT[self]

    @property
    def passed(self) -> bool:
        """Only ``consistent`` may be shown as passing (green)."""
        return self is Verdict.CONSISTENT


_EXIT = {
    Verdict.CONSISTENT: 0,
    Verdict.VIOLATION: 3,
    Verdict.INCONCLUSIVE: 4,
    Verdict.NOT_TESTED: 5,
}


@dataclass(frozen=True)
class CanaryTest:
    """One test of a claim: a site's canaries, or every site's pooled.

    ``canaries`` is None when none were scored; ``claimed_epsilon`` is inf
    without sample-level DP."""

    scope: str
    canaries: OneRunAudit | None
    claimed_epsilon: float
    delta: float

    @property
    def verdict(self) -> Verdict:
        c = self.canaries
        if c is None or math.isinf(self.claimed_epsilon) or c.ceiling <= 0:
            return Verdict.NOT_TESTED
        if c.empirical_epsilon > self.claimed_epsilon:
            return Verdict.VIOLATION
        if c.ceiling <= self.claimed_epsilon:
            return Verdict.INCONCLUSIVE
        return Verdict.CONSISTENT

    def explanation(self) -> str:
        c, claimed = self.canaries, self.claimed_epsilon
        if c is None:
            return "not tested: no canaries were planted (audit.canaries = 0)"
        emp, ceiling = c.empirical_epsilon, c.ceiling
        if math.isinf(claimed):
            return (
                "not tested: no sample-level DP, so nothing is claimed for one "
                f"record; the canaries alone prove epsilon >= {emp:.3f}"
            )
        if ceiling <= 0:
            return (
                f"not tested: {c.guesses} guesses cannot bound epsilon above 0 even "
                "if all are right; plant more canaries or raise audit.guess-fraction"
            )
        verdict = self.verdict
        if verdict is Verdict.VIOLATION:
            return (
                f"VIOLATION: empirical epsilon {emp:.3f} exceeds the claimed "
                f"{claimed:.3f}. The implementation does not give the guarantee it "
                "reports; this is a bug to report."
            )
        if verdict is Verdict.INCONCLUSIVE:
            return (
                f"inconclusive: empirical lower bound {emp:.3f}, but even all "
                f"{c.guesses} guesses right could show at most {ceiling:.3f}, not "
                f"above the claimed {claimed:.3f}: this audit could not have caught "
                "an over-claim"
            )
        return (
            f"consistent: empirical lower bound {emp:.3f} <= claimed {claimed:.3f} "
            f"(the audit could have shown up to {ceiling:.3f})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "canaries": self.canaries.to_dict() if self.canaries else None,
            "claimed_epsilon": self.claimed_epsilon,
            "delta": self.delta,
            "verdict": str(self.verdict),
            "explanation": self.explanation(),
        }


@dataclass(frozen=True)
class SiteAudit:
    """One site's attacks (membership-inference ROC curves) and canary test."""

    site: str
    phi_attack: RocCurve
    lira: RocCurve | None
    test: CanaryTest

    @property
    def verdict(self) -> Verdict:
        return self.test.verdict

    @property
    def claimed_epsilon(self) -> float:
        return self.test.claimed_epsilon

    @property
    def delta(self) -> float:
        return self.test.delta

    @property
    def canaries(self) -> OneRunAudit | None:
        return self.test.canaries

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "phi_attack": self.phi_attack.to_dict(),
            "lira": self.lira.to_dict() if self.lira else None,
            **{k: v for k, v in self.test.to_dict().items() if k != "scope"},
        }
