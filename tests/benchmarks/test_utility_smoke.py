"""benchmarks/utility.py end to end on a tiny random BERT (``--quick``: epsilon 8
only, no federated non-private point): the centralized run and the DP sweep,
through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocess_env import subprocess_env

pytestmark = pytest.mark.slow  # two whole simulations (make test-fast skips it)

REPO = Path(__file__).resolve().parents[2]


def test_utility_benchmark_runs_every_point_and_writes_its_plot(
    tmp_path: Path,
) -> None:
    out = tmp_path / "utility.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "utility.py"), "--quick"]
    cmd += ["--out", str(out), "--work", str(tmp_path / "runs")]
    done = subprocess.run(
        cmd,
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    head = doc["headline"]
    for key in ("acc_central", "acc_fed_eps8"):
        assert 0.0 <= head[key] <= 1.0, key
    for key in ("acc_fed_nondp", "acc_fed_eps1", "acc_fed_eps3"):
        assert head[key] is None, key  # not run in --quick
    assert head["gap_eps8"] == pytest.approx(
        head["acc_central"] - head["acc_fed_eps8"], abs=1e-4
    )
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    points = doc["federated"]["points"]
    assert {p["epsilon"] for p in points} == {8.0}
    for p in points:  # each DP point spent its target, no more
        if p["epsilon"] is not None:
            assert 0.5 * p["epsilon"] < p["epsilon_spent_max"] <= p["epsilon"] + 1e-6
    central = json.loads((tmp_path / "runs/central/summary.json").read_text())
    assert central["config"]["dp.enabled"] is False
    assert central["config"]["secagg.enabled"] is False
    assert len(central["sites"]) == 1
