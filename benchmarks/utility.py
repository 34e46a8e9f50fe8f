"""What federation and DP cost in accuracy: centralized vs federated vs federated DP.

Run (about 40 minutes on 2 CPU cores; writes benchmarks/results/utility.json and
benchmarks/results/utility.png):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/utility.py

Smoke run (tiny random BERT, one round, epsilon 8 only, no federated
non-private point: two simulations, a few minutes):
``--quick --out /tmp/utility.json``.
``--work DIR`` keeps every run's folder: the same command continues a stopped
benchmark (finished runs are kept, an interrupted one resumes); ``-c "k=v ..."``
adds run-config overrides to every run (how tuned settings are compared).

Every run is a ``fedshield`` command, with the same model, data and passes:

- **centralized, non-private**: ``fedshield simulate --sites 1`` with DP and secure
  aggregation off: one site holds the union of the sites' data (the same
  ``data.train-examples`` snippets, the same test set), trains the same model
  with the same optimizer settings for the same rounds x local epochs. The only
  difference from one long training is that the optimizer state restarts each
  round, as it does at every federated site.
- **federated, non-private** and **federated DP at epsilon 1, 3 and 8**:
  ``fedshield sweep --sites 4 --eps 1,3,8 --non-private``, the run config's
  defaults (Dirichlet(1) label skew, secure aggregation, each site's sigma
  calibrated so that its epsilon ends the planned rounds at the target, delta
  1e-5).

Headline: ``acc_central``, ``acc_fed_nondp``, ``acc_fed_eps1``, ``acc_fed_eps3``,
``acc_fed_eps8`` (final test accuracy) and ``gap_eps8`` = acc_central -
acc_fed_eps8. Target: ``gap_eps8 <= 0.03``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # (Opacus installs `benchmarks`)
    sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_runs import same_settings, summary_of, to_resume  # noqa: E402

EPSILONS = (1.0, 3.0, 8.0)
SITES = 4
QUICK = (
    "model.max-length=16 train.batch-size=8 data.train-examples=160 "
    "data.test-examples=60 num-server-rounds=1 pii.mode='off'"
)


def _fedshield(args: list[str]) -> int:
    cmd = [sys.executable, "-m", "fedshield.cli", *args]
    print("$ fedshield " + " ".join(args), flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=False).returncode


def _central(work: Path, overrides: list[str]) -> dict[str, Any]:
    out = work / "central"
    done = summary_of(out)
    if not done or done.get("status") != "completed":
        resume = to_resume(out)
        _fedshield(
            [
                "simulate",
                "--out",
                str(out),
                "--sites",
                "1",
                *[a for o in overrides for a in ("--run-config", o)],
                "--run-config",
                "dp.enabled=false secagg.enabled=false min-train-sites=1"
                + (" resume=true" if resume else ""),
            ]
        )
        done = summary_of(out)
    if not done or done.get("status") != "completed":
        raise SystemExit(f"the centralized run did not complete; see {out}/flwr.log")
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny random BERT, toy sizes")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/utility.json")
    p.add_argument("--work", type=Path, default=None, help="keep the runs here")
    p.add_argument("--seeds", type=int, default=1, help="seeds per point (sweep)")
    p.add_argument(
        "-c", "--run-config", action="append", default=[], help="shared overrides"
    )
    args = p.parse_args()
    from fedshield.cli.sweep import plot_sweep

    overrides = list(args.run_config)
    if args.quick:
        from fedshield.models import write_tiny_bert

        work = args.work or Path(f"/tmp/fedshield-utility-quick-{time.time_ns()}")
        tiny = write_tiny_bert(work / "tiny-bert")
        overrides = [f"model.source='{tiny}' {QUICK}", *overrides]
    else:
        work = args.work or ROOT / "runs" / f"utility-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    same_settings(work, {"overrides": overrides, "seeds": args.seeds})
    start = time.perf_counter()
    epsilons = (8.0,) if args.quick else EPSILONS  # quick: the mechanics only
    central = _central(work, overrides)
    code = _fedshield(
        [
            "sweep",
            "--out",
            str(work / "federated"),
            "--eps",
            ",".join(f"{e:g}" for e in epsilons),
            "--seeds",
            str(args.seeds),
            *([] if args.quick else ["--non-private"]),
            "--sites",
            str(SITES),
            *[a for o in overrides for a in ("--run-config", o)],
        ]
    )
    swept = json.loads((work / "federated" / "sweep.json").read_text())
    if code != 0:
        raise SystemExit(f"the sweep did not complete; see {work / 'federated'}")
    rows = {r["epsilon"]: r for r in swept["by_epsilon"]}
    acc_central = central["rounds"][-1]["accuracy"]
    headline: dict[str, Any] = {
        "acc_central": acc_central,
        "acc_fed_nondp": rows[None]["accuracy_mean"] if None in rows else None,
        **{
            f"acc_fed_eps{e:g}": rows[e]["accuracy_mean"] if e in rows else None
            for e in EPSILONS
        },
    }
    headline["gap_eps8"] = round(acc_central - headline["acc_fed_eps8"], 4)
    headline["gap_eps8_target"] = 0.03
    headline["gap_eps8_met"] = headline["gap_eps8"] <= 0.03
    plot = args.out.with_suffix(".png")
    plot_sweep(
        swept["by_epsilon"],
        plot,
        f"packaged MiniLM, {SITES} sites Dirichlet(1)" if not args.quick else "quick",
        references={"centralized, non-private": acc_central},
    )
    result = {
        "headline": headline,
        "setup": {
            "quick": args.quick,
            "sites": SITES,
            "overrides": overrides,
            "run_config": central["config"],
            "central": "fedshield simulate --sites 1, dp and secure aggregation off",
            "federated": "fedshield sweep --sites 4 --eps 1,3,8 --non-private",
            "seeds": args.seeds,
            "machine": f"{platform.machine()}, {platform.platform()}",
            "wall_s": round(time.perf_counter() - start, 1),
            "work": str(work),
            "plot": str(plot),
        },
        "central": {
            "accuracy_per_round": [r["accuracy"] for r in central["rounds"]],
            "macro_f1": central["rounds"][-1].get("macro_f1"),
        },
        "federated": swept,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(headline, indent=2))


if __name__ == "__main__":
    main()
