"""benchmarks/robustness.py end to end on a tiny random BERT (``--quick``: one
cell, sign-flipping sites against the coordinate-wise median), through the real
CLI; then the same command again, which keeps the finished cell, and once more
after the cell's run was swapped for one of other settings, which it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocess_env import subprocess_env

pytestmark = pytest.mark.slow  # a whole simulation (make test-fast skips it)

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
    (cell,) = doc["cells"]
    assert (cell["defence"], cell["attack"]) == ("fedmedian", "sign-flip")
    assert 0.0 <= cell["success"] <= 1.0 and 0.0 <= cell["accuracy"] <= 1.0
    assert cell["success_per_round"][-1] == cell["success"]
    config = json.loads((Path(cell["out"]) / "summary.json").read_text())["config"]
    assert config["strategy.name"] == "fedmedian"
    assert config["secagg.enabled"] is False
    assert config["simulation.poison"] == "sign-flip"
    assert config["simulation.poisoned-sites"] == 2
    head = doc["headline"]
    row = head["defences"]["fedmedian"]
    assert "clean_cost" not in row  # no clean cell of either in --quick
    assert row["sign-flip"] == {
        "success": cell["success"],
        "fedavg_success": None,
        "accuracy": cell["accuracy"],
    }
    assert head["best_per_attack"] == {"sign-flip": "fedmedian"}
    assert doc["table"].splitlines()[2].startswith("| fedmedian | — | — | — |")

    stamp = {p: p.stat().st_mtime_ns for p in work.glob("*/summary.json")}
    again = run()  # finished cells are reused, not run again
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in work.glob("*/summary.json")} == stamp
    assert json.loads(out.read_text())["cells"] == doc["cells"]

    summary = Path(cell["out"]) / "summary.json"  # a foreign run in the cell's place
    doc = json.loads(summary.read_text())
    doc["config"]["strategy.name"] = "krum"
    summary.write_text(json.dumps(doc))
    foreign = run()
    assert foreign.returncode != 0
    assert "other settings than this cell's" in foreign.stdout + foreign.stderr
