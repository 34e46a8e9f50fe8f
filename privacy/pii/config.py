"""``pii.*`` run-config keys, parsed once, and the entity types scrubbed by default
(what each :class:`PIIMode` replaces a finding with: :mod:`.scrubber`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from fedshield.common.config import ConfigError
from fedshield.common.run_config import check_fields, default, read_fields

__all__ = [
    "DEFAULT_ENTITIES",
    "DEFAULT_SPACY_MODEL",
    "IDENTIFIER_ENTITIES",
    "STRUCTURED_ENTITIES",
    "PIIConfig",
    "PIIError",
    "PIIMode",
]

DEFAULT_SPACY_MODEL: str = default("pii.spacy-model")
DEFAULT_ENTITIES = tuple(default("pii.entities").split(","))
# identifiers with a fixed format, held to recall >= 0.98 (benchmarks/pii.py)
STRUCTURED_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
)

# identifiers a validated format or a context word makes certain: they take
# precedence over an overlapping finding of the NER or a phone pattern
IDENTIFIER_ENTITIES = (
    "MEDICAL_RECORD_NUMBER",
    "PASSPORT",
    "DRIVER_LICENSE",
    "NATIONAL_ID",
    "EMPLOYEE_ID",
    "MAC_ADDRESS",
)


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
        patterns: the site's own patterns (:class:`.site_patterns.SitePattern`),
            never set by a run config: the site's policy adds them
            (node config ``pii-patterns``).
    """

    mode: PIIMode = PIIMode(default("pii.mode"))
    spacy_model: str = DEFAULT_SPACY_MODEL
    entities: tuple[str, ...] = DEFAULT_ENTITIES
    score_threshold: float = default("pii.score-threshold")
    # a site's own patterns (.site_patterns.SitePattern), added by its policy
    patterns: tuple[Any, ...] = ()

    KEYS: ClassVar[dict[str, str]] = {
        "mode": "pii.mode",
        "spacy_model": "pii.spacy-model",
        "score_threshold": "pii.score-threshold",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)
        if not self.entities or not all(
            re.fullmatch(r"[A-Z_]+", e) for e in self.entities
        ):
            raise ConfigError(
                "`pii.entities` must be a comma-separated list of entity types such "
                f"as PERSON,EMAIL_ADDRESS. Found {','.join(self.entities)!r}."
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> PIIConfig:
        return cls(
            **read_fields(
                run_config,
                {**cls.KEYS, "entities": "pii.entities"},
                convert={
                    "mode": PIIMode,
                    "entities": lambda v: tuple(
                        e.strip() for e in v.split(",") if e.strip()
                    ),
                },
            )
        )
