"""benchmarks/robustness.py end to end on a tiny random BERT (``--quick``: a clean
FedAvg cell and a sign-flip cell under the coordinate-wise median), through the
real CLI; then the same command again, which keeps both finished cells."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocess_env import subprocess_env

pytestmark = pytest.mark.slow  # two whole simulations (make test-fast skips it)

REPO = Path(__file__).resolve().parents[2]


def test_robustness_benchmark_runs_its_cells_and_reuses_finished_ones(
    tmp_path: Path,
) -> None:
    out, work = tmp_path / "robustness.json", tmp_path / "runs"
    cmd = [sys.executable, str(REPO / "benchmarks" / "robustness.py"), "--quick"]
    cmd += ["--out", str(out), "--work", str(work)]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd,
            cwd=REPO,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=1200,
        )

    done = run()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    cells = {(c["defence"], c["attack"]): c for c in doc["cells"]}
    assert set(cells) == {("fedavg", "none"), ("fedmedian", "sign-flip")}
    clean, attacked = cells["fedavg", "none"], cells["fedmedian", "sign-flip"]
    assert clean["success"] is None and 0.0 <= clean["accuracy"] <= 1.0
    assert 0.0 <= attacked["success"] <= 1.0
    fed = json.loads((Path(clean["out"]) / "summary.json").read_text())["config"]
    med = json.loads((Path(attacked["out"]) / "summary.json").read_text())["config"]
    assert fed["secagg.enabled"] is True and fed["simulation.poisoned-sites"] == 0
    assert med["strategy.name"] == "fedmedian" and med["secagg.enabled"] is False
    assert med["simulation.poison"] == "sign-flip"
    assert med["simulation.poisoned-sites"] == 2
    head = doc["headline"]
    assert head["defences"]["fedavg"]["clean_cost"] == 0.0
    assert head["defences"]["fedmedian"]["sign-flip"]["success"] == attacked["success"]
    assert head["best_per_attack"] == {"sign-flip": "fedmedian"}
    assert "| fedmedian | — |" in doc["table"]

    stamp = {p: p.stat().st_mtime_ns for p in work.glob("*/summary.json")}
    again = run()  # finished cells are reused, not run again
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in work.glob("*/summary.json")} == stamp
    assert json.loads(out.read_text())["cells"] == doc["cells"]
