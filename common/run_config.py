"""The run config, parsed once at each app's boundary.

The run config (``[tool.flwr.app.config]`` in pyproject.toml, overridden with
``--run-config``) is what the coordinator submits and every process of a run sees as
``context.run_config``. :meth:`RunConfig.parse`:

- refuses an unknown key with a did-you-mean suggestion (a misspelt
  ``dp.noise-multipler`` must never run with the default noise, silently);
- fills a missing key with its declared default (:data:`run_keys.KEYS`);
- checks each value's type and range against its declaration.

The apps' frozen configs (``ModelConfig``, ``DPConfig``, ...) are built from the
parsed values.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .config import ConfigError
from .keys import Key
from .run_keys import KEYS

__all__ = [
    "RunConfig",
    "check",
    "check_fields",
    "default",
    "read_fields",
    "reference_table",
]

_BY_NAME = {k.name: k for k in KEYS}


def _key(name: str) -> Key:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a declared run-config key") from None


def default(name: str) -> Any:
    """The declared default of key ``name``."""
    return _key(name).default


def check(name: str, value: Any) -> Any:
    """``value`` for key ``name``, type- and range-checked (raises ConfigError)."""
    return _key(name).parse(value)


def check_fields(obj: object, keys: Mapping[str, str]) -> None:
    """Check each field of ``obj`` named in ``keys`` (field -> run-config key)
    against that key's declaration: a config built in code is checked like one
    parsed from a run config, by the same code."""
    for field, name in keys.items():
        check(name, getattr(obj, field))


def read_fields(
    run_config: Mapping[str, Any],
    keys: Mapping[str, str],
    convert: Mapping[str, Callable[[Any], Any]] | None = None,
) -> dict[str, Any]:
    """``{field: value}`` of the keys ``keys`` (field -> run-config key) in the
    parsed ``run_config``, passed through ``convert[field]`` where given (an enum,
    a comma-separated list)."""
    run = RunConfig.parse(run_config)
    convert = convert or {}
    return {
        field: convert[field](run[name]) if field in convert else run[name]
        for field, name in keys.items()
    }


def _unknown(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(_BY_NAME), n=1, cutoff=0.7)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    return ConfigError(
        f"Unknown run config key `{name}`.{hint} The keys are listed in the README's "
        "configuration reference (and [tool.flwr.app.config] in pyproject.toml)."
    )


class RunConfig(Mapping[str, Any]):
    """A run config parsed once: every declared key present, typed and checked."""

    __slots__ = ("_values",)

    def __init__(self, raw: Mapping[str, Any]) -> None:
        """Parse ``raw``: refuse unknown keys, fill in defaults, check every value."""
        for name in raw:
            if name not in _BY_NAME:
                raise _unknown(name)
        self._values = {
            k.name: k.parse(raw[k.name] if k.name in raw else k.default) for k in KEYS
        }

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> RunConfig:
        """``raw`` parsed (a RunConfig is returned as it is: it was checked when
        it was made, and it cannot change)."""
        return raw if isinstance(raw, RunConfig) else cls(raw)

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            raise _unknown(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"RunConfig({self._values!r})"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value).replace("e-0", "e-")  # 1e-05 -> 1e-5, as TOML writes it


def reference_table() -> str:
    """The README's configuration reference, as generated from :data:`KEYS`."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k.name}` | `{_shown(k.default)}` | {k.doc} |" for k in KEYS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_table())
