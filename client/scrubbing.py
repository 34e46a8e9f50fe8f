"""Scrub a site's text before it is ever tokenized, once per dataset version.

The scrubbed copy is cached in the site's state directory under a key made of the
*raw* data's fingerprint, the PII settings and (for pseudonyms) the site key's
digest, so a later round or run reuses it and any change to the data or settings
scrubs afresh. The cache holds only scrubbed text and per-entity counts; the
site's own files are never modified. The ledger's dataset fingerprint is taken over
the raw records, before scrubbing, so that no PII setting changes a budget's scope.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from fedshield.common.storage import atomic_write_json
from fedshield.models.texts import LabeledTexts
from fedshield.privacy.fingerprint import dataset_fingerprint
from fedshield.privacy.pii import PIIConfig, PIIMode, Scrubber, load_site_key
from fedshield.privacy.pii.analyzer import recognizers_version

from .site import SiteData

__all__ = ["ScrubbedSite", "scrub_site"]

logger = logging.getLogger(__name__)

CACHE_DIR = "pii-cache"


@dataclass(frozen=True)
class ScrubbedSite:
    site: SiteData
    counts: dict[str, int]  # findings per entity type in the training data
    cached: bool


def _cache_key(site: SiteData, cfg: PIIConfig, key: bytes) -> str:
    parts = {
        "train": dataset_fingerprint(site.train.texts),
        "eval": dataset_fingerprint(site.eval.texts) if site.eval is not None else "",
        "mode": cfg.mode.value,
        "model": cfg.spacy_model,
        "entities": list(cfg.entities),
        "threshold": cfg.score_threshold,
        "patterns": [[p.entity, p.regex, p.score] for p in cfg.patterns],
        "recognizers": recognizers_version(),
        "key": hashlib.sha256(key).hexdigest() if key else "",
    }
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def scrub_site(site: SiteData, *, cfg: PIIConfig, state_dir: Path) -> ScrubbedSite:
    """``site`` with PII replaced in its training and evaluation texts."""
    if cfg.mode is PIIMode.OFF:
        return ScrubbedSite(site=site, counts={}, cached=False)
    key = load_site_key(state_dir) if cfg.mode is PIIMode.PSEUDONYM else b""
    path = state_dir / CACHE_DIR / f"{_cache_key(site, cfg, key)}.json"
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            train = tuple(doc["train"])
            held = tuple(doc["eval"]) if doc["eval"] is not None else None
            if len(train) == len(site.train) and (
                held is None or site.eval is None or len(held) == len(site.eval)
            ):
                return ScrubbedSite(
                    site=_with_texts(site, train, held),
                    counts={k: int(v) for k, v in doc["counts"].items()},
                    cached=True,
                )
        except (OSError, ValueError, KeyError, TypeError):
            pass
        logger.warning("Scrub cache %s is unreadable; scrubbing again", path)
    scrubber = Scrubber(cfg, key=key)
    train = tuple(scrubber.scrub_many(site.train.texts))
    train_counts = Counter(scrubber.counts)
    held = (
        tuple(scrubber.scrub_many(site.eval.texts)) if site.eval is not None else None
    )
    counts = dict(sorted(train_counts.items()))
    atomic_write_json(
        path,
        {"train": list(train), "eval": list(held) if held else None, "counts": counts},
    )
    logger.info("%s: scrubbed %d texts: %s", site.name, len(train), counts)
    return ScrubbedSite(
        site=_with_texts(site, train, held), counts=counts, cached=False
    )


def _with_texts(
    site: SiteData, train: tuple[str, ...], held: tuple[str, ...] | None
) -> SiteData:
    return replace(
        site,
        train=LabeledTexts(texts=train, labels=site.train.labels),
        eval=LabeledTexts(texts=held, labels=site.eval.labels)
        if site.eval is not None and held is not None
        else site.eval,
    )
