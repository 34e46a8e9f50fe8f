"""The one result of auditing a run: what ``fedshield audit`` prints and renders.

:class:`AuditResult` holds the typed results (each site's
:class:`~fedshield.privacy.audit.SiteAudit`, the ROC curves per site and pooled);
:meth:`AuditResult.to_report` gives the mapping that
:mod:`fedshield.privacy.audit.report` turns into ``report.html`` and
``audit.json``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.privacy.audit import (
    AuditConfig,
    CanaryTest,
    ExposureAudit,
    RocCurve,
    SiteAudit,
    Verdict,
)

__all__ = ["POOLED", "AuditResult"]

POOLED = "all sites"  # the key of the pooled curves beside the sites' names
# Claims this close are one claim: sites calibrated to one dp.target-epsilon land
# within the accountant's search tolerance (0.01) below it.
SAME_CLAIM = 0.01


@dataclass(frozen=True, kw_only=True)
class AuditResult:
    """The attacks and canary tests on one finished run.

    Attributes:
        run_dir: the audited run directory.
        summary: its ``summary.json``, as read.
        audit: the ``audit.*`` config the attacks ran with.
        sites: each site's attacks, canary test and verdict, in site order.
        pooled_test: every site's canaries in one test against the largest claim.
        curves: per site name, then :data:`POOLED` last: attack name (``"phi"``,
            ``"lira"`` with reference models) -> ROC curve.
        exposure: per site, the Secret-Sharer exposure of its ``secret``
            canaries (causal LM; None for other canary kinds).
    """

    run_dir: Path
    summary: Mapping[str, Any]
    audit: AuditConfig
    sites: tuple[SiteAudit, ...]
    pooled_test: CanaryTest
    curves: Mapping[str, Mapping[str, RocCurve]]
    exposure: Mapping[str, ExposureAudit] | None = None

    @property
    def pooled(self) -> Mapping[str, RocCurve]:
        """Both attacks over every site's members and non-members together."""
        return self.curves[POOLED]

    @property
    def violations(self) -> tuple[str, ...]:
        """The tests (site names, or :data:`POOLED`) whose empirical epsilon
        exceeds their claim."""
        tests = [*(s.test for s in self.sites), self.pooled_test]
        return tuple(t.scope for t in tests if t.verdict is Verdict.VIOLATION)

    @property
    def uncovered(self) -> tuple[str, ...]:
        """Sites whose own claim no test could have refuted: the pooled test only
        tests the largest claim, so a site claiming less (by more than
        :data:`SAME_CLAIM`) is covered only by its own test being consistent."""
        pooled = self.pooled_test
        out = []
        for s in self.sites:
            claim = s.test.claimed_epsilon
            if math.isinf(claim) or s.test.verdict is Verdict.CONSISTENT:
                continue  # nothing claimed, or its own test had the power
            at_pooled = claim >= pooled.claimed_epsilon - SAME_CLAIM and (
                s.test.canaries is not None
            )
            if not (at_pooled and pooled.verdict is Verdict.CONSISTENT):
                out.append(s.site)
        return tuple(out)

    @property
    def verdict(self) -> Verdict:
        """The run's: a violation if any test shows one; else the pooled test's
        if it was not consistent; else consistent only when every site's claim
        was tested with the power to refute it (:attr:`uncovered` is empty),
        inconclusive otherwise."""
        if self.violations:
            return Verdict.VIOLATION
        pooled = self.pooled_test.verdict
        if pooled is not Verdict.CONSISTENT:
            return pooled
        return Verdict.INCONCLUSIVE if self.uncovered else Verdict.CONSISTENT

    def explanation(self) -> str:
        """One line for the run's verdict."""
        verdict, pooled = self.verdict, self.pooled_test
        if verdict is Verdict.INCONCLUSIVE and pooled.verdict is Verdict.CONSISTENT:
            return (
                f"the pooled test is consistent with the largest claim "
                f"({pooled.claimed_epsilon:.3f}), but the smaller claims of "
                f"{', '.join(self.uncovered)} had no test able to refute them"
            )
        return pooled.explanation()

    def to_report(self) -> dict[str, Any]:
        """The mapping :func:`~fedshield.privacy.audit.report.render_html` and
        :func:`~fedshield.privacy.audit.report.report_json` render: JSON-safe
        except the ``RocCurve``s under ``"curves"``."""
        return {
            "run_dir": str(self.run_dir),
            "verdict": str(self.verdict),
            "exit_code": self.verdict.exit_code,
            "explanation": self.explanation(),
            "uncovered": list(self.uncovered),
            "pooled_test": self.pooled_test.to_dict(),
            "pooled": {k: c.to_dict() for k, c in self.pooled.items()},
            "summary": self.summary,
            "audit_config": {
                k: (v.value if hasattr(v, "value") else v)
                for k, v in dataclasses.asdict(self.audit).items()
            },
            "sites": [s.to_dict() for s in self.sites],
            "violations": list(self.violations),
            "curves": self.curves,
            **(
                {"exposure": {n: e.to_dict() for n, e in self.exposure.items()}}
                if self.exposure is not None
                else {}
            ),
        }
