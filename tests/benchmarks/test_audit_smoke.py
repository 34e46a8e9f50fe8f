"""benchmarks/audit.py end to end on a tiny random BERT (``--quick``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocess_env import subprocess_env

pytestmark = pytest.mark.slow  # a whole run (make test-fast skips it)

REPO = Path(__file__).resolve().parents[2]


def test_audit_benchmark_catches_the_broken_run_on_a_tiny_model(
    tmp_path: Path,
) -> None:
    """All three runs through the real CLI: the control finds its canaries, the
    honest DP run stays within its claim, and the run whose DP-SGD adds a quarter
    of the noise it reports (the sitecustomize hook, active in its processes
    only: the benchmark checks its marker) is a violation."""
    out = tmp_path / "audit.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "audit.py"), "--quick"]
    cmd += ["--out", str(out), "--work", str(tmp_path / "runs")]
    env = subprocess_env()
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    headline = doc["headline"]
    assert set(doc["runs"]) == {"nondp", "dp", "broken"}
    runs = doc["runs"]
    assert runs["nondp"]["verdict"] == "not tested"
    assert runs["nondp"]["exit_code"] == 5
    assert 1.9 < headline["dp_claimed_eps"] <= 2.0  # the target, to the search's 0.01
    assert headline["nondp_eps_lb"] > 3.0
    assert headline["dp_verdict"] == "consistent" and runs["dp"]["exit_code"] == 0
    assert 0 <= headline["dp_eps_lb"] <= 2.0 < headline["ceiling"]
    assert headline["broken_detected"] is True and runs["broken"]["exit_code"] == 3
    assert headline["broken_eps_lb"] > 2.0
    assert (tmp_path / "runs" / "broken.weakened").read_text()
    assert not (tmp_path / "runs" / "dp.weakened").exists()
