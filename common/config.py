"""Configuration errors, and the parsing of an enum-valued setting.

Run-config keys are declared and checked in :mod:`.run_keys` / :mod:`.run_config`;
every mistake is reported as a :class:`ConfigError` naming the key, what was
expected, what was found, and what to do.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = ["ConfigError", "parse_enum"]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def parse_enum(enum: type[Enum], key: str, value: str) -> Any:
    """Map a kebab-case string to an enum member, or say which values exist."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)  # type: ignore[attr-defined]
        raise ConfigError(
            f"`{key}` must be one of {allowed}. Found {value!r}."
        ) from None
