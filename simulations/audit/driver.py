"""The audit's entry point: load a finished run, regenerate its sites' records,
score them under the final model (and LiRA's reference models), attack, and test
each site's claim and all sites' pooled.

    result = audit_run(Path("runs/demo"))           # -> AuditResult
    result.verdict                                   # Verdict of the run

Canary tests, and why pooling is sound: site s's DP-SGD is (eps_s, delta_s)-DP for
each of its records, canaries included, whatever the other sites do (their updates
are post-processing of s's noisy releases and their own independent data), so
the final model is (max eps_s, max delta_s)-DP in each canary's inclusion bit, and
the one-run theorem applies to every site's canaries together. Pooling S sites
multiplies the guesses, and with them the ceiling. The run is tested once pooled
against the largest claim, and each site on its own against its own claim. So that
the page as a whole raises a false alarm with probability at most beta = 1 -
``audit.confidence``, the pooled test runs at confidence 1 - beta/2 and each of
the S site tests at 1 - beta/(2S) (Bonferroni); with one site there is one test,
at 1 - beta.

The run's configs are parsed once, by :func:`~.run.load_run`; every later step
takes the parsed :class:`~.run.FinishedRun`. The same run audited twice gives the
same numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedshield.models import LoadedModel, load_model
from fedshield.privacy.audit import (
    CanaryKind,
    CanaryTest,
    Verdict,
    gradient_canary_scores,
    trainable_sizes,
    trainable_vector,
)

from .records import SiteRecords, reference_records, site_records
from .result import POOLED, AuditResult
from .run import FinishedRun, SiteClaim, load_final_model, load_run, site_index
from .scoring import (
    RecordScores,
    SiteScores,
    attack_site,
    canary_scores,
    canary_test,
    pooled_curves,
    score_records,
    score_site,
    secret_exposure,
    train_reference,
)

__all__ = ["Progress", "audit_run", "confidence_levels"]

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]


def confidence_levels(confidence: float, sites: int) -> tuple[float, float]:
    """(pooled, per site) confidence levels: 1 - beta/2 and 1 - beta/(2S) for S
    > 1 sites, so that all S + 1 tests together err with probability <= beta."""
    if sites <= 1:
        return confidence, confidence
    beta = 1 - confidence
    return 1 - beta / 2, 1 - beta / (2 * sites)


def audit_run(
    run_dir: Path, *, num_sites: int | None = None, progress: Progress | None = None
) -> AuditResult:
    """Run the configured attacks and canary tests on the finished run in
    ``run_dir``.

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
    reference_canaries: list[dict[str, RecordScores]] = []
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
            reference_canaries.append(
                {
                    n: score_records(ref, c.records, max_length=max_length)
                    for n in names
                    if (c := records[n].canaries) is not None
                }
            )

    say("scoring the canaries")
    scores = _canary_scores(run, final, records, reference_canaries)
    claims = {name: run.claim(name) for name in names}
    pooled_conf, site_conf = confidence_levels(run.audit.confidence, len(scores))
    tests = {
        name: _site_test(run, name, scores.get(name), claims[name], site_conf)
        for name in names
    }
    pooled = _pooled_test(run, scores, claims, pooled_conf)
    results = [
        attack_site(
            site=name,
            target=target[name],
            references=[r[name] for r in references],
            test=tests[name],
        )
        for name in names
    ]
    for r in results:
        if r.verdict is Verdict.VIOLATION:
            logger.error("%s: %s", r.site, r.test.explanation())
    curves = {
        s.site: {"phi": s.phi_attack, **({"lira": s.lira} if s.lira else {})}
        for s in results
    }
    curves[POOLED] = pooled_curves(target, references, names)
    exposure = None
    if run.audit.canary_kind is CanaryKind.SECRET and run.audit.canaries:
        say("ranking the secrets among sampled candidates (exposure)")
        exposure = secret_exposure(final, records, names, max_length=max_length)
    return AuditResult(
        run_dir=run_dir,
        summary=run.summary,
        audit=run.audit,
        sites=tuple(results),
        pooled_test=pooled,
        curves=curves,
        exposure=exposure,
    )


CanaryScores = dict[str, tuple[np.ndarray, tuple[bool, ...]]]


def _canary_scores(
    run: FinishedRun,
    final: LoadedModel,
    records: dict[str, SiteRecords],
    reference_canaries: Sequence[dict[str, RecordScores]],
) -> CanaryScores:
    """Per site with canaries: (scores, inclusion bits)."""
    out: CanaryScores = {}
    if run.audit.canaries == 0:
        return out
    if not run.audit.canary_kind.is_data:  # white-box: the weights moved
        initial = trainable_vector(load_model(run.client.model).model)
        moved = trainable_vector(final.model)
        every = {
            k: run.scenario.gradient_canaries(
                k, run.num_partitions, clip_norm=run.client.dp.max_grad_norm
            )
            for k in range(run.num_partitions)
        }
        coords = {k: c.coordinates(initial.size) for k, c in every.items() if c}
        everywhere = np.concatenate(list(coords.values()))  # every site's canaries
        sizes = trainable_sizes(final.model)
        for name in run.sites:
            k = site_index(name)
            canaries = every[k]
            assert canaries is not None  # audit.canaries > 0, kind gradient
            out[name] = (
                gradient_canary_scores(
                    initial, moved, coords[k], sizes=sizes, planted=everywhere
                ),
                canaries.included,
            )
        return out
    max_length = run.client.model.max_length
    for name in run.sites:
        planted = records[name].canaries
        if planted is None:
            continue
        under_final = score_records(final, planted.records, max_length=max_length)
        refs = [r[name] for r in reference_canaries]
        out[name] = (canary_scores(under_final, refs), planted.included)
    return out


def _site_test(
    run: FinishedRun,
    name: str,
    scored: tuple[np.ndarray, tuple[bool, ...]] | None,
    claim: SiteClaim,
    confidence: float,
) -> CanaryTest:
    if scored is None:
        return CanaryTest(
            scope=name,
            canaries=None,
            claimed_epsilon=claim.epsilon,
            delta=claim.delta,
        )
    scores, included = scored
    return canary_test(
        scope=name,
        scores=scores,
        included=included,
        audit=run.audit,
        claimed_epsilon=claim.epsilon,
        delta=claim.delta,
        confidence=confidence,
    )


def _pooled_test(
    run: FinishedRun,
    scores: CanaryScores,
    claims: dict[str, SiteClaim],
    confidence: float,
) -> CanaryTest:
    """Every site's canaries in one test against the largest claim (the sites
    with a sample-level DP claim; all sites when none has one)."""
    claimed = [n for n in scores if not math.isinf(claims[n].epsilon)]
    pool = claimed or list(scores)
    if not pool:
        return CanaryTest(
            scope=POOLED,
            canaries=None,
            claimed_epsilon=max(c.epsilon for c in claims.values()),
            delta=max(c.delta for c in claims.values()),
        )
    return canary_test(
        scope=POOLED,
        scores=np.concatenate([scores[n][0] for n in pool]),
        included=tuple(b for n in pool for b in scores[n][1]),
        audit=run.audit,
        claimed_epsilon=max(claims[n].epsilon for n in pool),
        delta=max(claims[n].delta for n in pool),
        confidence=confidence,
    )
