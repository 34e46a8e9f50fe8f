"""Audit a finished simulation: attack its final global model, score its canaries.

For each simulated site, with the run's own config (``summary.json``):

- members: the site's training records as training saw them (scrubbed, canaries
  left out); non-members: the site's evaluation share, drawn from the same
  distribution (same PII injection and scrubbing) and never trained on.
- confidence-threshold attack (phi; Yeom et al. 2018's loss attack at full
  resolution) and offline LiRA (Carlini et al. 2022)
  with ``audit.lira-references`` reference models, trained here the way the run
  trained (same model, LoRA/full, DP settings and noise multiplier, rounds x local
  epochs) on population records no site holds;
- the one-run audit (Steinke et al. 2023) when the run planted canaries
  (``audit.canaries``): the final model's loss ranks each site's canaries, and the
  empirical epsilon lower bound is set beside the site's sample-level epsilon for
  this run from its ledger.

Everything is regenerated from the run config and seed (site shares, canaries,
which canaries were included), so the audit needs no file a site would not keep.
It reads the sites' scrub caches under the run directory (scrubbing again into the
cache only if one is missing). Deployed runs, whose data stays at the sites, are
out of scope: the auditor would need the site's records.

Modules, in the order the driver uses them:

- :mod:`.run`: load a finished run (summary, configs parsed once, final model);
- :mod:`.records`: regenerate each site's members, non-members and canaries;
- :mod:`.scoring`: per-record scores, reference models, the attacks;
- :mod:`.result`: :class:`AuditResult`, what ``fedshield audit`` renders;
- :mod:`.driver`: :func:`audit_run`, the entry point;
- :mod:`.plan`: :func:`plan_audit`, whether a planned run's audit can refute its
  claim (``fedshield simulate --audit`` warns before the run when it cannot).

The statistics (ROC, LiRA, the one-run bound) and the report live in
:mod:`fedshield.privacy.audit`; the command in :mod:`fedshield.cli.audit`.
"""

from .driver import Progress, audit_run, confidence_levels
from .plan import AuditPlan, plan_audit, planned_claims
from .records import PlantedCanaries, SiteRecords
from .result import POOLED, AuditResult
from .run import AuditError, FinishedRun, SiteClaim, load_run
from .scoring import RecordScores, SiteScores, score_records

__all__ = [
    "POOLED",
    "AuditError",
    "AuditPlan",
    "AuditResult",
    "FinishedRun",
    "PlantedCanaries",
    "Progress",
    "RecordScores",
    "SiteClaim",
    "SiteRecords",
    "SiteScores",
    "audit_run",
    "confidence_levels",
    "load_run",
    "plan_audit",
    "planned_claims",
    "score_records",
]
