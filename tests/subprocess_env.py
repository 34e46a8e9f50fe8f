"""The environment for a script a test starts as a subprocess."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def subprocess_env() -> dict[str, str]:
    """``os.environ`` with the repository on ``PYTHONPATH`` (for ``benchmarks.*`` and
    ``tests.*``), after any ``PYTHONPATH`` already set, so that a test run from a
    mutant's copy (benchmarks/mutants.py) starts children on that copy too."""
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(REPO)])}
