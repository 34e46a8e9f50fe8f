"""Overlapping findings of different types: resolved so that a scrubber never leaves
part of a finding in the text (:func:`resolve_overlaps`), and counted once however
many pieces a finding was cut into (:func:`found_once`)."""

from __future__ import annotations

import re
from typing import Any

from .config import IDENTIFIER_ENTITIES, STRUCTURED_ENTITIES

__all__ = ["PIECE_OF", "found_once", "resolve_overlaps"]

_WORD = re.compile(r"\w")
PIECE_OF = "fedshield_piece_of"  # metadata of a piece: the span it was cut from


def resolve_overlaps(text: str, findings: list[Any]) -> list[Any]:
    """Non-overlapping findings that together cover every character of
    ``findings`` (a scrubber must not leave part of a finding in the text).

    Precedence, for the type a character gets: a structured type or an
    identifier announced by its context (``IDENTIFIER_ENTITIES``) first (their
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
        identifier = r.entity_type in IDENTIFIER_ENTITIES
        return (not (structured or identifier), -r.score, -(r.end - r.start), r.start)

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


def found_once(found: list[Any]) -> list[str]:
    """The entity type of each finding, a finding cut into pieces counted once."""
    origins = {
        (r.entity_type, (r.recognition_metadata or {}).get(PIECE_OF, (r.start, r.end)))
        for r in found
    }
    return [entity for entity, _ in origins]
