"""The audit's entry point: load a finished run, regenerate its sites' records,
score them under the final model (and LiRA's reference models), attack.

    result = audit_run(Path("runs/demo"))           # -> AuditResult
    result.violations                                # sites whose bound beats the claim

The run's configs are parsed once, by :func:`~.run.load_run`; every later step
takes the parsed :class:`~.run.FinishedRun`. The order of the steps is the order
the numbers depend on: the same run audited twice gives the same loss-attack and
canary numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fedshield.privacy.audit import OneRunAudit, SiteAudit

from .records import SiteRecords, reference_records, site_records
from .result import POOLED, AuditResult
from .run import load_final_model, load_run
from .scoring import (
    SiteScores,
    attack_site,
    canary_audit,
    pooled_curves,
    score_records,
    score_site,
    train_reference,
)

__all__ = ["Progress", "audit_run"]

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]


def audit_run(
    run_dir: Path, *, num_sites: int | None = None, progress: Progress | None = None
) -> AuditResult:
    """Run the configured attacks on the finished run in ``run_dir``.

    ``num_sites``: how many sites the simulation had (default: one more than the
    highest site-<k> in the summary; a site that never reported would make that
    guess wrong, which the check of every site's record count catches).
    ``progress`` is told each step as it starts.

    Raises:
        AuditError: the run cannot be audited; the message says why and what to do.
    """
    say = progress or (lambda _msg: None)
    run = load_run(run_dir, num_sites=num_sites)
    names = run.sites
    max_length = run.client.model.max_length

    say("loading the final global model")
    final = load_final_model(run)
    records: dict[str, SiteRecords] = {}
    for name in names:
        say(f"{name}: regenerating its records")
        records[name] = site_records(run, name)

    say("scoring every site's records under the final model")
    target = {
        name: score_site(final, records[name], max_length=max_length) for name in names
    }
    references: list[dict[str, SiteScores]] = []
    if run.audit.lira_references:
        population = reference_records(run)
        sigma = run.noise_multiplier
        for i in range(run.audit.lira_references):
            say(f"training reference model {i + 1}/{run.audit.lira_references}")
            ref = train_reference(
                run.client,
                population,
                examples=run.audit.reference_examples,
                noise_multiplier=sigma,
                seed=run.client.seed * 7_919 + i,
            )
            references.append(
                {n: score_site(ref, records[n], max_length=max_length) for n in names}
            )

    results: list[SiteAudit] = []
    for name in names:
        claim = run.claim(name)
        canaries = records[name].canaries
        one_run: OneRunAudit | None = None
        if canaries is not None:
            loss = score_records(final, canaries.records, max_length=max_length).loss
            one_run = canary_audit(loss, canaries, audit=run.audit, delta=claim.delta)
        result = attack_site(
            site=name,
            target=target[name],
            references=[r[name] for r in references],
            one_run=one_run,
            claim=claim,
        )
        if result.violation:
            logger.error("%s: %s", name, result.verdict())
        results.append(result)
    curves = {
        s.site: {"loss": s.loss_attack, **({"lira": s.lira} if s.lira else {})}
        for s in results
    }
    curves[POOLED] = pooled_curves(target, references, names)
    return AuditResult(
        run_dir=run_dir,
        summary=run.summary,
        audit=run.audit,
        sites=tuple(results),
        curves=curves,
    )
