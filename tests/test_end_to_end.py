"""End-to-end simulations through the real CLI, ``flwr run``, ClientApp and
ServerApp with 3 sites and a tiny BERT: secure aggregation (the default), sample-level
DP with a site budget of epsilon 9.5 and client-level DP, 2 rounds, then a resumed
third round that one site refuses because it would exceed its budget. That secure
aggregation gives the plain FedAvg model is checked on the in-memory round
(tests/server/test_secagg_round.py), without two more simulations."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from fedshield.privacy.ledger import LedgerReader

pytestmark = pytest.mark.slow  # whole simulations (make test-fast skips them)

BUDGET = 9.5  # round 3 would take site-1 to 10.02: refused; site-2 to 9.39
ROOT = Path(__file__).resolve().parent.parent


def _simulate(
    out: Path, overrides: str, timeout: int = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fedshield.cli",
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
    key = out.parent / "coordinator" / "checkpoint_key.pem"  # signs the checkpoints
    overrides = (
        f"model.source='{tiny_model_dir}' model.max-length=16 train.batch-size=8 "
        f"checkpoint.signing-key='{key}' "
        "data.train-examples=150 data.test-examples=40 min-train-sites=1 "
        "client-dp.enabled=true client-dp.noise-multiplier=0.5 "
        # simulated sites trust each other (no colluders): a 3-site secure round
        # then survives the refusal of round 3 (t = 2, not the default 3)
        "secagg.threshold=0.5 "
        f"simulation.site-max-epsilon={BUDGET}"
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
        assert rnd["saturated"] == 0  # secure aggregation (the default) clipped none
    assert summary["config"]["secagg.enabled"] is True
    for name, site in summary["sites"].items():
        assert math.isfinite(site["epsilon"]) and site["epsilon"] > 0, name
        assert site["delta"] == 1e-5 and site["examples"] > 0 and site["steps"] > 0
        assert site["max_epsilon"] == BUDGET and site["refused_rounds"] == []
    r1, r2 = (r["sites"] for r in summary["rounds"])
    assert all(r2[s]["epsilon"] > r1[s]["epsilon"] for s in r1)
    client = summary["privacy"]["client_level"]
    assert client["enabled"] and client["rounds"] == 2 and client["epsilon"] > 0
    assert (out / "final_trainable.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "checkpoint.sig.json").is_file()  # resumed below, verified


def test_existing_run_is_not_overwritten(finished_run) -> None:
    out, overrides = finished_run
    before = (out / "summary.json").read_bytes()
    proc = _simulate(out, overrides)
    assert proc.returncode == 2
    assert "already holds a run" in proc.stdout
    assert (out / "summary.json").read_bytes() == before


def _ledger_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedshield.cli", "ledger", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def resumed_run(finished_run) -> Path:
    out, overrides = finished_run
    proc = _simulate(out, f"{overrides} num-server-rounds=3 resume=true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _reference_epsilon(per_round: list[dict]) -> float:
    acc = RDPAccountant()
    for m in per_round:
        for _ in range(int(m["steps"])):
            acc.step(
                noise_multiplier=m["noise-multiplier"], sample_rate=m["sample-rate"]
            )
    return acc.get_epsilon(1e-5)


def test_resume_continues_and_sites_refuse_the_round_beyond_their_budget(
    resumed_run,
) -> None:
    summary = json.loads((resumed_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    third = summary["rounds"][2]
    refused = sorted(r["site"] for r in third["refusals"])
    assert refused == ["site-1"], third
    assert sorted(third["sites"]) == ["site-0", "site-2"]
    for r in third["refusals"]:
        assert r["epsilon-spent"] <= BUDGET < r["epsilon-after"]
    for name, site in summary["sites"].items():
        per_round = [r["sites"][name] for r in summary["rounds"] if name in r["sites"]]
        assert len(per_round) == (2 if name == "site-1" else 3)
        # epsilon after the restart covers every release of this site
        assert site["epsilon"] == pytest.approx(_reference_epsilon(per_round), rel=1e-9)
        assert site["epsilon"] <= BUDGET
    assert summary["privacy"]["client_level"]["rounds"] == 3


def test_summary_and_ledgers_agree_and_verify(resumed_run) -> None:
    summary = json.loads((resumed_run / "summary.json").read_text())
    for name, site in summary["sites"].items():
        with LedgerReader(resumed_run / "sites" / name) as ledger:
            assert ledger.verify().ok
            entries = [r.entry for r in ledger.entries()]
        assert [e.server_round for e in entries] == site["rounds"]
        assert {e.run_id for e in entries} == {summary["run_key"]}
        assert entries[-1].epsilon == pytest.approx(site["epsilon"], rel=1e-12)
        assert max(e.epsilon for e in entries) <= BUDGET
    with LedgerReader(resumed_run / "ledger") as server:
        last = server.entries()[-1].entry
    client = summary["privacy"]["client_level"]
    assert last.epsilon == pytest.approx(client["epsilon"], rel=1e-12)
    assert summary["rounds"][-1]["client_epsilon"] == pytest.approx(client["epsilon"])
    proc = _ledger_cli("verify", "--run-dir", str(resumed_run))
    assert proc.returncode == 0 and proc.stdout.count("OK") == 4, proc.stdout


def test_ledger_commands_show_plot_and_export(resumed_run, tmp_path: Path) -> None:
    shown = _ledger_cli(
        "show", "--site-dir", str(resumed_run / "sites/site-1"), "--json"
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    doc = json.loads(shown.stdout)
    (entries,) = [v["entries"] for v in doc.values()]
    assert [e["server_round"] for e in entries] == [1, 2]
    assert entries[-1]["budget_left"] == pytest.approx(BUDGET - entries[-1]["epsilon"])
    png, export = tmp_path / "eps.png", tmp_path / "ledgers.json"
    assert (
        _ledger_cli("plot", "--run-dir", str(resumed_run), "--out", str(png)).returncode
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = (
        "export",
        "--site-dir",
        str(resumed_run / "sites/site-0"),
        "--out",
        str(export),
    )
    assert _ledger_cli(*args).returncode == 0
    assert _ledger_cli("verify", "--export", str(export)).returncode == 0
    again = _ledger_cli(*args)  # never overwrites
    assert again.returncode == 2 and "left untouched" in again.stdout


def test_injected_pii_is_in_no_file_the_run_writes(finished_run, default_run_config):
    """The sites' shares carry synthetic PII (data.inject-pii); the structured
    values among it appear nowhere under the run directory (summary, logs,
    checkpoints, ledgers, scrub caches)."""
    from fedshield.privacy.pii import STRUCTURED_ENTITIES
    from fedshield.simulations.scenario import Scenario

    out, overrides = finished_run
    scenario = Scenario.from_run_config(
        {**default_run_config, "data.train-examples": 150, "data.test-examples": 40}
    )
    canaries = {
        span.value
        for site in range(3)
        for sentence in scenario.injected_pii(site, 3)
        for span in sentence.spans
        if span.entity_type in STRUCTURED_ENTITIES
    }
    assert len(canaries) >= 3, canaries
    summary = json.loads((out / "summary.json").read_text())
    assert sum(sum(s["pii"].values()) for s in summary["sites"].values()) > 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any("pii-cache" in str(p) for p in files)
    for path in files:
        blob = path.read_bytes()
        leaked = [c for c in canaries if c.encode() in blob]
        assert leaked == [], f"{path} holds {leaked}"
