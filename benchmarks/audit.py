"""Can the audit catch an over-claim? A non-private control, an honest DP run, and
deliberately broken DP runs, each audited by ``fedshield simulate --audit`` with
white-box gradient canaries.

Run (about 40 minutes on 2 CPU cores; writes benchmarks/results/audit.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/audit.py

Smoke run (tiny random BERT, about 4 minutes): ``--quick --out /tmp/audit.json``.

Settings, fixed before any run (the runs differ only where named):

- The packaged all-MiniLM-L6-v2, sequence length 32, 1000 training reviews, 500
  test reviews, 2 rounds, **one simulated site** (secure aggregation off: it needs
  two). The audit tests one site's DP-SGD as fedshield runs it; in a federation the
  other sites' noise lands on the same coordinates and only hides a site's
  canaries (adds privacy), so a lone site is the mechanism's sharpest test.
- Two trainable sets, each where it is informative:
  - **full fine-tuning** (``nondp``, ``broken``): random coordinates of a large
    model see almost no data gradient, so a gradient canary there is measured
    against the DP noise alone: the canaries' best case. Batch 32, 2 x 5 local
    epochs, learning rates 5e-5 (encoder) and 0.005 (head); 8000 canaries, 10 %
    guessed (all 800 right would prove epsilon >= 5.36).
  - **LoRA** r=8 (``dp``, ``broken_lora``): what learns under DP at epsilon 2 on
    1000 records. Full fine-tuning there predicts the majority class (measured
    before this run was fixed, one site, 1000-4000 records, batch 64-256, encoder
    rates 1e-6 to 5e-5, head rates 0.01-0.03: 0.584-0.604 against a majority of
    0.584). Batch 64, 2 x 2 local epochs, learning rates 2e-4 and 0.03 (the
    demo's); 30000 canaries (LoRA has ~75k trainable values), 5 % guessed
    (ceiling 5.24). Canary scores are standardised within each parameter tensor
    (LoRA's A, B and the head move differently).
- Each canary is included with probability 1/2; the auditor guesses "in" on the
  highest scores and "out" on the lowest, fixed in advance. No LiRA reference
  models (the canary test is the headline; the confidence attack's AUC is
  reported for the contrast).

Runs:

- ``nondp``: ``dp.enabled = false`` (full), the control: nothing is claimed, so
  its verdict is "not tested"; its empirical epsilon shows the canaries' power.
- ``dp``: DP-SGD at ``dp.target-epsilon = 2`` (LoRA; sigma from the accountant
  for the planned rounds), clipping 1, delta 1e-5.
- ``broken`` (full) and ``broken_lora``: the same claim with a DP-SGD that adds a
  quarter of the noise it reports (``benchmarks/broken_dp``: its
  ``sitecustomize`` patches Opacus' noise step in every process of that run only;
  the accountant still records the full sigma, so the site claims epsilon 2).
  Never reachable from the CLI.

Headline: ``nondp_eps_lb``, ``dp_eps_lb``, ``dp_claimed_eps``, ``broken_eps_lb``
and ``broken_lora_eps_lb`` (the pooled test's empirical epsilon),
``broken_detected`` and ``broken_lora_detected`` (the verdict is "violation"),
``dp_verdict``, ``dp_acc`` and ``dp_acc_minus_majority`` (test accuracy minus the
majority class's share of the test set), ``nondp_acc``, ``ceiling`` (the ``dp``
run's pooled ceiling), ``nondp_ceiling``, ``nondp_auc`` and ``dp_auc`` (the
confidence attack on members vs held-out records).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BROKEN_DP = ROOT / "benchmarks" / "broken_dp"

COMMON: dict[str, Any] = {
    "num-server-rounds": 2,
    "model.max-length": 32,
    "data.partition": "iid",
    "data.train-examples": 1000,
    "data.test-examples": 500,
    "data.inject-pii": 0.0,
    "min-train-sites": 1,
    "secagg.enabled": "false",  # one site: nothing to aggregate securely
    "audit.canary-kind": "gradient",
    "audit.lira-references": 0,
}
# full fine-tuning: most coordinates see no data gradient, the canaries' best case
FULL: dict[str, Any] = {
    "model.finetune": "full",
    "train.local-epochs": 5,
    "train.batch-size": 32,
    "train.lr": 5e-5,
    "train.head-lr": 0.005,
    "audit.canaries": 8000,
    "audit.guess-fraction": 0.1,
}
# LoRA: what learns under DP at epsilon 2 on 1,000 records (full fine-tuning
# predicts the majority class there); every coordinate carries data gradient
LORA: dict[str, Any] = {
    "model.finetune": "lora",
    "train.local-epochs": 2,
    "train.batch-size": 64,
    "train.lr": 2e-4,
    "train.head-lr": 0.03,
    "audit.canaries": 30000,
    "audit.guess-fraction": 0.05,
}
DP = {"dp.enabled": "true", "dp.target-epsilon": 2.0, "dp.max-grad-norm": 1.0}
RUNS: dict[str, dict[str, Any]] = {
    "nondp": {**FULL, "dp.enabled": "false"},
    "dp": {**LORA, **DP},
    "broken": {**FULL, **DP},
    "broken_lora": {**LORA, **DP},
}
WEAKEN = {"broken": 0.25, "broken_lora": 0.25}  # noise actually added / reported
SITES = 1


def _overrides(values: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"'{v}'" if isinstance(v, str) and v not in ("true", "false") else str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def _env(name: str, work: Path) -> tuple[dict[str, str], Path | None]:
    env = dict(os.environ)
    factor = WEAKEN.get(name)
    if factor is None:
        return env, None
    marker = work / f"{name}.weakened"
    marker.unlink(missing_ok=True)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BROKEN_DP), env.get("PYTHONPATH", "")) if p
    )
    env["FEDSHIELD_WEAKEN_FACTOR"] = str(factor)
    env["FEDSHIELD_WEAKEN_MARKER"] = str(marker)
    return env, marker


def _majority(run_dir: Path) -> float:
    """The majority class's share of the run's central test set."""
    from fedshield.common.run_config import RunConfig
    from fedshield.simulations.scenario import Scenario

    summary = json.loads((run_dir / "summary.json").read_text())
    labels = Scenario.from_run_config(RunConfig.parse(summary["config"])).central_test()
    counts = Counter(labels.labels)
    return max(counts.values()) / len(labels.labels)


def _run(name: str, values: dict[str, Any], work: Path) -> dict[str, Any]:
    out = work / name
    cmd = [sys.executable, "-m", "fedshield.cli", "simulate", "--audit"]
    cmd += ["--out", str(out), "--sites", str(SITES)]
    cmd += ["--run-config", _overrides(values)]
    env, marker = _env(name, work)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    print(proc.stdout[-3000:], flush=True)
    if proc.returncode not in (0, 3, 4, 5):  # a verdict's exit code is a result
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    if marker is not None and not (marker.is_file() and marker.read_text()):
        raise SystemExit(
            f"{name}: the weakened DP-SGD never ran (no {marker}); the run did not "
            "test what it claims to. Is benchmarks/broken_dp on the sites' path?"
        )
    audit = json.loads((out / "audit" / "audit.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    pooled = audit["pooled_test"]
    return {
        "seconds": round(seconds, 1),
        "exit_code": proc.returncode,
        "final_accuracy": summary["rounds"][-1]["accuracy"],
        "majority": _majority(out),
        "verdict": audit["verdict"],
        "pooled_test": pooled,
        "pooled": audit["pooled"],
        "sites": audit["sites"],
        "run_dir": str(out),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/audit.json"
    )
    parser.add_argument("--work", type=Path, default=None, help="where runs go")
    parser.add_argument(
        "--quick", action="store_true", help="tiny random BERT, small sizes (smoke)"
    )
    parser.add_argument(
        "--runs", nargs="+", choices=list(RUNS), default=None, help="a subset"
    )
    args = parser.parse_args(argv)
    if args.runs is None:  # the tiny model's LoRA has too few coordinates to audit
        args.runs = [n for n in RUNS if not (args.quick and n == "broken_lora")]
    work = args.work or Path(tempfile.mkdtemp(prefix="fedshield-audit-"))
    work.mkdir(parents=True, exist_ok=True)
    common = dict(COMMON)
    quick: dict[str, dict[str, Any]] = {name: {} for name in RUNS}
    if args.quick:
        from fedshield.models import write_tiny_bert

        tiny = write_tiny_bert(work / "tiny-bert")
        for name, values in RUNS.items():
            lora = values["model.finetune"] == "lora"
            quick[name] = {
                "model.source": str(tiny),
                "model.max-length": 16,
                "train.local-epochs": 5,
                "train.batch-size": 20,
                "data.train-examples": 200,
                "data.test-examples": 100,
                # the tiny model: ~1M coordinates in full, ~2k under LoRA
                "audit.canaries": 1000 if lora else 8000,
                "audit.guess-fraction": 0.2 if lora else 0.1,
            }
    results = {
        name: _run(name, {**common, **RUNS[name], **quick[name]}, work)
        for name in args.runs
    }

    def pooled(run: str, key: str) -> Any:
        test = results[run]["pooled_test"] if run in results else None
        if test is None:
            return None
        return test[key] if key == "claimed_epsilon" else test["canaries"][key]

    def auc(run: str) -> float | None:
        return results[run]["pooled"]["phi"]["auc"] if run in results else None

    dp = results.get("dp")
    headline = {
        "nondp_eps_lb": pooled("nondp", "empirical_epsilon"),
        "dp_eps_lb": pooled("dp", "empirical_epsilon"),
        "dp_claimed_eps": pooled("dp", "claimed_epsilon"),
        "broken_eps_lb": pooled("broken", "empirical_epsilon"),
        "broken_detected": results["broken"]["verdict"] == "violation"
        if "broken" in results
        else None,
        "broken_lora_eps_lb": pooled("broken_lora", "empirical_epsilon"),
        "broken_lora_detected": results["broken_lora"]["verdict"] == "violation"
        if "broken_lora" in results
        else None,
        "dp_verdict": dp["verdict"] if dp else None,
        "dp_acc": dp["final_accuracy"] if dp else None,
        "dp_acc_minus_majority": dp["final_accuracy"] - dp["majority"] if dp else None,
        "nondp_acc": results["nondp"]["final_accuracy"] if "nondp" in results else None,
        "ceiling": pooled("dp", "ceiling"),
        "nondp_ceiling": pooled("nondp", "ceiling"),
        "nondp_auc": auc("nondp"),
        "dp_auc": auc("dp"),
    }
    doc = {
        "headline": headline,
        "config": {
            "common": common,
            "runs": {n: {**RUNS[n], **quick[n]} for n in args.runs},
            "weaken": WEAKEN,
            "sites": SITES,
            "quick": args.quick,
        },
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"headline": headline}, indent=2))
    return doc


if __name__ == "__main__":
    main()
