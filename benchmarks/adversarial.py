"""Adversarial training under DP-SGD, measured: what it costs per step, what it buys
in robustness, and what it does to membership inference.

Run (about 60 minutes on 2 CPU cores; writes benchmarks/results/adversarial.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/adversarial.py

Smoke run (tiny random BERT, a few minutes): ``--quick --out /tmp/adv.json``.
On 2 cores the six runs take hours; with ``--work DIR`` a finished run is kept
and reused, and ``--runs NAME ...`` runs only those now (the results file is
written once every run is finished).

Settings, fixed before any run:

- **Step cost** (in-process, 2 threads): the packaged all-MiniLM-L6-v2, LoRA r=8
  (the default), batch 32 of real review snippets padded to their longest (at
  most 64 tokens), book-keeping DP-SGD (sigma 1, C 1); the median of 6 timed
  steps after 2 untimed, per method (clean, fgm, pgd K=3, freelb K=3, mix 0.5);
  ``step_cost_ratio[method]`` = its median step over the clean DP step.
- **Federated runs** (``fedshield simulate`` then ``fedshield audit``): 4 sites,
  the default data (Dirichlet(1) shares of 2,000 review snippets, 1,000 test),
  LoRA, DP-SGD calibrated to epsilon 8 per site over the run (delta 1e-5),
  secure aggregation, 3 rounds, the same seed, data and passes for every method;
  ``base`` without adversarial training, then ``fgm``, ``pgd`` and ``freelb``
  (K = 3, l2 ball of radius ``RADIUS`` = 0.02 per token, mix 0.5). The final
  model of every run is attacked (``fedshield evaluate --attack``) on the first
  300 test records: embedding PGD (10 steps) at the training radius, and the
  character attack with 3 edited words (a per-round ``eval.attacks`` would
  triple the run time on 2 cores). The audit: the loss attack per record,
  pooled over the sites (no canaries, no LiRA references), ``mia_auc`` its AUC.
  Two more runs without DP (``base_nondp``, ``pgd_nondp``) show the membership
  risk adversarial training adds when nothing holds it down (Song, Shokri and
  Mittal, CCS 2019).

Why 0.02: MiniLM's word embeddings have norms near 1.07, and a model trained
without the defense (one site, LoRA, DP sigma 0.9, 3 epochs) has accuracy 0.375
under 10-step PGD at 0.02, 0.085 at 0.05 and 0.005 at 0.1 (clean 0.71):
at 0.05 and above the attack leaves little to defend at this model size.

Headline: ``clean_acc_base``, ``robust_acc_base``, ``charattack_success_base``,
``mia_auc_base``, then for each method ``clean_acc_<m>``, ``robust_acc_<m>``,
``charattack_success_<m>``, ``mia_auc_<m>``, ``step_cost_ratio_<m>``; and
``*_adv``: the method with the highest robust accuracy (every method is
reported); ``mia_auc_base_nondp``, ``mia_auc_pgd_nondp`` and their robust
accuracies. Targets: ``robust_acc_adv >= robust_acc_base + 0.10``, ``clean_acc_adv
>= clean_acc_base - 0.02``, ``mia_auc_adv <= 0.56``, ``step_cost_ratio_fgm <=
2.2``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RADIUS = 0.02
METHODS = ("fgm", "pgd", "freelb")
RUNS = ("base", *METHODS, "base_nondp", "pgd_nondp")
FEDERATED: dict[str, Any] = {
    "num-server-rounds": 3,
    "data.train-examples": 2000,
    "data.test-examples": 1000,
    "dp.target-epsilon": 8.0,
    "adversarial.epsilon": RADIUS,
    "adversarial.steps": 3,
    "eval.robust-epsilon": RADIUS,
    "eval.attack-examples": 300,
    "audit.lira-references": 0,
}
SITES = 4


def _fmt(v: Any) -> str:
    return f"'{v}'" if isinstance(v, str) and v not in ("true", "false") else str(v)


def _cli(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fedshield.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def _finished(name: str, values: dict[str, Any], work: Path) -> dict[str, Any] | None:
    """The result of run ``name`` that a previous invocation with the same
    ``--work`` and settings left, if any."""
    done = work / f"{name}.result.json"
    if done.exists():
        kept = json.loads(done.read_text())
        if kept.get("values") == values:
            print(f"{name}: reusing {done}", flush=True)
            return dict(kept["result"])
    return None


def _federated(name: str, values: dict[str, Any], work: Path) -> dict[str, Any]:
    """One simulation and its audit, or the result a previous invocation with the
    same ``--work`` and settings left (a crash later costs no rerun)."""
    out = work / name
    done = work / f"{name}.result.json"
    kept = _finished(name, values, work)
    if kept is not None:
        return kept
    overrides = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
    start = time.perf_counter()
    proc = _cli(
        [
            "simulate",
            "--out",
            str(out),
            "--sites",
            str(SITES),
            "--run-config",
            overrides,
        ]
    )
    seconds = time.perf_counter() - start
    print(proc.stdout[-2000:], flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    evaluated = _cli(["evaluate", str(out), "--attack"])
    if evaluated.returncode != 0:
        raise SystemExit(f"evaluate of {name} failed:\n{evaluated.stdout[-3000:]}")
    audited = _cli(["audit", str(out), "--sites", str(SITES)])
    if audited.returncode not in (0, 3, 4, 5):  # a verdict's exit code is a result
        raise SystemExit(f"audit of {name} failed:\n{audited.stdout[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    audit = json.loads((out / "audit" / "audit.json").read_text())
    robust = json.loads((out / "evaluation.json").read_text())["metrics"]
    last = summary["rounds"][-1]
    result = {
        "seconds": round(seconds, 1),
        "clean_acc": last["accuracy"],
        "robust_acc": robust["robust_accuracy"],
        "charattack_success": robust["char_attack_success"],
        "char_attacked": robust["char_attacked"],
        "attack_examples": robust["attack_examples"],
        "rounds": [
            {k: r[k] for k in ("accuracy", "loss", "train_loss")}
            for r in summary["rounds"]
        ],
        "epsilon": {n: s["epsilon"] for n, s in summary["sites"].items()},
        "mia_auc": audit["pooled"]["phi"]["auc"],
        "mia_tpr_at_1pct_fpr": audit["pooled"]["phi"].get("tpr_at_fpr"),
        "run_dir": str(out),
    }
    done.write_text(json.dumps({"values": values, "result": result}, default=str))
    return result


def _step_cost(quick: bool, work: Path) -> dict[str, Any]:
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    from fedshield.client.trainer import adversarial_backward
    from fedshield.models import ModelConfig, load_model, write_tiny_bert
    from fedshield.models.tasks import classification_loss
    from fedshield.models.texts import batch_inputs, tokenize
    from fedshield.privacy.adversarial import AdversarialConfig, AdversarialMethod
    from fedshield.privacy.dp import GradSampleMode, make_private
    from fedshield.simulations.datasets import rotten_tomatoes

    torch.set_num_threads(2)
    source = str(write_tiny_bert(work / "tiny-bert")) if quick else ""
    loaded = load_model(ModelConfig(source=source))
    texts = rotten_tomatoes().subset(list(range(32)))
    data = tokenize(texts, loaded.tokenizer, max_length=64)
    batch = next(iter(DataLoader(data, batch_size=32, collate_fn=data.collate)))
    inputs, labels = batch_inputs(batch, torch.device("cpu"))
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    private = make_private(
        engine=PrivacyEngine(accountant="rdp"),
        module=loaded.model,
        optimizer=torch.optim.AdamW(params, lr=1e-4),
        data_loader=DataLoader(data, batch_size=32, collate_fn=data.collate),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        mode=GradSampleMode.BOOKKEEPING,
        several_calls=True,
    )
    loaded.model.train()
    warmup, timed = (1, 2) if quick else (2, 6)
    medians: dict[str, float] = {}
    for method in ("off", *METHODS):
        cfg = AdversarialConfig(
            method=AdversarialMethod(method), epsilon=RADIUS, steps=3
        )
        times = []
        for i in range(warmup + timed):
            start = time.perf_counter()
            private.optimizer.zero_grad(set_to_none=True)
            if cfg.enabled:
                adversarial_backward(
                    private,
                    loaded.model,
                    inputs,
                    labels,
                    per_sample_loss=classification_loss,
                    cfg=cfg,
                    params=params,
                    generator=torch.Generator().manual_seed(i),
                    precision=contextlib.nullcontext(),
                )
            else:
                logits = private.module(**inputs).logits
                private.backward(logits, labels)
            private.optimizer.step()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        medians[method] = statistics.median(times)
        print(f"step {method}: {medians[method]:.3f}s", flush=True)
    private.close()
    return {
        "median_step_s": medians,
        "step_cost_ratio": {m: medians[m] / medians["off"] for m in METHODS},
        "workload": {"batch": 32, "max_length": 64, "warmup": warmup, "timed": timed},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/adversarial.json"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="where runs go; a run already finished there with the same settings "
        "is reused (a fresh temporary folder by default)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny random BERT")
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=RUNS,
        default=None,
        help="run only these now (with --work: the others are reused when finished "
        "there); the results file is written once every run is finished",
    )
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="fedshield-adv-"))
    work.mkdir(parents=True, exist_ok=True)
    federated = dict(FEDERATED)
    if args.quick:
        from fedshield.models import write_tiny_bert

        tiny = write_tiny_bert(work / "tiny-bert-federated")
        federated.update(
            {
                "model.source": str(tiny),
                "model.max-length": 24,
                "num-server-rounds": 1,
                "data.train-examples": 200,
                "data.test-examples": 60,
                "eval.attack-examples": 30,
                "eval.robust-steps": 3,
            }
        )
    steps = _step_cost(args.quick, work)
    # the privacy cost of robustness without DP (Song, Shokri and Mittal 2019)
    no_dp = {**federated, "dp.enabled": "false"}
    settings = {
        "base": federated,
        **{m: {**federated, "adversarial.method": m} for m in METHODS},
        "base_nondp": no_dp,
        "pgd_nondp": {**no_dp, "adversarial.method": "pgd"},
    }
    runs = {}
    for name in RUNS:
        if args.runs is None or name in args.runs:
            runs[name] = _federated(name, settings[name], work)
        elif (kept := _finished(name, settings[name], work)) is not None:
            runs[name] = kept
    missing = [name for name in RUNS if name not in runs]
    if missing:
        print(f"Not written: {', '.join(missing)} not run yet (--work {work}).")
        return {"runs": runs, "missing": missing, "step_cost": steps}
    base = runs["base"]
    best = max(METHODS, key=lambda m: runs[m]["robust_acc"])
    headline: dict[str, Any] = {
        "clean_acc_base": base["clean_acc"],
        "robust_acc_base": base["robust_acc"],
        "charattack_success_base": base["charattack_success"],
        "mia_auc_base": base["mia_auc"],
    }
    for m in METHODS:
        headline |= {
            f"clean_acc_{m}": runs[m]["clean_acc"],
            f"robust_acc_{m}": runs[m]["robust_acc"],
            f"charattack_success_{m}": runs[m]["charattack_success"],
            f"mia_auc_{m}": runs[m]["mia_auc"],
            f"step_cost_ratio_{m}": steps["step_cost_ratio"][m],
        }
    headline |= {
        "adv_method": best,
        "clean_acc_adv": runs[best]["clean_acc"],
        "robust_acc_adv": runs[best]["robust_acc"],
        "charattack_success_adv": runs[best]["charattack_success"],
        "mia_auc_adv": runs[best]["mia_auc"],
        "mia_auc_base_nondp": runs["base_nondp"]["mia_auc"],
        "mia_auc_pgd_nondp": runs["pgd_nondp"]["mia_auc"],
        "robust_acc_base_nondp": runs["base_nondp"]["robust_acc"],
        "robust_acc_pgd_nondp": runs["pgd_nondp"]["robust_acc"],
        "step_cost_ratio": steps["step_cost_ratio"],
        "robust_radius": RADIUS,
        "max_epsilon": max(  # the DP runs' (the non-DP ones report "inf")
            e for n in ("base", *METHODS) for e in runs[n]["epsilon"].values()
        ),
        "targets": {
            "robust_acc_gain": 0.10,
            "clean_acc_drop": 0.02,
            "mia_auc_adv": 0.56,
            "step_cost_ratio_fgm": 2.2,
        },
    }
    doc = {
        "headline": headline,
        "config": {"federated": federated, "sites": SITES, "methods": METHODS},
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
