"""The records the audit scores, regenerated from a finished run's config and seed.

For each simulated site (:func:`site_records`):

- members: the site's training records as training saw them (scrubbed, canaries
  left out);
- non-members: the site's evaluation share, drawn from the same distribution
  (same PII injection and scrubbing) and never trained on;
- its canaries (``audit.canaries``), scrubbed with the site's own scrubber
  (``secret`` canaries, added after scrubbing, as they are), and which of them
  were included in training.

For LiRA's reference models (:func:`reference_records`): population records no
site holds and no canary comes from, scrubbed as a site would scrub them.

Regeneration reads the sites' scrub caches under the run directory, scrubbing
again into the cache only if one is missing, so the audit needs no file a site
would not keep.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedshield.client.config import ClientConfig
from fedshield.client.scrubbing import scrub_site
from fedshield.client.site import SiteData
from fedshield.common.config import ConfigError
from fedshield.models.texts import LabeledTexts
from fedshield.privacy.pii import PIIMode, Scrubber

from .run import AuditError, FinishedRun, site_index

__all__ = ["PlantedCanaries", "SiteRecords", "reference_records", "site_records"]


@dataclass(frozen=True, kw_only=True)
class PlantedCanaries:
    """A site's canaries as training saw them (scrubbed) and, per canary, whether
    it was included in the training data."""

    records: LabeledTexts
    included: tuple[bool, ...]
    values: tuple[int, ...] = ()  # secret canaries: their values (exposure)
    repeated: tuple[int, ...] = ()  # secrets always trained on, ``repeats`` times
    repeats: int = 0


@dataclass(frozen=True, kw_only=True)
class SiteRecords:
    """One site's audited records: members, non-members, canaries (None when the
    run planted none)."""

    members: LabeledTexts
    non_members: LabeledTexts
    canaries: PlantedCanaries | None


def site_records(run: FinishedRun, name: str) -> SiteRecords:
    """Regenerate site ``name``'s records; refuse when its share does not match
    the number of records it reported training on."""
    k = site_index(name)
    try:
        train, held = run.scenario.site(k, run.num_partitions)
        canaries = run.scenario.canaries(k, run.num_partitions)
    except (ConfigError, ValueError) as err:
        raise AuditError(f"Regenerating {name}'s records: {err}") from err
    # included canaries are appended to the end of the site's training share,
    # before its scrubbing or, for ``secret`` ones, after it
    planted = sum(canaries.included) if canaries else 0
    if canaries is not None:  # repeated secrets: copies after the included ones
        planted += len(canaries.repeated) * canaries.repeats
    late = planted if canaries is not None and canaries.kind.after_scrubbing else 0
    trained = len(train) + late
    reported = run.site_summary(name).get("examples")
    if trained != int(reported if reported is not None else -1):
        raise AuditError(
            f"{name} trained on {reported} records, but regenerating its share for "
            f"{run.num_partitions} sites gives {trained}. Pass the run's number "
            "of sites (--sites N)."
        )
    site = scrub_site(
        SiteData(name=name, train=train, eval=held),
        cfg=run.client.pii,
        state_dir=run.state_dir(name),
    ).site
    assert site.eval is not None
    planted_canaries = None
    if canaries is not None:
        texts = canaries.texts
        if not canaries.kind.after_scrubbing:  # as the site's scrubber left them
            texts = tuple(_scrubber(run.client, run.state_dir(name)).scrub_many(texts))
        planted_canaries = PlantedCanaries(
            records=LabeledTexts(texts=texts, labels=canaries.labels),
            included=canaries.included,
            values=canaries.values,
            repeated=canaries.repeated,
            repeats=canaries.repeats,
        )
    return SiteRecords(
        members=site.train.subset(list(range(len(site.train) - (planted - late)))),
        non_members=site.eval,
        canaries=planted_canaries,
    )


def reference_records(run: FinishedRun) -> LabeledTexts:
    """Scrubbed population records for the reference models: 2 x
    ``audit.reference-examples`` of them, drawn with the run's seed (each
    reference model trains on ``audit.reference-examples`` of these; scrubbing
    the whole population would be slow)."""
    pool = run.scenario.reference_population(run.num_partitions)
    keep = np.random.default_rng(run.client.seed).permutation(len(pool))
    pool = pool.subset(sorted(keep[: 2 * run.audit.reference_examples].tolist()))
    return _scrubbed(pool, run.client)


def _scrubber(cfg: ClientConfig, state_dir: Path) -> Scrubber:
    from fedshield.privacy.pii import load_site_key

    if cfg.pii.mode is PIIMode.PSEUDONYM:
        return Scrubber(cfg.pii, key=load_site_key(state_dir))
    return Scrubber(cfg.pii)


def _scrubbed(data: LabeledTexts, cfg: ClientConfig) -> LabeledTexts:
    """Population text scrubbed as a site would (a throwaway pseudonym key: the
    reference models need the same kind of text, not the same surrogates)."""
    if cfg.pii.mode is PIIMode.OFF:
        return data
    key = secrets.token_bytes(32) if cfg.pii.mode is PIIMode.PSEUDONYM else b""
    texts = tuple(Scrubber(cfg.pii, key=key).scrub_many(data.texts))
    return LabeledTexts(texts=texts, labels=data.labels)
