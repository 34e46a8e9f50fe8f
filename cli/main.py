"""The ``fedshield`` command.

    fedshield simulate                       # default demo: 4 sites, MiniLM + LoRA, DP
    fedshield simulate --out runs/nodp --run-config "dp.enabled=false"
    fedshield simulate --out runs/nodp --run-config "resume=true num-server-rounds=5"
    fedshield ledger show --site-dir runs/demo/sites/site-0    # see ledger.py
    fedshield scrub notes.csv --out notes.clean.csv            # see scrub.py
    fedshield simulate --out runs/audited --audit             # + canaries, audit report
    fedshield audit runs/demo                                  # see audit.py
    fedshield evaluate runs/demo --attack                      # see evaluate.py

``simulate`` runs the fedshield Flower app on Flower's simulation engine
(``flwr run``), shows a progress display of rounds and sites, prints one table per
round (global test accuracy, mean train loss, each site's cumulative epsilon) and
leaves in ``--out``: summary.json, checkpoint.pt, the final adapter/head weights,
flwr.log with the full log and superlink.log with that of the run's own SuperLink
(each simulation starts one on a free port and stops it at the end, so simulations
and other SuperLinks on the machine never share one). With ``--audit`` it warns
before the run when the planned canaries cannot refute the sites' claimed epsilon
(:mod:`fedshield.simulations.audit.plan`), and exits with the audit's verdict code
(0 consistent, 3 violation, 4 inconclusive, 5 not tested).
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedshield.common.config import ConfigError
from fedshield.common.layout import RunLayout
from fedshield.common.run_config import RunConfig
from fedshield.server.report import round_table
from fedshield.server.rounds import RoundLog
from fedshield.simulations.audit import AuditError, plan_audit
from fedshield.simulations.launcher import (
    LaunchError,
    SimulationLaunch,
    app_dir,
    flwr_command,
    override_pairs,
    run_logged,
    started_run_id,
    stop_run,
)
from fedshield.simulations.presets import preset_overrides
from fedshield.simulations.scenario import Scenario
from fedshield.simulations.superlink import private_superlink
from fedshield.simulations.user_data import prepare_user_data

from .audit import audit, write_audit
from .deploy import federation_app, site_app, superlink_app
from .evaluate import evaluate
from .ledger import ledger_app
from .scrub import scrub
from .sweep import sweep

__all__ = ["app"]

app = typer.Typer(
    help="fedshield: privacy-preserving federated fine-tuning of language models.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
app.add_typer(ledger_app, name="ledger")
app.add_typer(federation_app, name="federation")
app.add_typer(superlink_app, name="superlink")
app.add_typer(site_app, name="site")
app.command()(scrub)
app.command()(audit)
app.command()(evaluate)
app.command()(sweep)
DEFAULT_AUDIT_CANARIES = 100


@app.callback()
def _group() -> None:
    """fedshield: privacy-preserving federated fine-tuning of language models."""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _override_values(overrides: list[str]) -> dict[str, str]:
    """``key -> raw value`` of ``--run-config "k=v k2=v2"`` items (last one wins)."""
    return override_pairs(overrides)


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    keep = [line for line in text if "Error" in line or "error" in line] or text
    return "\n".join(keep[-lines:])


@app.command()
def simulate(
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--run-config",
            "-c",
            help='Overrides of \\[tool.flwr.app.config], e.g. "num-server-rounds=5 '
            'dp.noise-multiplier=1.1" (strings in single quotes).',
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Directory for the run's outputs.")
    ] = Path("runs/demo"),
    sites: Annotated[
        int | None,
        typer.Option(
            "--sites",
            min=1,
            help="Number of simulated sites (default 4; with --sites-dir, one per "
            "file).",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Your labelled CSV/TSV/JSONL file, split among the sites by "
            "data.partition (columns: data.text-column, data.label-column; string "
            "labels allowed, class names inferred and printed).",
        ),
    ] = None,
    test: Annotated[
        Path | None,
        typer.Option(
            "--test",
            help="Your central test file (default: data.test-fraction of the "
            "training data, held out).",
        ),
    ] = None,
    sites_dir: Annotated[
        Path | None,
        typer.Option(
            "--sites-dir",
            help="A folder with one labelled file per site (site name = file stem; "
            "an optional <stem>.toml: that site's node config, e.g. max-epsilon).",
        ),
    ] = None,
    run_audit: Annotated[
        bool,
        typer.Option(
            "--audit",
            help="Plant canaries at each site (audit.canaries, default "
            f"{DEFAULT_AUDIT_CANARIES} unless given) and run `fedshield audit` on the "
            "finished run (report in OUT/audit).",
        ),
    ] = False,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="Start from a named set of run-config values that --run-config "
            "overrides key by key: causal-lm (SmolLM2-135M, LoRA, DP, secure "
            "aggregation, ~15 minutes).",
        ),
    ] = None,
    ray_address: Annotated[
        str,
        typer.Option(
            "--ray-address",
            help="HOST:PORT of an existing Ray cluster's head (`ray start --head`) "
            "to run the sites on; every node needs fedshield installed. Default: a "
            "private Ray on this machine.",
        ),
    ] = "",
    client_cpus: Annotated[
        int | None,
        typer.Option(
            "--client-cpus", min=1, help="CPUs Ray reserves per site (default 2)."
        ),
    ] = None,
    client_gpus: Annotated[
        float | None,
        typer.Option(
            "--client-gpus",
            min=0.0,
            help="GPUs Ray reserves per site (default 0; 0.5 = two sites per GPU).",
        ),
    ] = None,
) -> None:
    """Run a federated simulation and write OUT/summary.json."""
    overrides = list(run_config or [])
    values = _override_values(overrides)
    if preset is not None:
        try:
            overrides = [*preset_overrides(preset, values), *overrides]
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--preset") from err
        values = _override_values(overrides)
    if (
        run_audit
        and values.get("model.task", "").strip("'\"") == "causal-lm"
        and "audit.canary-kind" not in values
    ):
        overrides.append("audit.canary-kind='secret'")
        values = _override_values(overrides)
    if run_audit and "audit.canaries" not in values:
        overrides.append(f"audit.canaries={DEFAULT_AUDIT_CANARIES}")
        console.print(
            f"--audit: planting audit.canaries={DEFAULT_AUDIT_CANARIES} canaries per "
            "site (each included with probability 1/2)."
        )
    try:
        prepared = prepare_user_data(
            data=data,
            test=test,
            sites_dir=sites_dir,
            num_sites=sites,
            run_config=_typed(values),
        )
    except ConfigError as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from err
    overrides = [*overrides, *prepared.overrides]
    sites = prepared.num_sites
    if data is None and sites_dir is None:  # the packaged data: split it now
        try:
            scenario = Scenario.from_run_config(
                RunConfig.parse(_typed(_override_values(overrides)))
            )
            scenario.partitions(sites)
        except ConfigError as err:
            console.print(f"[red]{escape(str(err))}[/red]")
            raise typer.Exit(2) from err
    for message in prepared.messages:
        console.print(escape(message))
    if run_audit:
        _warn_audit_power(_override_values(overrides), sites)
    if "out-dir" in values:
        raise typer.BadParameter("Give the output directory with --out, not out-dir.")
    out = out.expanduser().resolve()
    layout = RunLayout(out)
    resuming = values.get("resume") in ("true", "True")
    if layout.summary.exists() and not resuming:
        console.print(
            f"[red]{out} already holds a run (summary.json). It is left untouched. "
            'Choose another --out, or add --run-config "resume=true".[/red]'
        )
        raise typer.Exit(2)
    log_path = layout.log
    if not resuming:
        layout.progress.unlink(missing_ok=True)
    try:  # a SuperLink of its own, stopped with all its processes however this ends
        with private_superlink(
            log_path=layout.superlink_log, cwd=app_dir(), ray_address=ray_address
        ) as link:
            console.print(
                f"[dim]Flower SuperLink of this run: {link.address} "
                f"(log: {link.log_path})[/dim]"
            )
            if ray_address:
                console.print(f"[dim]Sites run on the Ray cluster {ray_address}[/dim]")
            launch = flwr_command(
                superlink=link,
                overrides=[*overrides, f"out-dir='{out}'"],
                num_sites=sites,
                client_cpus=client_cpus,
                client_gpus=client_gpus,
            )
            returncode = _run(launch, log_path, out)
    except LaunchError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from err
    except KeyboardInterrupt:
        console.print(
            f"[yellow]Stopped. Resume with --out {out} --run-config "
            '"resume=true"[/yellow]'
        )
        raise typer.Exit(130) from None

    summary = _read_json(RunLayout(out).summary)
    if summary and summary.get("status") == "aborted":
        console.print(
            f"[red]The run stopped: {summary.get('error')}[/red]\nFinished rounds are "
            f"checkpointed in {out}. Full log: {log_path}"
        )
        raise typer.Exit(1)
    if returncode != 0 or not summary or summary.get("status") != "completed":
        console.print(
            f"[red]The simulation did not complete (flwr exit code {returncode})."
            f" Full log: {log_path}[/red]\n{_log_tail(log_path)}"
        )
        raise typer.Exit(1)
    _print_final(summary, out)
    if run_audit:
        try:
            audited = write_audit(out, layout.audit.root, num_sites=sites)
        except AuditError as err:
            console.print(f"[red]The audit failed: {err}[/red]")
            raise typer.Exit(2) from err
        if audited["exit_code"]:
            raise typer.Exit(audited["exit_code"])


def _typed(values: dict[str, str]) -> dict[str, Any]:
    """``--run-config`` values as Flower reads them (TOML values)."""
    typed: dict[str, Any] = {}
    for key, raw in values.items():
        try:
            typed[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            typed[key] = raw
    return typed


def _warn_audit_power(values: dict[str, str], sites: int) -> None:
    """Before the run: say so when its canary test cannot refute the claim (a
    config error is left to the run, which reports it)."""
    try:
        plan = plan_audit(RunConfig(_typed(values)), sites)
    except (ConfigError, ValueError):
        return
    warning = plan.warning()
    if warning:
        console.print(f"[yellow]--audit: {escape(warning)}[/yellow]")


def _run(launch: SimulationLaunch, log_path: Path, out: Path) -> int:
    """Run ``flwr run`` to its end, showing progress; its exit code. On Ctrl-C the
    run is stopped at the SuperLink first, then the interrupt goes on."""
    proc = run_logged(launch, log_path)
    try:
        _follow(proc, out)
    except KeyboardInterrupt:
        run_id = started_run_id(log_path)
        if run_id is not None:
            stop_run(launch, run_id)
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return proc.returncode


def _follow(proc: subprocess.Popen[bytes], out: Path) -> None:
    """Show progress and each finished round's table until ``proc`` exits."""
    shown = 0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting Flower simulation", total=None, detail="")
        while True:
            done = proc.poll() is not None
            prog = _read_json(RunLayout(out).progress)
            if prog and prog.get("status") == "running":
                bar.update(
                    task,
                    description=f"round {prog['round']}/{prog['num_rounds']}",
                    total=prog["num_rounds"],
                    completed=prog["round"] - 1,
                    detail=f"sites replied {prog['sites_done']}/{prog['sites_total']}",
                )
            summary = _read_json(RunLayout(out).summary)
            rounds = (summary or {}).get("rounds", [])
            total = int((summary or {}).get("config", {}).get("num-server-rounds", 0))
            for rnd in rounds[shown:]:
                bar.console.print(round_table(RoundLog.from_dict(rnd), total))
            shown = max(shown, len(rounds))
            if done:
                break
            time.sleep(1.0)


