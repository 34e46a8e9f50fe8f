"""The causal LM, measured: what DP costs per step, what it costs in perplexity,
and what it buys against memorization.

Run (about 45 minutes on 2 quiet CPU cores, 30 with ``--step-cost``; writes
benchmarks/results/lm.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/lm.py

Smoke run (tiny random Llama, a few minutes): ``--quick --out /tmp/lm.json``.
``--step-cost benchmarks/results/dp_overhead_smollm2.json`` reuses a step-cost
measurement taken on quiet cores (the federated runs' timings matter less).

Settings, fixed before any run:

- **Step cost** (``benchmarks/dp_overhead.py --model smollm2``, one subprocess per
  configuration): the packaged SmolLM2-135M-Instruct, batch 8, length 128, 2
  threads; non-DP, book-keeping (ours, the default), Opacus hooks and Opacus
  ghost, for LoRA r=8 on q_proj,v_proj and for full fine-tuning (tied embedding
  frozen); median step over 2 rounds x 3 timed steps; memory as peak step RSS.
- **Federated runs** (``fedshield simulate --preset causal-lm --audit``): 4 sites,
  the preset's data (400 training review snippets as text, 100 held out, 10 %
  with a synthetic PII sentence, scrubbed), LoRA, secure aggregation, 2 rounds x
  1 local epoch (same data and passes for both runs), 100 secret canaries per
  site (each trained on once with probability 1/2: the one-run test's) and 10
  more secrets per site trained on 6 times each (a secret seen once stayed at
  chance without DP even after 2 rounds x 2 epochs: mean exposure 1.47-1.94
  bits against 1.34-1.58 for held-out secrets, one site of 4 per number,
  measured before this setting);
  ``nondp`` with ``dp.enabled=false``, ``dp`` with DP-SGD calibrated to
  epsilon 8 per site over the run (delta 1e-5). No LiRA reference models.

Headline: ``lora_step_ratio`` (target <= 1.15), ``full_step_ratio``,
``mem_ratio`` (LoRA, DP / non-DP peak step memory), ``ppl_base`` (the packaged
model before fine-tuning, central test set), ``ppl_nondp``, ``ppl_dp_eps8``
(target: within 15 % of ``ppl_nondp``), ``ppl_dp_vs_nondp``, ``exposure_nondp``
and ``exposure_dp`` (mean exposure in bits of the secrets trained on 6 times, all
sites; ``exposure_once_*`` of those trained on once; ``exposure_chance`` is
what held-out secrets show by chance, and ``exposure_held_out_*`` what they
showed), and each run's seconds.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

FEDERATED: dict[str, Any] = {
    "train.local-epochs": 1,
    "audit.canaries": 100,
    "audit.repeated-secrets": 10,
    "audit.secret-repeats": 6,
    "audit.lira-references": 0,
}
RUNS: dict[str, dict[str, Any]] = {
    "nondp": {"dp.enabled": "false"},
    "dp": {"dp.enabled": "true", "dp.target-epsilon": 8.0},
}
SITES = 4


def _overrides(values: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"'{v}'" if isinstance(v, str) and v not in ("true", "false") else str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def _federated(name: str, values: dict[str, Any], work: Path) -> dict[str, Any]:
    out = work / name
    cmd = [sys.executable, "-m", "fedshield.cli", "simulate", "--preset", "causal-lm"]
    cmd += ["--audit", "--out", str(out), "--sites", str(SITES)]
    cmd += ["--run-config", _overrides(values)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(proc.stdout[-3000:], flush=True)
    if proc.returncode not in (0, 3, 4, 5):  # a verdict's exit code is a result
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    audit = json.loads((out / "audit" / "audit.json").read_text())
    by_repeats: dict[int, list[float]] = {}
    for site in audit["exposure"].values():
        for s in site["secrets"]:
            by_repeats.setdefault(int(s["repeats"]), []).append(s["exposure"])
    held, once = by_repeats.pop(0), by_repeats.pop(1)
    repeated = [e for k in sorted(by_repeats) for e in by_repeats[k]]
    chance = next(iter(audit["exposure"].values()))["chance"]
    return {
        "seconds": round(seconds, 1),
        "exit_code": proc.returncode,
        "ppl_initial": summary["initial"]["perplexity"],
        "ppl_final": summary["rounds"][-1]["perplexity"],
        "token_accuracy": summary["rounds"][-1]["accuracy"],
        "epsilon": {n: s["epsilon"] for n, s in summary["sites"].items()},
        "exposure_repeated": sum(repeated) / len(repeated),
        "exposure_once": sum(once) / len(once),
        "exposure_held_out": sum(held) / len(held),
        "exposure_chance": chance,
        "loss_attack_auc": audit["pooled"]["phi"]["auc"],
        "verdict": audit["verdict"],
        "pooled_test": audit["pooled_test"],
        "generation": summary.get("generation"),
        "run_dir": str(out),
    }


def _step_cost(quick: bool, work: Path, reuse: Path | None) -> dict[str, Any]:
    import dp_overhead

    if reuse is not None:  # measured earlier on quiet cores by the same command
        measured: dict[str, Any] = json.loads(reuse.read_text())
        if "SmolLM2" not in str(measured.get("workload", {}).get("model")):
            raise SystemExit(
                f"{reuse} is not a `dp_overhead.py --model smollm2` result."
            )
        return {**measured, "reused_from": str(reuse)}
    out = work / "step_cost.json"
    args = ["--model", "smollm2", "--out", str(out)]
    args += ["--quick"] if quick else ["--batch", "8", "--seq-len", "128"]
    args += [] if quick else ["--warmup", "1", "--steps", "3", "--rounds", "2"]
    dp_overhead.main(args)
    return json.loads(out.read_text())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/lm.json")
    parser.add_argument("--work", type=Path, default=None, help="where runs go")
    parser.add_argument("--quick", action="store_true", help="tiny random Llama")
    parser.add_argument(
        "--step-cost",
        type=Path,
        default=None,
        help="reuse this `dp_overhead.py --model smollm2` result (measured on quiet "
        "cores) instead of measuring the step cost again",
    )
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="fedshield-lm-"))
    work.mkdir(parents=True, exist_ok=True)
    federated = dict(FEDERATED)
    if args.quick:
        from fedshield.models import write_tiny_causal_lm

        tiny = write_tiny_causal_lm(work / "tiny-llama")
        federated.update(
            {
                "model.source": str(tiny),
                "model.max-length": 40,
                "data.train-examples": 120,
                "data.test-examples": 40,
                "train.batch-size": 8,
                "train.lr": 0.01,
                "audit.canaries": 20,
                "audit.repeated-secrets": 4,
                "eval.generate-tokens": 4,
            }
        )
    steps = _step_cost(args.quick, work, args.step_cost)
    runs = {n: _federated(n, {**federated, **RUNS[n]}, work) for n in RUNS}
    nondp, dp = runs["nondp"], runs["dp"]
    step = steps["headline"]
    headline = {
        "lora_step_ratio": step["lora_step_ratio"],
        "full_step_ratio": step["full_step_ratio"],
        "mem_ratio": step["lora_mem_ratio"],
        "full_mem_ratio": step["full_mem_ratio"],
        "opacus_hooks_lora_step_ratio": step["opacus_hooks_lora_step_ratio"],
        "opacus_ghost_lora_step_ratio": step["opacus_ghost_lora_step_ratio"],
        "opacus_hooks_full_step_ratio": step["opacus_hooks_full_step_ratio"],
        "opacus_ghost_full_step_ratio": step["opacus_ghost_full_step_ratio"],
        "ppl_base": nondp["ppl_initial"],
        "ppl_nondp": nondp["ppl_final"],
        "ppl_dp_eps8": dp["ppl_final"],
        "ppl_dp_vs_nondp": dp["ppl_final"] / nondp["ppl_final"],
        "exposure_nondp": nondp["exposure_repeated"],
        "exposure_dp": dp["exposure_repeated"],
        "exposure_once_nondp": nondp["exposure_once"],
        "exposure_once_dp": dp["exposure_once"],
        "exposure_held_out_nondp": nondp["exposure_held_out"],
        "exposure_held_out_dp": dp["exposure_held_out"],
        "exposure_chance": dp["exposure_chance"],
        "dp_max_epsilon": max(dp["epsilon"].values()),
        "nondp_seconds": nondp["seconds"],
        "dp_seconds": dp["seconds"],
        "targets": {"lora_step_ratio": 1.15, "ppl_dp_vs_nondp": 1.15},
    }
    doc = {
        "headline": headline,
        "config": {"federated": federated, "runs": RUNS, "sites": SITES},
        "step_cost": steps,
        "runs": runs,
        "quick": args.quick,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps(headline, indent=2), flush=True)
    return doc


if __name__ == "__main__":
    main()
