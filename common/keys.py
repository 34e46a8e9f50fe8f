"""How a run-config key is declared and checked: :class:`Key` (name, type, default,
check, one-line doc) and the checks a key may carry.

The declarations themselves are :data:`fedshield.common.run_keys.KEYS`; a run config
is parsed against them by :class:`fedshield.common.run_config.RunConfig`.
"""

from __future__ import annotations

import codecs
import difflib
import math
from dataclasses import dataclass
from typing import Any

from .config import ConfigError

__all__ = [
    "AT_LEAST_1",
    "NAMES",
    "NON_EMPTY",
    "TEXT_ENCODING",
    "NON_NEGATIVE",
    "NUMBER",
    "OPEN_UNIT",
    "POSITIVE",
    "UNIT",
    "Key",
    "Names",
    "NonEmpty",
    "OneOf",
    "Range",
    "TextEncoding",
]

NUMBER = (int, float)  # an int or a float, kept as given (e.g. secagg.threshold)
Kind = type | tuple[type, ...]


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (``<`` where open); ``None`` = unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value: Any) -> str | None:
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int beyond float's range
            finite = False
        if not finite:
            return "must be a finite number"
        low_bad = self.lo is not None and (
            value <= self.lo if self.lo_open else value < self.lo
        )
        high_bad = self.hi is not None and (
            value >= self.hi if self.hi_open else value > self.hi
        )
        if not (low_bad or high_bad):
            return None
        if self.hi is None:
            return f"must be {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"must be {'<' if self.hi_open else '<='} {self.hi:g}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"must be in {left}{self.lo:g}, {self.hi:g}{right}"


@dataclass(frozen=True)
class OneOf:
    """One of the listed strings (an enum's values)."""

    values: tuple[str, ...]

    def __init__(self, *values: str) -> None:
        object.__setattr__(self, "values", values)

    def problem(self, value: Any) -> str | None:
        if value in self.values:
            return None
        close = difflib.get_close_matches(str(value), self.values, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"must be one of {', '.join(map(repr, self.values))}{hint}"


@dataclass(frozen=True)
class Names:
    """A comma-separated list of non-empty names."""

    def problem(self, value: Any) -> str | None:
        parts = [p.strip() for p in str(value).split(",")]
        if not value or not all(parts):
            return "must be a comma-separated list of non-empty names"
        return None


@dataclass(frozen=True)
class NonEmpty:
    def problem(self, value: Any) -> str | None:
        return None if str(value).strip() else "must not be empty"


@dataclass(frozen=True)
class TextEncoding:
    """A text codec Python knows (``utf-8``, ``cp1252``, ``latin-1``, ...)."""

    def problem(self, value: Any) -> str | None:
        try:
            info = codecs.lookup(str(value))
        except LookupError:
            return "must be a text encoding Python knows, such as 'utf-8' or 'cp1252'"
        if not getattr(info, "_is_text_encoding", True):
            return f"must be a text encoding; {value!r} is a bytes-to-bytes codec"
        return None


Check = Range | OneOf | Names | NonEmpty | TextEncoding
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, lo_open=True)
UNIT = Range(0.0, 1.0)
OPEN_UNIT = Range(0.0, 1.0, lo_open=True, hi_open=True)
NAMES = Names()
NON_EMPTY = NonEmpty()
TEXT_ENCODING = TextEncoding()


@dataclass(frozen=True, kw_only=True)
class Key:
    """One run-config key."""

    name: str
    kind: Kind
    default: Any
    doc: str
    check: Check | None = None

    def parse(self, value: Any) -> Any:
        """``value`` checked to be of this key's type and to pass its check."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and int not in kinds and isinstance(value, int):
            try:
                value, ok = float(value), True
            except OverflowError:
                raise ConfigError(
                    f"`{self.name}` must be a finite number. Found an integer of "
                    f"{len(str(value))} digits."
                ) from None
        else:
            ok = isinstance(value, kinds)
        if not ok:
            expected = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(
                f"`{self.name}` must be of type {expected}. Found {value!r} "
                f"({type(value).__name__}). {self.doc}."
            )
        problem = None if self.check is None else self.check.problem(value)
        if problem is not None:
            raise ConfigError(f"`{self.name}` {problem}. Found {value!r}.")
        return value
