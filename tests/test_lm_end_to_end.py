"""An end-to-end causal-LM simulation through the real CLI, ``flwr run``,
ClientApp and ServerApp: a tiny random Llama at 2 sites, secure aggregation and
DP-SGD (the defaults), PII scrubbing, then ``fedshield audit`` with secret
canaries. The coordinator's prompts carry PII: the summary must not."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedshield.models import write_tiny_causal_lm
from fedshield.privacy.ledger import LedgerReader

pytestmark = pytest.mark.slow  # a whole simulation (make test-fast skips it)

ROOT = Path(__file__).resolve().parent.parent
PII_PROMPT = "Call John Smith at john.smith@example.com about"


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("lm-e2e")
    model = write_tiny_causal_lm(work / "llama")
    out = work / "run"
    overrides = (
        f"model.task='causal-lm' model.source='{model}' model.max-length=64 "
        "train.batch-size=8 train.lr=0.01 data.train-examples=80 "
        "data.test-examples=30 num-server-rounds=2 min-train-sites=1 "
        "secagg.threshold=0.5 audit.canaries=30 audit.lira-references=0 "
        "audit.repeated-secrets=3 audit.secret-repeats=4 "
        f"eval.prompts='the film was|{PII_PROMPT}' eval.generate-tokens=6"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedshield.cli",
            "simulate",
            "--out",
            str(out),
            "--sites",
            "2",
            "--audit",
            "--run-config",
            overrides,
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=ROOT,
    )
    return out, proc


def test_the_run_completes_with_perplexity_and_epsilon_per_site(lm_run) -> None:
    out, proc = lm_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed", proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["config"]["secagg.enabled"] is True
    assert math.isfinite(summary["initial"]["perplexity"])
    for rnd in summary["rounds"]:
        assert math.isfinite(rnd["perplexity"]) and rnd["perplexity"] > 1
        assert rnd["perplexity"] == pytest.approx(math.exp(rnd["loss"]), rel=1e-6)
        assert set(rnd["sites"]) == {"site-0", "site-1"}
    for name, site in summary["sites"].items():
        assert math.isfinite(site["epsilon"]) and site["epsilon"] > 0, name
        with LedgerReader(out / "sites" / name) as ledger:
            assert ledger.verify().ok
    assert "test perplexity" in proc.stdout
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_generation_samples_are_scrubbed_prompts_included(lm_run) -> None:
    out, _ = lm_run
    generation = json.loads((out / "summary.json").read_text())["generation"]
    assert generation["scrubbed"] is True
    prompts = [s["prompt"] for s in generation["samples"]]
    assert prompts[0] == "the film was"
    assert "john.smith@example.com" not in json.dumps(generation)
    assert "John Smith" not in json.dumps(generation)
    assert "<EMAIL_ADDRESS>" in prompts[1]


def test_the_audit_ranks_the_secrets_and_tests_the_claim(lm_run) -> None:
    out, proc = lm_run
    report = json.loads((out / "audit" / "audit.json").read_text())
    assert set(report["exposure"]) == {"site-0", "site-1"}
    for site in report["exposure"].values():
        planted = [s for s in site["secrets"] if s["repeats"] > 0]
        held = [s for s in site["secrets"] if s["repeats"] == 0]
        repeated = [s for s in planted if s["repeats"] == 4]
        assert len(repeated) == 3  # audit.repeated-secrets, 4 copies each
        assert held and len(planted) + len(held) == 33
        assert all(0 <= s["exposure"] <= math.log2(site["space_size"]) for s in planted)
    assert report["audit_config"]["canary_kind"] == "secret"  # --audit chose it
    # a tiny model with a large claim: the test cannot refute it
    assert report["verdict"] in ("consistent", "inconclusive")
    assert proc.returncode == report["exit_code"]
