"""Smoke run of benchmarks/secagg.py end to end: all four aggregations (plain, ours,
ours with distributed DP noise, Flower's SecAgg+), each one round of 10 values at 3
sites on one Ray actor. Its cost is Ray and ClientApp start-up, not the round."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocess_env import subprocess_env

pytestmark = pytest.mark.slow  # a whole run (make test-fast skips it)

REPO = Path(__file__).resolve().parents[2]


def test_secagg_benchmark_writes_every_mode_and_the_headline(tmp_path: Path) -> None:
    out = tmp_path / "secagg.json"
    env = subprocess_env()
    cmd = [sys.executable, str(REPO / "benchmarks" / "secagg.py"), "--out", str(out)]
    cmd += ["--sites", "3", "--size", "10", "--rounds", "1", "--actors", "1"]
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["headline"]) == {
        "ours_vs_flower_n3",
        "ours_vs_plain_n3",
        "ours_ddp_vs_flower_n3",
    }
    assert all(ratio > 0 for ratio in doc["headline"].values())
    modes = doc["results"]["n3"]
    assert set(modes) == {"plain", "ours", "ours_ddp", "flower"}
    for mode in modes.values():
        assert len(mode["round_seconds"]) == 1 and mode["median_seconds"] > 0
    # the secure sum decodes to the plain mean within quantization error
    assert modes["ours"]["max_abs_error"] < 1e-6
    assert modes["plain"]["max_abs_error"] < 1e-6
    # with the sites' noise (z = 0.001 of a clip norm of 1000: std ~1 per value
    # over 3 sites' mean, calibrated for 2 survivors) the mean is still the mean
    assert modes["ours_ddp"]["max_abs_error"] < 10
