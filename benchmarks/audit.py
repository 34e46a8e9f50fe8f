"""Do the audits see what the privacy claims say? A non-private control trained to
overfit, and the same run with DP-SGD at epsilon ~ 8, each attacked by
``fedshield simulate --audit``.

Run (about 35-50 minutes on 2 CPU cores; writes benchmarks/results/audit.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/audit.py

Smoke run (tiny random BERT, a few minutes): ``--quick --out /tmp/audit.json``.

Setup (both runs, through the real CLI, Flower simulation engine, secure
aggregation on): the packaged all-MiniLM-L6-v2, full fine-tuning, sequence length
32, 2 sites with ``data.train-examples`` = 200 review snippets (IID, ~100 per
site: small, so that a non-private model can overfit; secure aggregation needs
both), 4 rounds x 5 local epochs,
batch 16, encoder lr 1e-4, head lr 1e-3. Each site plants 50 mislabelled canaries,
each included with probability 1/2 (about 25 beside its ~100 real records); the
auditor guesses on 60 % of them, fixed in advance: "in" for the 15 lowest losses,
"out" for the 15 highest (with all 30 right the bound can reach 2.25 at most). 2
reference models for offline LiRA, 300 population records each, trained
the same way. No PII injection (``data.inject-pii=0``): the attacks compare
members with the sites' held-out records and nothing else should differ.

- ``nondp``: ``dp.enabled=false``.
- ``dp``: ``dp.target-epsilon=8`` (noise multiplier chosen by the accountant for
  the planned rounds), clipping norm 1, delta 1e-5.

Headline (``all sites`` pooled for the attacks; the largest site value for the
epsilons): ``nondp_auc`` and ``nondp_tpr_at_1pct_fpr`` of the stronger attack (LiRA
unless the loss attack does better), ``nondp_empirical_eps``, ``dp_auc``,
``dp_empirical_eps`` and ``dp_claimed_eps`` (the sites' sample-level epsilon for the
run, from their ledgers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

COMMON = {
    "num-server-rounds": 4,
    "train.local-epochs": 5,
    "train.batch-size": 16,
    "train.lr": 1e-4,
    "train.head-lr": 1e-3,
    "model.finetune": "full",
    "model.max-length": 32,
    "data.partition": "iid",
    "data.train-examples": 200,
    "data.test-examples": 200,
    "data.inject-pii": 0.0,
    "min-train-sites": 2,
    "secagg.threshold": 1.0,  # 2 sites: both shares needed (the minimum is 2)
    "audit.canaries": 50,
    "audit.guess-fraction": 0.6,
    "audit.lira-references": 2,
    "audit.reference-examples": 300,
}
RUNS = {
    "nondp": {"dp.enabled": "false"},
    "dp": {"dp.enabled": "true", "dp.target-epsilon": 8.0, "dp.max-grad-norm": 1.0},
}
SITES = 2


def _overrides(values: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"'{v}'" if isinstance(v, str) and v not in ("true", "false") else str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def _best(pooled: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return max(pooled.values(), key=lambda c: c["auc"])


def _run(name: str, values: dict[str, Any], work: Path) -> dict[str, Any]:
    out = work / name
    cmd = [sys.executable, "-m", "fedshield.cli", "simulate", "--audit"]
    cmd += [
        "--out",
        str(out),
        "--sites",
        str(SITES),
        "--run-config",
        _overrides(values),
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(proc.stdout[-3000:], flush=True)
    if proc.returncode not in (0, 3):  # 3: a violation, which is a result
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    audit = json.loads((out / "audit" / "audit.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "final_accuracy": summary["rounds"][-1]["accuracy"],
        "pooled": audit["pooled"],
        "sites": audit["sites"],
        "violations": audit["violations"],
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
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="fedshield-audit-"))
    common = dict(COMMON)
    if args.quick:
        from fedshield.models import write_tiny_bert

        tiny = write_tiny_bert(work / "tiny-bert")
        common.update(
            {
                "model.source": str(tiny),
                "model.max-length": 16,
                "num-server-rounds": 2,
                "train.local-epochs": 2,
                "data.train-examples": 60,
                "data.test-examples": 40,
                "audit.canaries": 20,
                "audit.lira-references": 1,
                "audit.reference-examples": 40,
            }
        )
    results = {
        name: _run(name, {**common, **extra}, work) for name, extra in RUNS.items()
    }

    def site_max(run: str, key: str) -> float | None:
        values = [
            (s["canaries"] or {}).get(key) if key != "claimed_epsilon" else s[key]
            for s in results[run]["sites"]
        ]
        finite = [v for v in values if isinstance(v, int | float)]  # not None/"inf"
        return max(finite) if finite else None

    nondp, dp = _best(results["nondp"]["pooled"]), _best(results["dp"]["pooled"])
    headline = {
        "nondp_auc": nondp["auc"],
        "nondp_tpr_at_1pct_fpr": nondp["tpr_at_0.01_fpr"],
        "nondp_empirical_eps": site_max("nondp", "empirical_epsilon"),
        "dp_auc": dp["auc"],
        "dp_empirical_eps": site_max("dp", "empirical_epsilon"),
        "dp_claimed_eps": site_max("dp", "claimed_epsilon"),
    }
    doc = {
        "headline": headline,
        "config": {"common": common, "runs": RUNS, "sites": SITES, "quick": args.quick},
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"headline": headline}, indent=2))
    return doc


if __name__ == "__main__":
    main()
