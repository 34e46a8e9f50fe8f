"""The environment for a script a test starts as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def subprocess_env() -> dict[str, str]:
    """``os.environ`` with the repository on ``PYTHONPATH`` (for ``benchmarks.*`` and
    ``tests.*``), after any ``PYTHONPATH`` already set, so that a test run from a
    mutant's copy (benchmarks/mutants.py) starts children on that copy too."""
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(REPO)])}


def fedshield_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """``python -m fedshield.cli ARGS`` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "fedshield.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
