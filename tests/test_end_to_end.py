"""One end-to-end simulation through the real CLI, ``flwr run``, ClientApp and
ServerApp: 3 sites, tiny BERT, 2 rounds, then a resumed third round."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant


def _simulate(
    out: Path, overrides: str, timeout: int = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations",
            "simulate",
            "--out",
            str(out),
            "--sites",
            "3",
            "--run-config",
            overrides,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parent.parent,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("e2e") / "run"
    overrides = (
        f"model.source='{tiny_model_dir}' model.max-length=16 train.batch-size=8 "
        "data.train-examples=150 data.test-examples=40"
    )
    proc = _simulate(out, f"{overrides} num-server-rounds=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, overrides


def test_summary_has_finite_accuracy_and_epsilon_for_every_site(finished_run) -> None:
    out, _ = finished_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for rnd in summary["rounds"]:
        assert math.isfinite(rnd["accuracy"]) and math.isfinite(rnd["train_loss"])
        assert set(rnd["sites"]) == {"site-0", "site-1", "site-2"}
    for name, site in summary["sites"].items():
        assert math.isfinite(site["epsilon"]) and site["epsilon"] > 0, name
        assert site["delta"] == 1e-5 and site["examples"] > 0 and site["steps"] > 0
    r1, r2 = (r["sites"] for r in summary["rounds"])
    assert all(r2[s]["epsilon"] > r1[s]["epsilon"] for s in r1)
    assert (out / "final_trainable.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_existing_run_is_not_overwritten(finished_run) -> None:
    out, overrides = finished_run
    before = (out / "summary.json").read_bytes()
    proc = _simulate(out, overrides)
    assert proc.returncode == 2
    assert "already holds a run" in proc.stdout
    assert (out / "summary.json").read_bytes() == before


def test_resume_continues_the_run_and_the_site_accountants(finished_run) -> None:
    out, overrides = finished_run
    proc = _simulate(out, f"{overrides} num-server-rounds=3 resume=true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    for name, site in summary["sites"].items():
        # epsilon after the restart covers all three rounds of this site
        acc = RDPAccountant()
        per_round = [r["sites"][name] for r in summary["rounds"]]
        for m in per_round:
            for _ in range(int(m["steps"])):
                acc.step(
                    noise_multiplier=m["noise-multiplier"], sample_rate=m["sample-rate"]
                )
        assert site["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9), name
        assert per_round[2]["epsilon"] > per_round[1]["epsilon"]
