"""The scrubber: find PII with the offline analyzer (:mod:`.analyzer`) and replace
each finding according to the mode, counting findings per entity type (never their
values).

Modes (:class:`~.config.PIIMode`):
    tag        "John Smith" -> "<PERSON>"
    mask       "John Smith" -> "**********"
    pseudonym  "John Smith" -> a realistic surrogate ("Allison Hill") picked by
               Faker seeded with HMAC-SHA256(site key, entity type + normalised
               value): the same person maps to the same surrogate everywhere in a
               site's data, different sites (keys) map differently, and nothing can
               be reversed without the site's key (:func:`load_site_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedshield.common.sealing import read_secret, write_secret

from . import analyzer
from .config import PIIConfig, PIIError, PIIMode
from .overlaps import found_once

__all__ = ["KEY_NAME", "Scrubber", "load_site_key"]

KEY_NAME = "pii_key"


def load_site_key(state_dir: Path) -> bytes:
    """The site's 32-byte pseudonym key (``<state_dir>/pii_key``, mode 0600, sealed
    with the site's passphrase when it set one), created on first use. Losing it
    changes every surrogate; leaking it lets anyone test guesses of original
    values."""
    path = Path(state_dir) / KEY_NAME
    key = read_secret(
        path, error=PIIError, why="anyone with it can test guesses of original values"
    )
    if key is None:
        key = os.urandom(32)
        write_secret(path, key, error=PIIError)
    if len(key) != 32:
        raise PIIError(f"{path} is not a 32-byte key; restore it from a backup.")
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
    "PASSPORT": "passport_number",
    "POSTCODE": "postcode",
    "MAC_ADDRESS": "mac_address",
    "USERNAME": "user_name",
    "VEHICLE_REGISTRATION": "license_plate",
    "BANK_ACCOUNT": "bban",
}


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
        :func:`.overlaps.resolve_overlaps`, which never leaves found text in place."""
        return next(self.find_many([text], batch_size=1))

    def find_many(
        self, texts: Iterable[str], batch_size: int = 64
    ) -> Iterator[list[Any]]:
        """:meth:`find` for each of ``texts``, in order, lazily
        (:func:`.analyzer.find_many`: the NER runs over ``batch_size`` texts at a
        time)."""
        return analyzer.find_many(self.config, texts, batch_size=batch_size)

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
            self.counts.update(found_once(found))
            yield str(result.text)
