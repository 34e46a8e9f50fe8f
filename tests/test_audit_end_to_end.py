"""``fedshield simulate --audit`` on a tiny DP run: canaries planted at 3 sites, the
final model attacked, the report written; and ``fedshield audit``'s refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedshield.privacy.audit.one_run import empirical_epsilon
from fedshield.privacy.audit.report import SECTIONS

pytestmark = pytest.mark.slow  # a whole run (make test-fast skips it)

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"data.train-examples": 150, "data.test-examples": 40}
# Claimed run epsilon 2 per site, 30 guesses on 60 canaries: all 30 right would
# prove epsilon >= 2.25 (the ceiling asserted below), so `empirical <= claimed` can
# fail, and does when all 30 guesses are right. Under DP the sites draw their noise
# seeds from the OS CSPRNG, so the run is not reproducible; with guesses at chance
# that happens with probability 3 * 2^-30 (1e-9), and at 55 % accuracy 5e-8.
AUDIT = {
    "dp.target-epsilon": 2.0,
    "audit.canaries": 60,
    "audit.guess-fraction": 0.5,
    "audit.lira-references": 1,
    "audit.reference-examples": 60,
}


def _fedshield(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedshield.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("audit") / "run"
    overrides = " ".join(
        [
            f"model.source='{tiny_model_dir}' model.max-length=16 train.batch-size=8",
            "num-server-rounds=2 min-train-sites=1",
            *(f"{k}={v}" for k, v in {**SIZES, **AUDIT}.items()),
        ]
    )
    proc = _fedshield(
        "simulate", "--out", str(out), "--sites", "3", "--audit", "--run-config",
        overrides,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_every_site_is_attacked_and_its_empirical_epsilon_stays_below_the_claim(
    audited_run: Path,
) -> None:
    doc = json.loads((audited_run / "audit" / "audit.json").read_text())
    summary = json.loads((audited_run / "summary.json").read_text())
    assert [s["site"] for s in doc["sites"]] == ["site-0", "site-1", "site-2"]
    assert doc["violations"] == []
    for site in doc["sites"]:
        claimed = summary["sites"][site["site"]]["run_epsilon"]
        assert site["claimed_epsilon"] == pytest.approx(claimed) and claimed > 0
        canaries = site["canaries"]
        assert canaries["canaries"] == 60 and canaries["guesses"] == 30
        # the audit has the power to refute the claim: all guesses right would
        ceiling = empirical_epsilon(m=60, r=30, v=30, delta=canaries["delta"])
        assert ceiling > claimed
        assert canaries["empirical_epsilon"] == pytest.approx(
            empirical_epsilon(
                m=60, r=30, v=canaries["correct"], delta=canaries["delta"]
            )
        )
        assert 0 <= canaries["empirical_epsilon"] <= claimed
        assert not site["violation"] and site["verdict"].startswith("consistent")
        for attack in ("loss_attack", "lira"):
            stats = site[attack]
            assert 0 <= stats["auc"] <= 1 and stats["members"] > stats["non_members"]
            assert 0 <= stats["tpr_at_0.01_fpr"] <= 1
    assert set(doc["roc"]) == {"site-0", "site-1", "site-2", "all sites"}
    assert set(doc["pooled"]) == {"loss", "lira"}
    # the planted canaries are in the trained data: the run's config says so
    assert summary["config"]["audit.canaries"] == 60


def test_report_has_every_section_and_no_raw_record_or_pii(
    audited_run: Path, default_run_config: dict[str, Any]
) -> None:
    from fedshield.simulations.scenario import Scenario

    report = (audited_run / "audit" / "report.html").read_text()
    numbers = (audited_run / "audit" / "audit.json").read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in report, section
    assert report.count("data:image/png;base64,") == 2  # ROC curves, epsilon
    scenario = Scenario.from_run_config({**default_run_config, **SIZES, **AUDIT})
    secrets = set()
    for k in range(3):
        for sentence in scenario.injected_pii(k, 3):
            secrets |= {s.value for s in sentence.spans if len(s.value) >= 6}
        canaries = scenario.canaries(k, 3)
        assert canaries is not None
        secrets |= {text[:40] for text in canaries.texts if len(text) >= 40}
    assert len(secrets) > 50
    leaked = [s for s in secrets if s in report or s in numbers]
    assert leaked == []


def test_audit_refuses_to_overwrite_and_explains_bad_run_dirs(
    audited_run: Path, tmp_path: Path
) -> None:
    again = _fedshield("audit", str(audited_run))
    assert again.returncode == 2 and "left untouched" in again.stdout
    missing = _fedshield("audit", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "summary.json does not exist" in missing.stdout
    wrong = _fedshield(
        "audit", str(audited_run), "--sites", "2", "--out", str(tmp_path)
    )
    assert wrong.returncode == 2 and "number of sites" in wrong.stdout
    running = tmp_path / "running"
    running.mkdir()
    (running / "summary.json").write_text(json.dumps({"status": "running"}))
    unfinished = _fedshield("audit", str(running))
    assert unfinished.returncode == 2 and "only a completed run" in unfinished.stdout


def test_a_second_audit_elsewhere_reproduces_the_attack_on_the_final_model(
    audited_run: Path, tmp_path: Path
) -> None:
    proc = _fedshield("audit", str(audited_run), "--out", str(tmp_path / "again"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    first = json.loads((audited_run / "audit" / "audit.json").read_text())
    second = json.loads((tmp_path / "again" / "audit.json").read_text())
    for a, b in zip(first["sites"], second["sites"], strict=True):
        assert a["loss_attack"] == b["loss_attack"]
        assert a["canaries"] == b["canaries"]
        assert math.isfinite(b["lira"]["auc"])
