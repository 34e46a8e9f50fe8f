"""What each defence costs in clean accuracy, and what it buys against each attack.

Run (25 cells, about 70 minutes on 2 CPU cores; writes
benchmarks/results/robustness.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/robustness.py

Smoke run (tiny random BERT, one round, one cell: median x sign-flip):
``--quick --out /tmp/robustness.json``. ``--work DIR`` keeps every run's folder;
the same command continues a stopped benchmark (finished cells are kept, a cell
stopped before its first checkpoint starts again). ``-c "k=v ..."`` adds
run-config overrides to every cell.

Every cell is one real ``fedshield simulate`` on the packaged MiniLM and review
snippets, with the run config's defaults (LoRA, Dirichlet(1) label skew) and
:data:`SHARED`: 8 sites, 2 of them poisoned, 100 snippets each on average,
2 rounds at batch 8, **without DP**. With sample-level DP at the default sigma
this budget leaves the clean model near chance (0.57 after 2 rounds), and an
attack on a model that learned nothing measures nothing. DP-SGD's clipping bounds
each record's pull, so data attacks under DP are weaker than here; update
attacks (sign-flip, scale) skip the clipping, as a malicious site would.

- **defences** (:data:`DEFENCES`): ``fedavg`` (no defence, under secure
  aggregation: the default), ``root-guard`` (the robust step on the secure mean,
  ``strategy.root-guard``), and Flower's robust rules on individual updates with
  secure aggregation off: ``fedmedian``, ``fedtrimmedavg`` (beta 0.25) and
  ``krum`` (f = 2). MultiKrum lies between Krum and FedAvg; Bulyan needs
  4f+3 = 11 sites for f = 2. Both are left out to keep the run near an hour.
- **attacks** (:data:`ATTACKS`, ``simulation.poison``): none, ``label-flip``
  (fresh -> rotten), ``backdoor`` (trigger -> rotten), ``sign-flip`` and
  ``scale`` (x10 the site's update).

Measured centrally after the last round: test accuracy and macro F1 (clean
records), and the attack's success (:mod:`simulations.poison`): the share of
the source class called the target (``targeted_misclassification``) or of
triggered non-target records called the target (``backdoor_success``).

Headline, per defence: ``clean_cost`` = accuracy(fedavg, no attack) -
accuracy(defence, no attack), and per attack the success under that defence
next to its success under fedavg (``success``), and the accuracy it kept
(``accuracy``). ``best_per_attack``: the defence with the lowest attack success
(ties: the higher accuracy).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # (Opacus installs `benchmarks`)
    sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_runs import same_settings, summary_of, to_resume  # noqa: E402

SITES = 8
POISONED = 2
SHARED = (
    f"simulation.poisoned-sites={POISONED} strategy.num-malicious={POISONED} "
    "data.train-examples=800 data.test-examples=400 model.max-length=32 "
    f"num-server-rounds=2 min-train-sites={SITES} seed=42 "
    "dp.enabled=false train.batch-size=8"
)
#: defence -> run-config overrides
DEFENCES: dict[str, str] = {
    "fedavg": "",
    "root-guard": "strategy.root-guard=true",
    "fedmedian": "strategy.name='fedmedian' secagg.enabled=false",
    "fedtrimmedavg": (
        "strategy.name='fedtrimmedavg' strategy.trim-fraction=0.25 secagg.enabled=false"
    ),
    "krum": "strategy.name='krum' secagg.enabled=false",
}
ATTACKS = ("none", "label-flip", "backdoor", "sign-flip", "scale")
#: the success share each attack is measured by (simulations.poison)
MEASURE = {
    "label-flip": "targeted_misclassification",
    "sign-flip": "targeted_misclassification",
    "scale": "targeted_misclassification",
    "backdoor": "backdoor_success",
}
QUICK = (
    "model.max-length=16 train.batch-size=8 data.train-examples=160 "
    "data.test-examples=60 num-server-rounds=1 pii.mode='off' "
    "strategy.root-examples=20"
)
QUICK_CELLS = (("fedmedian", "sign-flip"),)


def _settings(overrides: list[str]) -> dict[str, Any]:
    """``key -> value`` of run-config override strings (TOML values)."""
    from fedshield.simulations.launcher import override_pairs

    return {
        k: tomllib.loads(f"v = {v}")["v"] for k, v in override_pairs(overrides).items()
    }


def _agrees(config: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a run's config holds every override of the cell."""
    return all(config.get(k) == v for k, v in wanted.items())


