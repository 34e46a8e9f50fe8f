"""``fedshield sweep``: what privacy costs in accuracy on your data, with error bars.

    fedshield sweep --out runs/sweep --eps 1,3,8 --seeds 3
    fedshield sweep --out runs/sweep --eps 0.5,2,8 --seeds 2 --data my.csv \\
        --run-config "num-server-rounds=5" --non-private

One ``fedshield simulate`` per (epsilon, seed) point (seeds ``--first-seed`` (42),
43, ... up to ``--seeds`` of them), each into its own folder of
``--out`` (``eps<e>-seed<s>``; ``nondp-seed<s>`` for the non-private reference run of
``--non-private``), with ``dp.target-epsilon=<e> seed=<s>`` added to the
``--run-config`` every point shares. Every point is a whole simulation with the same
data, sites, secure aggregation and site policies as ``simulate``: what the plot
shows is what a run with that epsilon gives, not an estimate.

Writes ``OUT/sweep.json`` (every point's final accuracy, macro F1 and the largest
sample-level epsilon a site spent; per epsilon the mean, the sample standard
deviation and the number of finished seeds) and ``OUT/sweep.png`` (accuracy
against epsilon, error bars one standard deviation, the non-private mean as a
dashed line), both rewritten after every point. A sweep that stops is continued
by the same command: a finished point is kept, an interrupted one resumes from
its checkpoint, one stopped before its first checkpoint starts again (its files
moved aside). A folder holding another run or other files, or an ``OUT`` whose
sweep.json records other shared settings (``--run-config``, ``--sites``, the data
files), is never overwritten: the sweep refuses before it starts anything.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedshield.common.layout import RunLayout
from fedshield.common.storage import atomic_write_json
from fedshield.simulations.launcher import override_pairs

__all__ = ["SweepPoint", "plan_points", "summarize_points", "sweep"]

console = Console()


@dataclass(frozen=True)
class SweepPoint:
    """One simulation of a sweep: ``epsilon`` None is the non-private run."""

    epsilon: float | None
    seed: int
    out: Path

    @property
    def overrides(self) -> str:
        if self.epsilon is None:
            return f"dp.enabled=false seed={self.seed}"
        return f"dp.enabled=true dp.target-epsilon={self.epsilon!r} seed={self.seed}"

    def matches(self, config: dict[str, Any]) -> bool:
        """Whether a run config saved in a summary is this point's."""
        if config.get("seed") != self.seed:
            return False
        if self.epsilon is None:
            return config.get("dp.enabled") is False
        return config.get("dp.enabled", True) is not False and math.isclose(
            float(config.get("dp.target-epsilon", 0.0)), self.epsilon
        )


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise typer.BadParameter(
            f"expected comma-separated numbers, found {text!r}", param_hint=what
        ) from err
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if not values or bad:
        raise typer.BadParameter(
            f"every epsilon must be a finite number > 0, found {text!r} (for the "
            "non-private reference add --non-private)",
            param_hint=what,
        )
    return sorted(set(values))


def plan_points(
    out: Path, eps: list[float], seeds: list[int], non_private: bool
) -> list[SweepPoint]:
    points = [
        SweepPoint(e, s, out / f"eps{e:.12g}-seed{s}") for e in eps for s in seeds
    ]
    if non_private:
        points += [SweepPoint(None, s, out / f"nondp-seed{s}") for s in seeds]
    return points


