"""A Presidio recognizer made of regular expressions, and the validators its
patterns use.

A match of a pattern reports the span of its ``pii`` group when it has one (the
whole match otherwise), so context ("my name is", "aged") helps find a value
without being replaced with it. Trailing spaces, commas and line breaks are trimmed
off the span, and a ``validate`` function may reject the value (a card number that
fails the Luhn check). The recognizers themselves are listed in :mod:`.recognizers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import regex
from presidio_analyzer import EntityRecognizer, RecognizerResult

__all__ = ["SpanPatternRecognizer", "digits_between", "luhn"]


def luhn(value: str) -> bool:
    """12-19 digits (separators ignored) that pass the Luhn checksum of card numbers."""
    digits = [int(c) for c in value if c.isdigit()]
    if not 12 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def digits_between(low: int, high: int) -> Callable[[str], bool]:
    """A validator: the value holds between ``low`` and ``high`` digits."""

    def check(value: str) -> bool:
        n = sum(c.isdigit() for c in value)
        return low <= n <= high

    return check


class SpanPatternRecognizer(EntityRecognizer):  # type: ignore[misc]
    """Regular expressions for one entity; a match reports its ``pii`` group's span
    (or the whole match) at the pattern's score, if ``validate`` accepts it."""

    def __init__(
        self,
        entity: str,
        name: str,
        patterns: Sequence[tuple[str, str, float]],
        *,
        flags: int = regex.MULTILINE,
        validate: Callable[[str], bool] | None = None,
    ) -> None:
        self._patterns = [(n, regex.compile(p, flags), s) for n, p, s in patterns]
        self._validate = validate
        self._name = name
        super().__init__(
            supported_entities=[entity], name=name, supported_language="en"
        )

    def load(self) -> None:  # nothing to load
        return None

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        entity = self.supported_entities[0]
        name, identifier = self._name, str(self.id)
        if entities and entity not in entities:
            return []
        found = []
        for pattern_name, pattern, score in self._patterns:
            group = "pii" if "pii" in pattern.groupindex else 0
            for match in pattern.finditer(text):
                start, end = match.span(group)
                value = text[start:end].rstrip(" ,\n")
                end = start + len(value)
                if end <= start or (self._validate and not self._validate(value)):
                    continue
                found.append(
                    RecognizerResult(
                        entity_type=entity,
                        start=start,
                        end=end,
                        score=score,
                        recognition_metadata={
                            RecognizerResult.RECOGNIZER_NAME_KEY: name,
                            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: identifier,
                            "pattern": pattern_name,
                        },
                    )
                )
        return found
