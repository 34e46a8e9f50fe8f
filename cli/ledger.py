"""``fedshield ledger``: read, verify, plot and export privacy ledgers.

    fedshield ledger show   --site-dir /var/lib/fedshield/site-a            # table
    fedshield ledger show   --site-dir runs/demo/sites/site-0 --json
    fedshield ledger verify --site-dir DIR [--site-dir DIR2 ...] [--key-sha256 HEX]
    fedshield ledger verify --export audit/site-a.json --key-sha256 HEX
    fedshield ledger plot   --run-dir runs/demo --out eps.png               # all sites
    fedshield ledger export --site-dir DIR --out audit/site-a.json

Every command opens ledgers read-only and needs only the public key
(``ledger_key.pub``), so an auditor can run them on a copy of a site's state
directory. A site's directory is its node config ``state-dir``; in a simulation,
``<out-dir>/sites/<site>``, and the server's client-level ledger is
``<out-dir>/ledger``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fedshield.common.layout import RunLayout
from fedshield.common.storage import atomic_write_bytes, atomic_write_json
from fedshield.privacy.ledger import (
    DB_NAME,
    LedgerError,
    LedgerReader,
    Mechanism,
    RecordedEntry,
    verify_export,
)

__all__ = ["ledger_app"]

ledger_app = typer.Typer(
    help="Show, verify, plot and export privacy ledgers (read-only).",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)

SiteDirs = Annotated[
    list[Path] | None,
    typer.Option(
        "--site-dir",
        help="A site's state directory (node config `state-dir`; in a simulation "
        "<out-dir>/sites/<site>). Repeat for several.",
    ),
]
RunDir = Annotated[
    Path | None,
    typer.Option(
        "--run-dir",
        help="A simulation's out-dir: every <run-dir>/sites/* plus the server's "
        "client-level ledger <run-dir>/ledger.",
    ),
]


def _ledger_dirs(site_dirs: list[Path] | None, run_dir: Path | None) -> list[Path]:
    dirs = list(site_dirs or [])
    if run_dir is not None:
        layout = RunLayout(run_dir)
        found = sorted(p.parent for p in layout.sites.glob(f"*/{DB_NAME}"))
        if (layout.server_ledger / DB_NAME).exists():
            found.append(layout.server_ledger)
        if not found:
            console.print(
                f"[red]No ledgers under {run_dir}: expected {run_dir}/sites/<site>/"
                f"{DB_NAME} or {run_dir}/ledger/{DB_NAME}. Is it a fedshield run "
                "directory?[/red]"
            )
            raise typer.Exit(2)
        dirs.extend(found)
    if not dirs:
        console.print(
            "[red]Name a ledger with --site-dir DIR (or --run-dir RUN).[/red]"
        )
        raise typer.Exit(2)
    return dirs


def _open(path: Path) -> LedgerReader:
    try:
        return LedgerReader(path)
    except LedgerError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from err


def _name(path: Path) -> str:
    is_server = path.name == RunLayout(path.parent).server_ledger.name
    return "server (client-level)" if is_server else path.name


def _fmt_eps(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:.4f}"


def _budget_left(rec: RecordedEntry) -> str:
    budget = rec.entry.max_epsilon
    return f"{max(budget - rec.entry.epsilon, 0.0):.4f}" if budget else "-"


def _rows(recorded: list[RecordedEntry]) -> list[dict[str, Any]]:
    return [
        {
            "seq": r.seq,
            **r.entry.canonical(),
            "budget_left": (
                max(r.entry.max_epsilon - r.entry.epsilon, 0.0)
                if r.entry.max_epsilon
                else None
            ),
            "entry_hash": r.entry_hash,
        }
        for r in recorded
    ]


@ledger_app.command()
def show(
    site_dir: SiteDirs = None,
    run_dir: RunDir = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """Print every entry: run, round, mechanism, epsilon, delta, budget left."""
    out: dict[str, Any] = {}
    for path in _ledger_dirs(site_dir, run_dir):
        with _open(path) as ledger:
            recorded, report = ledger.entries(), ledger.verify()
        if as_json:
            out[str(path)] = {
                "verified": report.ok,
                "problems": list(report.problems),
                "entries": _rows(recorded),
            }
            continue
        mechanisms = sorted({r.entry.mechanism.value for r in recorded})
        table = Table(title=f"{_name(path)}: {path} ({', '.join(mechanisms)})")
        for col in ("#", "run", "round", "mechanism", "sigma", "q", "steps"):
            if col == "mechanism" and len(mechanisms) < 2:
                continue
            table.add_column(col, justify="right", no_wrap=True)
        for col in ("epsilon", "delta", "left"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in recorded:
            e = r.entry
            table.add_row(
                str(r.seq),
                e.run_id[:6],
                str(e.server_round),
                *([e.mechanism.value] if len(mechanisms) > 1 else []),
                f"{e.noise_multiplier:.3g}",
                f"{e.sample_rate:.3g}",
                str(e.steps),
                _fmt_eps(e.epsilon),
                f"{e.delta:g}",
                _budget_left(r),
            )
        console.print(table)
        if recorded:
            first, last = recorded[0].entry, recorded[-1].entry
            datasets = sorted({r.entry.dataset_fingerprint for r in recorded})
            console.print(
                f"{first.timestamp} .. {last.timestamp}; dataset(s): "
                + ", ".join(d.split(":", 1)[-1][:16] for d in datasets)
                + " (full values: --json)"
            )
        if report.ok:
            console.print(f"[green]verified: {report.entries} entries intact[/green]")
        else:
            console.print(
                "[bold red]LEDGER FAILS VERIFICATION; these numbers cannot be "
                "trusted:[/bold red]\n  " + "\n  ".join(report.problems)
            )
    if as_json:
        console.print_json(json.dumps(out))


@ledger_app.command()
def verify(
    site_dir: SiteDirs = None,
    run_dir: RunDir = None,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Verify an exported JSON file instead."),
    ] = None,
    key_sha256: Annotated[
        str | None,
        typer.Option(
            "--key-sha256",
            help="The site's published public-key fingerprint; fail if the ledger "
            "is signed by another key.",
        ),
    ] = None,
) -> None:
    """Check hashes, chain, signatures and the signed head; name every problem.
    Exits 1 if any ledger fails."""
    results: list[tuple[str, Any]] = []
    if export is not None:
        try:
            doc = json.loads(export.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            console.print(f"[red]Cannot read the export {export}: {err}[/red]")
            raise typer.Exit(2) from err
        results.append(
            (str(export), verify_export(doc, expected_key_sha256=key_sha256))
        )
    if site_dir or run_dir or export is None:
        for path in _ledger_dirs(site_dir, run_dir):
            with _open(path) as ledger:
                report = ledger.verify()
                actual = ledger.public_key_fingerprint()
            if key_sha256 is not None and actual != key_sha256.lower():
                problem = f"signed by key {actual}, not the expected {key_sha256}"
                report = type(report)(report.entries, (problem, *report.problems))
            results.append((str(path), report))
    failed = False
    for where, report in results:
        if report.ok:
            console.print(f"[green]OK[/green] {where}: {report.entries} entries intact")
        else:
            failed = True
            console.print(f"[bold red]FAILED[/bold red] {where}:")
            for problem in report.problems:
                console.print(f"  - {problem}")
    if failed:
        raise typer.Exit(1)


@ledger_app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="JSON file to write.")],
    site_dir: SiteDirs = None,
    run_dir: RunDir = None,
) -> None:
    """Write ledgers as JSON for auditors: entries with hashes and signatures, the
    signed head, the public key and the verification result."""
    if out.exists():
        console.print(
            f"[red]{out} exists; it is left untouched. Choose a new --out.[/red]"
        )
        raise typer.Exit(2)
    ledgers: dict[str, Any] = {}
    for path in _ledger_dirs(site_dir, run_dir):
        with _open(path) as ledger:
            doc, report = ledger.export(), ledger.verify()
        doc["verified"] = {"ok": report.ok, "problems": list(report.problems)}
        ledgers[_name(path)] = doc
    payload: dict[str, Any] = (
        next(iter(ledgers.values())) if len(ledgers) == 1 else {"ledgers": ledgers}
    )
    atomic_write_json(out, payload)
    console.print(f"Wrote {out} ({len(ledgers)} ledger(s)).")


@ledger_app.command()
def plot(
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    site_dir: SiteDirs = None,
    run_dir: RunDir = None,
) -> None:
    """PNG of cumulative epsilon per site over its releases (rounds, across runs),
    with each site's budget as a dashed line."""
    if out.exists():
        console.print(
            f"[red]{out} exists; it is left untouched. Choose a new --out.[/red]"
        )
        raise typer.Exit(2)
    series: dict[str, list[RecordedEntry]] = {}
    for path in _ledger_dirs(site_dir, run_dir):
        with _open(path) as ledger:
            series[_name(path)] = ledger.entries()
    atomic_write_bytes(out, epsilon_png(series))
    console.print(f"Wrote {out}.")


def epsilon_png(series: dict[str, list[RecordedEntry]]) -> bytes:
    """The plot as PNG bytes: one line per ledger, x = release number."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for i, (name, recorded) in enumerate(sorted(series.items())):
        color = f"C{i % 10}"
        xs = list(range(1, len(recorded) + 1))
        ys = [r.entry.epsilon for r in recorded]
        finite = [y if math.isfinite(y) else float("nan") for y in ys]
        client = (
            bool(recorded) and recorded[0].entry.mechanism is Mechanism.CLIENT_GAUSSIAN
        )
        style = "--" if client else "-"
        ax.plot(xs, finite, style, marker="o", color=color, label=name)
        budgets = {r.entry.max_epsilon for r in recorded if r.entry.max_epsilon}
        for budget in budgets:
            ax.axhline(budget, color=color, linestyle=":", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("release (one per round, in ledger order across runs)")
    ax.set_ylabel("cumulative epsilon")
    ax.set_title(
        "Sample-level epsilon per site (solid), client-level (dashed); dotted: budget",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
