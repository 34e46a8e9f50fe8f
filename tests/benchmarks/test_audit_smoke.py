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


def test_audit_benchmark_writes_both_runs_and_the_headline(tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "audit.py"), "--quick"]
    cmd += ["--out", str(out), "--work", str(tmp_path / "runs")]
    env = subprocess_env()
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    headline = doc["headline"]
    assert set(headline) == {
        "nondp_auc",
        "nondp_tpr_at_1pct_fpr",
        "nondp_empirical_eps",
        "dp_auc",
        "dp_empirical_eps",
        "dp_claimed_eps",
    }
    assert set(doc["runs"]) == {"nondp", "dp"}
    assert 0 <= headline["nondp_auc"] <= 1 and 0 <= headline["dp_auc"] <= 1
    assert headline["dp_claimed_eps"] > 0
    assert 0 <= headline["dp_empirical_eps"] <= headline["dp_claimed_eps"]
    assert all(s["claimed_epsilon"] == "inf" for s in doc["runs"]["nondp"]["sites"])
