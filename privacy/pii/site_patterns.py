"""A site's own PII patterns: identifiers only it knows the shape of (employee,
ticket, case or account numbers), written by its operator in a TOML file:

.. code-block:: toml

    [[pattern]]
    entity = "EMPLOYEE_ID"              # upper-case type name of the tag
    regex = '\\bE-\\d{6}\\b'            # the ``regex`` module's syntax
    score = 0.9                         # optional (default 0.9)

    [[pattern]]
    entity = "CASE_NUMBER"
    # context that must precede the value: only the ``pii`` group is replaced
    regex = '(?i:case\\s*(?:no\\.?|number|#)?)\\s*:?\\s*(?P<pii>\\d{5,8})'

Every pattern is checked when the file is read: a regex that does not compile, or
that matches the empty string (it would tag every position), is refused with its
entry named. A site names its file in its node config (``pii-patterns``); the
site's patterns are added to whatever the run asks (a coordinator cannot remove
them), and their entity types are scrubbed even when the run's ``pii.entities``
leave them out (:meth:`client.policy.SitePolicy.pii_for`).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex

from .config import PIIError

__all__ = ["SitePattern", "read_patterns"]

_ENTITY = regex.compile(r"[A-Z][A-Z0-9_]{1,63}")
_KEYS = {"entity", "regex", "score"}


@dataclass(frozen=True)
class SitePattern:
    """One regular expression of a site, reported as ``entity`` at ``score``."""

    entity: str
    regex: str
    score: float = 0.9

    def recognizer(self) -> Any:
        from .pattern_recognizer import SpanPatternRecognizer

        digest = hashlib.sha256(self.regex.encode()).hexdigest()[:8]
        return SpanPatternRecognizer(
            self.entity,
            f"SitePattern-{self.entity}-{digest}",
            [(self.entity.lower(), self.regex, self.score)],
        )


def _problem(path: Path, where: str, found: str, todo: str) -> PIIError:
    return PIIError(f"{path}: {where}: {found}. {todo}")


def read_patterns(path: Path) -> tuple[SitePattern, ...]:
    """The ``[[pattern]]`` entries of the TOML file ``path``, checked."""
    path = Path(path).expanduser()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PIIError(
            f"The site's PII patterns file {path} does not exist. Create it (a TOML "
            "file of [[pattern]] entries with entity and regex) or remove the "
            "pii-patterns setting."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise PIIError(
            f"The site's PII patterns file {path} could not be read ({err}). Check "
            "that it is a readable UTF-8 file."
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise PIIError(
            f"{path} is not valid TOML ({err}). Expected [[pattern]] entries with "
            "entity and regex; single quotes keep backslashes as they are."
        ) from None
    entries = raw.get("pattern")
    extra = sorted(set(raw) - {"pattern"})
    if not isinstance(entries, list) or not entries or extra:
        found = f"top-level keys {sorted(raw)}" if raw else "nothing"
        raise _problem(
            path, "expected one or more [[pattern]] tables and nothing else",
            f"found {found}", "See docs/pii.md for the format.",
        )  # fmt: skip
    patterns = []
    for n, entry in enumerate(entries, 1):
        where = f"[[pattern]] #{n}"
        if not isinstance(entry, dict) or not {"entity", "regex"} <= set(entry):
            raise _problem(path, where, "entity or regex is missing",
                           "Give each pattern an entity and a regex.")  # fmt: skip
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise _problem(path, where, f"unknown keys {unknown}",
                           f"A pattern takes {', '.join(sorted(_KEYS))}.")  # fmt: skip
        entity, expression = entry["entity"], entry["regex"]
        if not isinstance(entity, str) or not _ENTITY.fullmatch(entity):
            raise _problem(path, where, f"entity {entity!r} is not an upper-case "
                           "type name", 'Use a name such as "EMPLOYEE_ID".')  # noqa: E501  # fmt: skip
        score = entry.get("score", 0.9)
        if (
            isinstance(score, bool)
            or not isinstance(score, int | float)
            or not (0 < score <= 1)
        ):
            raise _problem(path, where, f"score {score!r} is not in (0, 1]",
                           "Leave it out for 0.9.")  # fmt: skip
        if not isinstance(expression, str) or not expression:
            raise _problem(path, where, "regex is empty", "Write the pattern.")
        try:
            compiled = regex.compile(expression)
        except regex.error as err:
            raise _problem(path, where, f"regex {expression!r} does not compile "
                           f"({err})", "Fix the expression (the `regex` module's "
                           "syntax; in TOML, single quotes keep backslashes).") from None  # noqa: E501  # fmt: skip
        if compiled.fullmatch(""):
            raise _problem(path, where, f"regex {expression!r} matches the empty "
                           "string", "Make it match at least one character.")  # noqa: E501  # fmt: skip
        patterns.append(
            SitePattern(entity=entity, regex=expression, score=float(score))
        )
    return tuple(patterns)
