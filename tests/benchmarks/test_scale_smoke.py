"""benchmarks/scale.py end to end at a small size (``--quick``): ours and Flower's
plain FedAvg, timed and memory-sampled in one invocation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocess_env import subprocess_env

pytestmark = pytest.mark.slow  # two whole simulations (make test-fast skips it)

REPO = Path(__file__).resolve().parents[2]


def test_scale_benchmark_times_both_simulations(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--quick"]
    cmd += ["--out", str(out), "--work", str(tmp_path / "runs")]
    done = subprocess.run(
        cmd,
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    head = doc["headline"]
    assert head["sites"] == 50 and head["sampled_per_round"] == 5
    assert doc["ours"]["sites_per_round"] == doc["flower"]["sites_per_round"] == [5, 5]
    assert head["ours_round_s"] > 0 and head["flower_round_s"] > 0
    assert head["ours_vs_flower_round"] == pytest.approx(
        head["ours_round_s"] / head["flower_round_s"], rel=0.01
    )
    assert 0 < head["peak_pss_gb"] <= head["peak_rss_gb"]
    assert head["flower_peak_rss_gb"] > 0
