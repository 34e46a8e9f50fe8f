"""What the benchmarks that run ``fedshield simulate`` share: reading a run's
summary, continuing a stopped run, and refusing a work folder made with other
settings (``utility.py``, ``robustness.py``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["same_settings", "summary_of", "to_resume"]


def summary_of(out: Path) -> dict[str, Any] | None:
    """The run's summary.json, or None when there is none (yet)."""
    try:
        return json.loads((out / "summary.json").read_text())  # type: ignore[no-any-return]
    except (OSError, json.JSONDecodeError):
        return None


def to_resume(out: Path) -> bool:
    """Before (re)running into ``out``: True when it holds a checkpoint to resume
    from; a folder stopped before its first checkpoint is moved aside
    (``<name>.stopped-<ns>``), never deleted."""
    resume = (out / "checkpoint.pt").exists()
    if out.exists() and not resume:
        out.rename(out.with_name(f"{out.name}.stopped-{time.time_ns()}"))
    return resume


def same_settings(work: Path, settings: dict[str, Any]) -> None:
    """A work folder is reused only with the settings it was made with."""
    path = work / "settings.json"
    if path.exists() and json.loads(path.read_text()) != settings:
        raise SystemExit(
            f"{work} holds runs made with other settings "
            f"({path.read_text().strip()}); its runs would not compare with "
            f"these ({settings}). Choose another --work."
        )
    path.write_text(json.dumps(settings))