def follow_run(command: list[str], env: dict[str, str], cwd: Path, out: Path) -> int:
    """``flwr run`` of a deployed federation, followed like a simulation (log in
    OUT/flwr.log); 0 only when the summary says the run completed."""
    launch = SimulationLaunch(command=command, env=env, cwd=cwd, connection=command[3])
    layout = RunLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        returncode = _run(launch, layout.log, out)
    except KeyboardInterrupt:
        console.print("[yellow]Stopped; the run was stopped at the SuperLink.[/yellow]")
        return 130
    summary = _read_json(layout.summary)
    if summary and summary.get("status") == "completed" and returncode == 0:
        _print_final(summary, out)
        return 0
    if summary and summary.get("status") == "aborted":
        error = escape(str(summary.get("error")))
        console.print(f"[red]The run stopped: {error}[/red]")
    else:
        status = (summary or {}).get("status", "no summary")
        console.print(
            f"[red]The run did not complete (status: {status}; flwr exit code "
            f"{returncode}). Full log: {layout.log}[/red]\n{_log_tail(layout.log)}"
        )
    return 1


def _print_final(summary: dict[str, Any], out: Path) -> None:
    final, initial = summary["rounds"][-1], summary["initial"]
    if final.get("perplexity") is not None:  # causal LM
        console.print(
            f"[bold green]Done.[/bold green] Test perplexity "
            f"{final['perplexity']:.2f} after {final['round']} rounds (initial "
            f"{initial['perplexity']:.2f}); token accuracy {final['accuracy']:.4f}."
        )
    else:
        f1 = final.get("macro_f1")
        console.print(
            f"[bold green]Done.[/bold green] Test accuracy {final['accuracy']:.4f} "
            f"after {final['round']} rounds (initial {initial['accuracy']:.4f})"
            + ("." if f1 is None else f"; macro F1 {f1:.4f}.")
        )
    for name, site in summary["sites"].items():
        # a value the site's policy withholds (release-metrics) is null
        if site.get("epsilon") is None:
            eps = "epsilon withheld by the site"
        elif site["epsilon"] == "inf":
            eps = "no DP (epsilon inf)"
        else:
            eps = f"epsilon {site['epsilon']:.3f}"
            if site.get("delta") is not None:
                eps += f" at delta {site['delta']:g}"
            if site.get("max_epsilon"):
                eps += f" (budget {site['max_epsilon']:g})"
        counts = ", ".join(
            f"{site[key]} {key}"
            for key in ("examples", "steps")
            if site.get(key) is not None
        )
        refused = site.get("refused_rounds") or []
        console.print(
            f"  {escape(name)}: {counts + ', ' if counts else ''}{eps}"
            + (f"; refused round(s) {refused}" if refused else "")
        )
    for sample in (summary.get("generation") or {}).get("samples", []):
        console.print(
            f"  sample: {escape(sample['prompt'])!s} [dim]->[/dim] "
            f"{escape(sample['text'])}"
        )
    client = summary.get("privacy", {}).get("client_level", {})
    if client.get("enabled"):
        console.print(
            f"  client-level: epsilon {client['epsilon']:.3f} at delta "
            f"{client['delta']:g} over {client['rounds']} round(s) (whole-site "
            "neighbours)"
        )
    console.print(
        f"Summary: {out / 'summary.json'}; ledgers: "
        f"fedshield ledger show --run-dir {out}"
    )


def main() -> None:  # pragma: no cover - console entry point
    app()