def _saved(point: SweepPoint) -> dict[str, Any] | None:
    try:
        return json.loads(RunLayout(point.out).summary.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _point_result(point: SweepPoint, summary: dict[str, Any] | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "epsilon": point.epsilon,
        "seed": point.seed,
        "out": str(point.out),
        "status": (summary or {}).get("status", "failed"),
    }
    if summary and summary.get("status") == "completed":
        final = summary["rounds"][-1]
        spent = [
            s["epsilon"]
            for s in summary.get("sites", {}).values()
            if isinstance(s.get("epsilon"), int | float)
        ]
        result.update(
            accuracy=final["accuracy"],
            macro_f1=final.get("macro_f1"),
            epsilon_spent_max=max(spent) if spent else None,
            rounds=final["round"],
        )
    elif summary:
        result["error"] = summary.get("error")
    return result


def summarize_points(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epsilon (None last): mean and sample std of the finished points."""
    keys = sorted(
        {r["epsilon"] for r in results},
        key=lambda e: (e is None, e if e is not None else 0.0),
    )
    rows = []
    for eps in keys:
        done = [r for r in results if r["epsilon"] == eps and "accuracy" in r]
        row: dict[str, Any] = {"epsilon": eps, "n": len(done)}
        for metric in ("accuracy", "macro_f1"):
            values = [r[metric] for r in done if r.get(metric) is not None]
            row[f"{metric}_mean"] = statistics.fmean(values) if values else None
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def plot_sweep(
    rows: list[dict[str, Any]],
    path: Path,
    title: str,
    references: dict[str, float] | None = None,
) -> None:
    """Accuracy against epsilon with one-std error bars; the non-private row and
    each of ``references`` (label -> accuracy) as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    private = [r for r in rows if r["epsilon"] is not None and r["n"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    if private:
        ax.errorbar(
            [r["epsilon"] for r in private],
            [r["accuracy_mean"] for r in private],
            yerr=[r["accuracy_std"] for r in private],
            marker="o",
            capsize=4,
            label="federated, DP-SGD",
        )
        ax.set_xscale("log")
        ax.set_xticks([r["epsilon"] for r in private])
        ax.set_xticklabels([f"{r['epsilon']:g}" for r in private])
        ax.xaxis.set_minor_formatter(NullFormatter())
    for r in rows:
        if r["epsilon"] is None and r["n"]:
            ax.axhline(
                r["accuracy_mean"],
                linestyle="--",
                color="grey",
                label="federated, non-private",
            )
            ax.axhspan(
                r["accuracy_mean"] - r["accuracy_std"],
                r["accuracy_mean"] + r["accuracy_std"],
                color="grey",
                alpha=0.15,
            )
    for (label, value), style in zip(
        (references or {}).items(), (":", "-.", "--"), strict=False
    ):
        ax.axhline(value, linestyle=style, color="black", label=label)
    ax.set_xlabel("target epsilon per site (delta as configured)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# what a simulation leaves in its folder before its first summary.json
OWN_FILES = {"flwr.log", "superlink.log", "progress.json", "sites"}


def _state(point: SweepPoint) -> str:
    """``new``, ``done``, ``resume`` (a checkpoint to continue), ``restart`` (a
    stopped attempt with nothing to resume: moved aside, started again) or
    ``foreign`` (another run or other files: never touched)."""
    if not point.out.exists():
        return "new"
    if not point.out.is_dir():
        return "foreign"
    summary = _saved(point)
    if summary is not None and not point.matches(summary.get("config", {})):
        return "foreign"
    if summary is not None and summary.get("status") == "completed":
        return "done"
    if RunLayout(point.out).checkpoint.exists():
        return "resume"
    left = {p.name for p in point.out.iterdir()}
    if summary is not None:
        left.discard(RunLayout(point.out).summary.name)
    return "restart" if left <= OWN_FILES else "foreign"


def _check(out: Path, points: list[SweepPoint], settings: dict[str, Any]) -> None:
    """Refuse before anything runs when ``out`` or a point's folder holds anything
    this sweep did not make with these shared settings."""
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file, not a folder.", param_hint="--out")
    try:
        earlier = json.loads((out / "sweep.json").read_text()).get("settings")
    except (OSError, json.JSONDecodeError):
        earlier = None
    if earlier is not None and earlier != settings:
        raise typer.BadParameter(
            f"{out} holds a sweep with other shared settings ({earlier}); its points "
            f"would not compare with these ({settings}). It is left untouched. "
            "Choose another --out.",
            param_hint="--out",
        )
    for point in points:
        if _state(point) == "foreign":
            raise typer.BadParameter(
                f"{point.out} holds another run or files this sweep did not write "
                "(another seed or epsilon, or not a fedshield run); it is left "
                "untouched. Choose another --out.",
                param_hint="--out",
            )


def _simulate(point: SweepPoint, shared: list[str], args: list[str]) -> None:
    state = _state(point)
    if state == "restart":  # a stopped attempt with no checkpoint: kept aside
        k = 1
        while (aside := point.out.with_name(f"{point.out.name}.stopped-{k}")).exists():
            k += 1
        point.out.rename(aside)
        console.print(
            f"[dim]{point.out} had stopped before round 1: moved to "
            f"{aside.name}, starting again[/dim]"
        )
    extra = " resume=true" if state == "resume" else ""
    cmd = [
        sys.executable,
        "-m",
        "fedshield.cli",
        "simulate",
        "--out",
        str(point.out),
        *args,
        *[a for item in shared for a in ("--run-config", item)],
        "--run-config",
        point.overrides + extra,
    ]
    subprocess.run(cmd, check=False)


def sweep(
    out: Annotated[
        Path, typer.Option("--out", help="Folder of the sweep (one run per point).")
    ],
    eps: Annotated[
        str,
        typer.Option(
            "--eps", help="Comma-separated target epsilons per site, e.g. 1,3,8."
        ),
    ] = "1,3,8",
    seeds: Annotated[
        int, typer.Option("--seeds", min=1, help="Seeds per epsilon.")
    ] = 3,
    first_seed: Annotated[
        int,
        typer.Option("--first-seed", help="Seeds are first-seed, first-seed + 1, ..."),
    ] = 42,
    non_private: Annotated[
        bool,
        typer.Option(
            "--non-private",
            help="Also run each seed without DP (dp.enabled=false): the reference.",
        ),
    ] = False,
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--run-config",
            "-c",
            help="Overrides every point shares (as for simulate); the sweep sets "
            "dp.enabled, dp.target-epsilon and seed itself.",
        ),
    ] = None,
    sites: Annotated[
        int | None, typer.Option("--sites", min=1, help="As for simulate.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="As for simulate.")
    ] = None,
    test: Annotated[
        Path | None, typer.Option("--test", help="As for simulate.")
    ] = None,
    sites_dir: Annotated[
        Path | None, typer.Option("--sites-dir", help="As for simulate.")
    ] = None,
) -> None:
    """Accuracy against epsilon: one simulation per (epsilon, seed); OUT/sweep.json
    and OUT/sweep.png with error bars."""
    shared = list(run_config or [])
    taken = {"dp.enabled", "dp.target-epsilon", "seed", "resume", "out-dir"}
    clash = sorted(taken & set(override_pairs(shared)))
    if clash:
        raise typer.BadParameter(
            f"the sweep sets {', '.join(clash)} itself for every point; remove "
            f"{'it' if len(clash) == 1 else 'them'} from --run-config",
            param_hint="--run-config",
        )
    out = out.expanduser().resolve()
    seed_list = list(range(first_seed, first_seed + seeds))
    points = plan_points(out, _floats(eps, "--eps"), seed_list, non_private)
    args = [] if sites is None else ["--sites", str(sites)]
    for flag, path in (("--data", data), ("--test", test), ("--sites-dir", sites_dir)):
        if path is not None:
            args += [flag, str(path.expanduser().resolve())]
    settings = {"run_config": shared, "simulate_args": args}
    _check(out, points, settings)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for k, point in enumerate(points, 1):
        summary = _saved(point)
        what = "non-private" if point.epsilon is None else f"epsilon {point.epsilon:g}"
        if summary and summary.get("status") == "completed":
            console.print(
                f"[dim]point {k}/{len(points)} ({what}, seed "
                f"{point.seed}): finished earlier, kept[/dim]"
            )
        else:
            console.rule(f"point {k}/{len(points)}: {what}, seed {point.seed}")
            _simulate(point, shared, args)
            summary = _saved(point)
        results.append(_point_result(point, summary))
        rows = summarize_points(results)
        atomic_write_json(
            out / "sweep.json",
            {"settings": settings, "points": results, "by_epsilon": rows},
        )
        plot_sweep(rows, out / "sweep.png", f"accuracy against epsilon ({out.name})")
    failed = [r for r in results if r["status"] != "completed"]
    for row in summarize_points(results):
        label = "non-private" if row["epsilon"] is None else f"eps {row['epsilon']:g}"
        if row["n"]:
            console.print(
                f"  {label}: accuracy {row['accuracy_mean']:.4f} "
                f"± {row['accuracy_std']:.4f} over {row['n']} seed(s)"
            )
    console.print(f"Sweep: {out / 'sweep.json'}, plot: {out / 'sweep.png'}")
    if failed:
        for r in failed:
            console.print(
                f"[red]point {escape(r['out'])} did not complete "
                f"({escape(str(r.get('error') or r['status']))}); rerun the same "
                "command to resume it[/red]"
            )
        raise typer.Exit(1)