def _cell(
    work: Path, defence: str, attack: str, overrides: list[str]
) -> dict[str, Any]:
    """Run (or reuse) one cell; its final round's numbers."""
    out = work / f"{defence}--{attack}"
    cell = f"{DEFENCES[defence]} " + (
        "simulation.poisoned-sites=0"
        if attack == "none"
        else f"simulation.poison='{attack}'"
    )
    wanted = _settings([SHARED, *overrides, cell])
    done = summary_of(out)
    if done and not _agrees(done.get("config", {}), wanted):
        raise SystemExit(
            f"{out} holds a run made with other settings than this cell's "
            f"({wanted}): it was not made by this benchmark's command. Move it "
            "away, or choose another --work."
        )
    if not done or done.get("status") != "completed":
        resume = to_resume(out)
        cmd = [sys.executable, "-m", "fedshield.cli", "simulate", "--out", str(out)]
        cmd += ["--sites", str(SITES)]
        for o in [SHARED, *overrides, cell + (" resume=true" if resume else "")]:
            cmd += ["--run-config", o]
        print(f"$ {defence} x {attack}", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=False)
        done = summary_of(out)
    if not done or done.get("status") != "completed":
        raise SystemExit(f"cell {defence} x {attack} did not complete; see {out}")
    last = done["rounds"][-1]
    guard = [r["guard"] for r in done["rounds"] if r.get("guard")]
    return {
        "defence": defence,
        "attack": attack,
        "accuracy": last["accuracy"],
        "macro_f1": last.get("macro_f1"),
        "success": (last.get("attack") or {}).get(MEASURE.get(attack, ""), None),
        "success_per_round": [
            (r.get("attack") or {}).get(MEASURE.get(attack, ""), None)
            for r in done["rounds"]
        ],
        "accuracy_per_round": [r["accuracy"] for r in done["rounds"]],
        "guard_actions": [g["action"] for g in guard],  # root-guard only
        "out": str(out),
    }


def headline(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per defence: its clean cost and, per attack, success and accuracy beside
    fedavg's; per attack, the defence that blunted it most."""
    by = {(c["defence"], c["attack"]): c for c in cells}
    base = by.get(("fedavg", "none"))
    defences: dict[str, Any] = {}
    for defence in dict.fromkeys(c["defence"] for c in cells):
        row: dict[str, Any] = {}
        clean = by.get((defence, "none"))
        if clean and base:
            row["clean_cost"] = round(base["accuracy"] - clean["accuracy"], 4)
        for attack in ATTACKS[1:]:
            cell, undefended = by.get((defence, attack)), by.get(("fedavg", attack))
            if cell:
                row[attack] = {
                    "success": cell["success"],
                    "fedavg_success": undefended["success"] if undefended else None,
                    "accuracy": cell["accuracy"],
                }
        defences[defence] = row
    best: dict[str, str] = {}
    for attack in ATTACKS[1:]:
        tried = [c for c in cells if c["attack"] == attack and c["success"] is not None]
        if tried:
            top = min(tried, key=lambda c: (c["success"], -c["accuracy"]))
            best[attack] = top["defence"]
    return {"defences": defences, "best_per_attack": best}


def table(cells: list[dict[str, Any]]) -> str:
    """Markdown: one row per defence, per attack 'success / accuracy'."""
    by = {(c["defence"], c["attack"]): c for c in cells}
    lines = [
        "| defence | clean accuracy | "
        + " | ".join(f"{a}: success / acc" for a in ATTACKS[1:])
        + " |",
        "|---" * (len(ATTACKS) + 1) + "|",
    ]
    for defence in dict.fromkeys(c["defence"] for c in cells):
        clean = by.get((defence, "none"))
        row = [defence, f"{clean['accuracy']:.3f}" if clean else "—"]
        for attack in ATTACKS[1:]:
            c = by.get((defence, attack))
            row.append(
                "—"
                if c is None or c["success"] is None
                else f"{c['success']:.3f} / {c['accuracy']:.3f}"
            )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny random BERT, 1 cell")
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/robustness.json"
    )
    p.add_argument("--work", type=Path, default=None, help="keep the runs here")
    p.add_argument(
        "-c", "--run-config", action="append", default=[], help="shared overrides"
    )
    args = p.parse_args()
    overrides = list(args.run_config)
    if args.quick:
        from fedshield.models import write_tiny_bert

        work = args.work or Path(f"/tmp/fedshield-robustness-quick-{time.time_ns()}")
        work.mkdir(parents=True, exist_ok=True)
        tiny = write_tiny_bert(work / "tiny-bert")
        overrides = [f"model.source='{tiny}' {QUICK}", *overrides]
        plan = list(QUICK_CELLS)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        work = args.work or ROOT / "runs" / f"robustness-{stamp}"
        plan = [(d, a) for d in DEFENCES for a in ATTACKS]
    work.mkdir(parents=True, exist_ok=True)
    same_settings(work, {"shared": SHARED, "overrides": overrides, "sites": SITES})
    start = time.perf_counter()
    cells = [_cell(work, d, a, overrides) for d, a in plan]
    result = {
        "headline": headline(cells),
        "table": table(cells),
        "setup": {
            "quick": args.quick,
            "sites": SITES,
            "poisoned": POISONED,
            "shared": SHARED,
            "overrides": overrides,
            "defences": {d: DEFENCES[d] for d in dict.fromkeys(d for d, _ in plan)},
            "machine": f"{platform.machine()}, {platform.platform()}",
            "wall_s": round(time.perf_counter() - start, 1),
            "work": str(work),
        },
        "cells": cells,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(table(cells))
    print(json.dumps(result["headline"], indent=2))


if __name__ == "__main__":
    main()
