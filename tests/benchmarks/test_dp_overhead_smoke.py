"""Smoke run of benchmarks/dp_overhead.py: --quick writes only --out, all keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocess_env import subprocess_env

pytestmark = pytest.mark.slow  # a whole run (make test-fast skips it)

REPO = Path(__file__).resolve().parents[2]
HEADLINE_KEYS = {
    "lora_step_ratio",
    "full_step_ratio",
    "lora_mem_ratio",
    "full_mem_ratio",
    "opacus_hooks_full_step_ratio",
    "opacus_ghost_full_step_ratio",
}


def test_quick_benchmark_writes_every_config_and_the_headline(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "dp_overhead.json"
    default = REPO / "benchmarks" / "results" / "dp_overhead.json"
    before = default.stat().st_mtime_ns if default.exists() else None
    env = subprocess_env()
    cmd = [sys.executable, str(REPO / "benchmarks" / "dp_overhead.py"), "--quick"]
    cmd += ["--warmup", "0", "--steps", "1", "--out", str(out)]
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]

    result = json.loads(out.read_text())
    assert HEADLINE_KEYS <= result["headline"].keys()
    assert all(result["headline"][k] > 0 for k in HEADLINE_KEYS)
    methods = ["non_dp", "opacus_hooks", "opacus_ghost", "bookkeeping"]
    expected = {f"{f}/{m}" for f in ("full", "lora") for m in methods}
    assert set(result["configs"]) == expected
    for entry in result["configs"].values():
        assert entry["median_step_s"] > 0 and entry["timed_steps"] == 1
    assert [p.name for p in out.parent.iterdir()] == ["dp_overhead.json"]
    after = default.stat().st_mtime_ns if default.exists() else None
    assert after == before, "the smoke run must not touch the default results file"
