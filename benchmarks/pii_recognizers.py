"""Each PII recognizer's precision, measured: Presidio's full predefined pattern set
(:mod:`privacy.pii.presidio_set`, dropped ones included) and fedshield's own
(:mod:`privacy.pii.recognizers`, :mod:`privacy.pii.identifiers`,
:mod:`privacy.pii.names`), one analyzer run, every finding attributed to the
recognizer that made it.

Run (about 4 minutes on 2 cores; writes benchmarks/results/pii_recognizers.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/pii_recognizers.py

Corpora (none of them the hand-written test set, ``pii_handwritten.jsonl``, which
is reported by ``benchmarks/pii.py`` and never used to choose recognizers):

- labelled: ``--sentences`` presidio-evaluator sentences (seed ``--seed``, default
  1, not the reported seed 2026) and the PII sentences of the development set
  ``benchmarks/pii_dev.jsonl``;
- reviews: ``--reviews`` Rotten Tomatoes snippets (the packaged data: film
  reviews, where an identifier of any kind is a false positive; they name actors,
  directors and places, so they are not clean for recognizers of names,
  organisations and places: :data:`NAMED`);
- hard negatives: the clean sentences of the development set (durations,
  versions, dosages, prices, product codes, eponyms), clean for every recognizer.

Per recognizer, at the scrubber's threshold (``pii.score-threshold``, after
Presidio's context enhancement) and at any score: findings, tokens found, the
share of them inside gold PII of any type (``precision``) (findings the scrubber
drops after the analyzer, vague dates and the NER's noise, are not counted),
``review_rate``, the
share of review snippets it changes (recognizers of identifiers only), and
``hard_negatives``, how many hard negatives it changes. A recognizer is
``flagged`` (a reason to drop it, :data:`privacy.pii.presidio_set.DROPPED`) when
at the threshold its precision is below ``MIN_PRECISION`` over at least
``MIN_TOKENS`` tokens, its review rate is above ``MAX_REVIEW_RATE``, or it
changes more than ``MAX_HARD_NEGATIVES`` hard negatives.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from fedshield.privacy.pii import PIIConfig  # noqa: E402
from fedshield.privacy.pii.analyzer import analyzer_for, dropped  # noqa: E402
from fedshield.privacy.pii.presidio_set import (  # noqa: E402
    DROPPED,
    family_of,
    presidio_recognizers,
)

MIN_PRECISION = 0.5
MIN_TOKENS = 10
MAX_REVIEW_RATE = 0.005
MAX_HARD_NEGATIVES = 1
NAMED = frozenset({"PERSON", "LOCATION", "ORGANIZATION", "NRP", "DATE_TIME", "AGE"})
DEV = ROOT / "benchmarks" / "pii_dev.jsonl"
_TOKEN = re.compile(r"\w+")


def _tokens(text: str, start: int, end: int) -> list[tuple[int, int]]:
    return [m.span() for m in _TOKEN.finditer(text, start, end)]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from pii import handwritten_set, labelled_set  # benchmarks/pii.py

    from fedshield.simulations.datasets import rotten_tomatoes

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reviews", type=int, default=3000)
    parser.add_argument("--dev", type=Path, default=DEV)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/pii_recognizers.json"
    )
    args = parser.parse_args(argv)
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    config = PIIConfig()
    labelled = list(labelled_set(args.sentences, args.seed))
    reviews = list(rotten_tomatoes().texts[: args.reviews])
    hard: list[str] = []
    if args.dev.is_file():
        dev = handwritten_set(args.dev)
        labelled += dev.sentences
        hard = dev.clean
    engine = analyzer_for(config, extra=tuple(presidio_recognizers(dropped=True)))
    entities = sorted(
        {e for r in engine.registry.recognizers for e in r.supported_entities}
    )
    stats: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "entities": set(),
            "any_score": defaultdict(int),
            "at_threshold": defaultdict(int),
        }
    )

    def tally(
        texts: Sequence[str],
        gold: Sequence[set[tuple[int, int]]] | None,
        corpus: str = "labelled",
    ) -> None:
        artifacts = engine.nlp_engine.process_batch(texts, language="en", batch_size=64)
        for i, (text, nlp) in enumerate(artifacts):
            results = engine.analyze(
                text=text, language="en", entities=entities, nlp_artifacts=nlp
            )
            seen: dict[str, set[str]] = defaultdict(set)
            for r in results:
                name = (r.recognition_metadata or {}).get("recognizer_name", "?")
                if dropped(text, r, family_of(r.entity_type)):
                    continue
                entry = stats[name]
                entry["entities"].add(r.entity_type)
                spans = _tokens(text, r.start, r.end)
                levels = ["any_score"]
                if r.score >= config.score_threshold:
                    levels.append("at_threshold")
                for level in levels:
                    counts = entry[level]
                    counts["findings"] += 1
                    if gold is None:
                        seen[level].add(name)
                    else:
                        counts["tokens"] += len(spans)
                        counts["gold_tokens"] += sum(s in gold[i] for s in spans)
            for level, names in seen.items():
                for name in names:
                    stats[name][level][corpus] += 1

    gold = [
        {t for s in x.spans for t in _tokens(x.text, s.start, s.end)} for x in labelled
    ]
    tally([x.text for x in labelled], gold)
    tally(reviews, None, "reviews")
    tally(hard, None, "hard_negatives")
    report: dict[str, Any] = {}
    for name, entry in sorted(stats.items()):
        row: dict[str, Any] = {"entities": sorted(entry["entities"])}
        named = bool(entry["entities"] & NAMED)
        for level in ("any_score", "at_threshold"):
            c = entry[level]
            row[level] = {
                "findings": c["findings"],
                "tokens": c["tokens"],
                "precision": round(c["gold_tokens"] / c["tokens"], 4)
                if c["tokens"]
                else None,
                "review_rate": None
                if named
                else round(c["reviews"] / max(len(reviews), 1), 5),
                "hard_negatives": c["hard_negatives"],
            }
        at = row["at_threshold"]
        reasons = []
        if at["tokens"] >= MIN_TOKENS and at["precision"] < MIN_PRECISION:
            reasons.append(f"precision {at['precision']} over {at['tokens']} tokens")
        if not named and at["review_rate"] > MAX_REVIEW_RATE:
            reasons.append(f"changes {at['review_rate']:.2%} of review snippets")
        if at["hard_negatives"] > MAX_HARD_NEGATIVES:
            reasons.append(
                f"changes {at['hard_negatives']} of {len(hard)} hard negatives"
            )
        row["flagged"] = "; ".join(reasons) or None
        row["dropped"] = name in DROPPED
        report[name] = row
    doc = {
        "headline": {
            "recognizers": len(report),
            "flagged": sorted(n for n, r in report.items() if r["flagged"]),
            "dropped": sorted(DROPPED),
        },
        "config": {
            "labelled_sentences": len(labelled),
            "review_snippets": len(reviews),
            "hard_negatives": len(hard),
            "seed": args.seed,
            "dev_set": str(args.dev.relative_to(ROOT)) if args.dev.is_file() else None,
            "threshold": config.score_threshold,
            "rule": {
                "min_precision": MIN_PRECISION,
                "min_tokens": MIN_TOKENS,
                "max_review_rate": MAX_REVIEW_RATE,
                "max_hard_negatives": MAX_HARD_NEGATIVES,
            },
        },
        "recognizers": report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for name, row in report.items():
        at = row["at_threshold"]
        print(
            f"{name:40s} {at['findings']:5d} p={at['precision']} "
            f"reviews={at['review_rate']} hard={at['hard_negatives']} "
            f"any={row['any_score']['findings']}"
            + (f"  FLAG {row['flagged']}" if row["flagged"] else "")
        )
    return doc


if __name__ == "__main__":
    main()
