"""The one result of auditing a run: what ``fedshield audit`` prints and renders.

:class:`AuditResult` holds the typed results (each site's
:class:`~fedshield.privacy.audit.SiteAudit`, the ROC curves per site and pooled);
:meth:`AuditResult.to_report` gives the mapping that
:mod:`fedshield.privacy.audit.report` turns into ``report.html`` and
``audit.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.privacy.audit import AuditConfig, RocCurve, SiteAudit

__all__ = ["POOLED", "AuditResult"]

POOLED = "all sites"  # the key of the pooled curves beside the sites' names


@dataclass(frozen=True, kw_only=True)
class AuditResult:
    """The attacks on one finished run.

    Attributes:
        run_dir: the audited run directory.
        summary: its ``summary.json``, as read.
        audit: the ``audit.*`` config the attacks ran with.
        sites: each site's attacks, canary audit, claim and verdict, in site order.
        curves: per site name, then :data:`POOLED` last: attack name (``"loss"``,
            ``"lira"`` with reference models) -> ROC curve.
    """

    run_dir: Path
    summary: Mapping[str, Any]
    audit: AuditConfig
    sites: tuple[SiteAudit, ...]
    curves: Mapping[str, Mapping[str, RocCurve]]

    @property
    def pooled(self) -> Mapping[str, RocCurve]:
        """Both attacks over every site's members and non-members together."""
        return self.curves[POOLED]

    @property
    def violations(self) -> tuple[str, ...]:
        """The sites whose empirical epsilon exceeds their claimed epsilon."""
        return tuple(s.site for s in self.sites if s.violation)

    def to_report(self) -> dict[str, Any]:
        """The mapping :func:`~fedshield.privacy.audit.report.render_html` and
        :func:`~fedshield.privacy.audit.report.report_json` render: JSON-safe
        except the ``RocCurve``s under ``"curves"``."""
        return {
            "run_dir": str(self.run_dir),
            "pooled": {k: c.to_dict() for k, c in self.pooled.items()},
            "summary": self.summary,
            "audit_config": {
                k: (v.value if hasattr(v, "value") else v)
                for k, v in dataclasses.asdict(self.audit).items()
            },
            "sites": [s.to_dict() for s in self.sites],
            "violations": list(self.violations),
            "curves": self.curves,
        }
