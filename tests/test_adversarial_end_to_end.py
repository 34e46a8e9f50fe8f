"""An end-to-end simulation with adversarial training (``adversarial.method=pgd``)
through the real CLI, ``flwr run``, ClientApp and ServerApp: 2 sites, a tiny BERT,
DP-SGD and secure aggregation (the defaults), robustness measured every round;
then ``fedshield evaluate --attack`` on the finished run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedshield.privacy.ledger import LedgerReader
from tests.subprocess_env import fedshield_cli

pytestmark = pytest.mark.slow  # a whole simulation (make test-fast skips it)

ROOT = Path(__file__).resolve().parent.parent


_cli = fedshield_cli


@pytest.fixture(scope="module")
def adversarial_run(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("adv-e2e") / "run"
    overrides = (
        f"model.source='{tiny_model_dir}' model.max-length=16 train.batch-size=8 "
        "data.train-examples=80 data.test-examples=30 min-train-sites=1 "
        "secagg.threshold=0.5 num-server-rounds=2 dp.target-epsilon=4.0 "
        "adversarial.method='pgd' adversarial.steps=2 adversarial.epsilon=0.1 "
        "eval.attacks=true eval.robust-steps=3 eval.attack-examples=20 "
        "eval.char-edits=2"
    )
    proc = _cli(
        "simulate", "--out", str(out), "--sites", "2", "--run-config", overrides
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_rounds_report_robustness_and_each_site_its_epsilon(adversarial_run) -> None:
    summary = json.loads((adversarial_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["config"]["adversarial.method"] == "pgd"
    for rnd in [summary["initial"], *summary["rounds"]]:
        assert 0.0 <= rnd["robust_accuracy"] <= 1.0
        assert 0.0 <= rnd["char_attack_success"] <= 1.0 or math.isnan(
            rnd["char_attack_success"]
        )
    for name, site in summary["sites"].items():
        assert 0 < site["epsilon"] <= 4.0, name  # the target holds with the attack on
    for name in summary["sites"]:
        with LedgerReader(adversarial_run / "sites" / name) as ledger:
            assert ledger.verify().ok and len(ledger.entries()) == 2


def test_evaluate_attack_writes_robustness_and_never_overwrites(
    adversarial_run,
) -> None:
    out = adversarial_run / "robustness.json"
    proc = _cli(
        "evaluate",
        str(adversarial_run),
        "--attack",
        "--examples",
        "10",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert 0.0 <= metrics["robust_accuracy"] <= 1.0
    assert metrics["attack_examples"] == 10
    assert result["adversarial_training"]["adversarial.method"] == "pgd"
    again = _cli("evaluate", str(adversarial_run), "--out", str(out))
    assert again.returncode == 2 and "never overwritten" in again.stdout
