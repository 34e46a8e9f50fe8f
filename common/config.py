"""Run-config errors and the typed reading of one key.

``context.run_config`` (Flower) and ``context.node_config`` are flat dicts of
kebab-case keys in dotted groups (``dp.noise-multiplier``) with bool, int, float or
str values. Every package reads them through :func:`require` and
:func:`parse_enum`, so that every mistake is reported the same way: the key, what
was expected, what was found, and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

__all__ = ["ConfigError", "parse_enum", "require"]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def require(run_config: Mapping[str, Any], key: str, kind: type) -> Any:
    """Return ``run_config[key]`` checked to be of ``kind`` (int accepted for float).

    Raises:
        ConfigError: naming the key, the expected type and the value found.
    """
    if key not in run_config:
        raise ConfigError(
            f"Run config key `{key}` is missing. Add it to [tool.flwr.app.config] "
            f'in pyproject.toml or pass it with --run-config "{key}=...".'
        )
    value = run_config[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"`{key}` must be an integer. Found {value!r}.")
    if not isinstance(value, kind):
        raise ConfigError(
            f"`{key}` must be of type {kind.__name__}. Found {value!r} "
            f"({type(value).__name__})."
        )
    return value


def parse_enum(enum: type[Enum], key: str, value: str) -> Any:
    """Map a kebab-case string to an enum member, or say which values exist."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)  # type: ignore[attr-defined]
        raise ConfigError(
            f"`{key}` must be one of {allowed}. Found {value!r}."
        ) from None
