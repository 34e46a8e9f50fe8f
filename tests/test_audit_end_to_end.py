"""``fedshield simulate --audit`` on a tiny DP run: canaries planted at 3 sites, the
final model attacked, the report written; and ``fedshield audit``'s refusals."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fedshield.privacy.audit.one_run import empirical_epsilon
from fedshield.privacy.audit.report import SECTIONS
from fedshield.simulations.audit import confidence_levels
from tests.subprocess_env import fedshield_cli

pytestmark = pytest.mark.slow  # a whole run (make test-fast skips it)

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"data.train-examples": 150, "data.test-examples": 40}
# Claimed run epsilon 2 per site, 30 guesses on 60 canaries a site, 90 on 180
# pooled: all 90 right would prove epsilon >= 3.17 at 97.5 % (the pooled ceiling
# asserted below), so `empirical <= claimed` can fail. Under DP the sites draw their
# noise seeds from the OS CSPRNG, so the run is not reproducible; with guesses near
# chance a false violation has probability below 2.5 %, at most, by construction
# (measured runs: far below the claim).
AUDIT = {
    "dp.target-epsilon": 2.0,
    "audit.canaries": 60,
    "audit.guess-fraction": 0.5,
    "audit.lira-references": 1,
    "audit.reference-examples": 60,
}


_fedshield = fedshield_cli


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
    proc = _simulate_audit(out, overrides, sites=3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _simulate_audit(
    out: Path, overrides: str, *, sites: int
) -> subprocess.CompletedProcess:
    return _fedshield(
        "simulate", "--out", str(out), "--sites", str(sites), "--audit",
        "--run-config", overrides,
    )  # fmt: skip


def test_every_site_is_attacked_and_its_empirical_epsilon_stays_below_the_claim(
    audited_run: Path,
) -> None:
    doc = json.loads((audited_run / "audit" / "audit.json").read_text())
    summary = json.loads((audited_run / "summary.json").read_text())
    assert [s["site"] for s in doc["sites"]] == ["site-0", "site-1", "site-2"]
    assert doc["violations"] == []
    # pooled: 180 canaries, 90 guesses, at 1 - 0.05/2; each site at 1 - 0.05/6
    pooled_conf, site_conf = confidence_levels(0.95, 3)
    pooled = doc["pooled_test"]
    claims = [summary["sites"][s["site"]]["run_epsilon"] for s in doc["sites"]]
    assert pooled["claimed_epsilon"] == pytest.approx(max(claims))
    c = pooled["canaries"]
    assert (c["canaries"], c["guesses"], c["confidence"]) == (180, 90, pooled_conf)
    assert c["ceiling"] == pytest.approx(
        empirical_epsilon(m=180, r=90, v=90, delta=c["delta"], confidence=pooled_conf)
    )
    assert c["ceiling"] > max(claims)  # the pooled test could refute the claim
    assert 0 <= c["empirical_epsilon"] <= max(claims)
    assert pooled["verdict"] == "consistent" and doc["verdict"] == "consistent"
    assert doc["exit_code"] == 0
    for site, claimed in zip(doc["sites"], claims, strict=True):
        assert site["claimed_epsilon"] == pytest.approx(claimed) and claimed > 0
        canaries = site["canaries"]
        assert canaries["canaries"] == 60 and canaries["guesses"] == 30
        ceiling = empirical_epsilon(
            m=60, r=30, v=30, delta=canaries["delta"], confidence=site_conf
        )
        assert canaries["ceiling"] == pytest.approx(ceiling)
        assert canaries["empirical_epsilon"] == pytest.approx(
            empirical_epsilon(
                m=60,
                r=30,
                v=canaries["correct"],
                delta=canaries["delta"],
                confidence=site_conf,
            )
        )
        assert 0 <= canaries["empirical_epsilon"] <= claimed
        # 30 guesses at 99.2 % cannot reach epsilon 2: never "consistent"
        assert ceiling < claimed and site["verdict"] == "inconclusive"
        for attack in ("phi_attack", "lira"):
            stats = site[attack]
            assert 0 <= stats["auc"] <= 1 and stats["members"] > stats["non_members"]
            assert 0 <= stats["tpr_at_0.01_fpr"] <= 1
            for point in stats["low_fpr"]:
                low, high = point["tpr_ci"]
                assert low <= point["tpr"] <= high
                assert point["fpr"] <= point["target_fpr"]
    assert set(doc["roc"]) == {"site-0", "site-1", "site-2", "all sites"}
    assert set(doc["pooled"]) == {"phi", "lira"}
    # the planted canaries are in the trained data: the run's config says so
    assert summary["config"]["audit.canaries"] == 60


def test_gradient_canaries_through_the_real_run_and_an_untested_exit_code(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """White-box canaries at 2 simulated sites of a non-private run: the sites'
    coordinates and the auditor's agree (the canaries are found), and with no DP
    claim the verdict is "not tested", exit code 5, never green."""
    out = tmp_path / "run"
    overrides = " ".join(
        [
            f"model.source='{tiny_model_dir}' model.max-length=16 train.batch-size=8",
            "model.finetune='full' num-server-rounds=1 min-train-sites=1",
            "data.train-examples=80 data.test-examples=20 dp.enabled=false",
            "audit.canaries=200 audit.canary-kind='gradient' audit.guess-fraction=0.2",
            "audit.lira-references=0 train.local-epochs=4",
        ]
    )
    proc = _simulate_audit(out, overrides, sites=2)
    assert proc.returncode == 5, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "audit" / "audit.json").read_text())
    assert doc["verdict"] == "not tested" and doc["exit_code"] == 5
    pooled = doc["pooled_test"]["canaries"]
    assert pooled["canaries"] == 400 and pooled["guesses"] == 80
    # the canaries stand out, so the sites' coordinates and the auditor's agree
    # (chance: 40 of 80; each included canary is sampled about 4 times, so about
    # 2 % of them never move)
    assert pooled["correct"] >= 70
    assert "Verdict: not tested (exit code 5)" in proc.stdout
    report = (out / "audit" / "report.html").read_text()
    assert "Not tested" in report and 'class="ok"' not in report


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
        assert a["phi_attack"] == b["phi_attack"]
        assert a["canaries"] == b["canaries"]
        assert math.isfinite(b["lira"]["auc"])
