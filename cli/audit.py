"""``fedshield audit``: attack a finished simulation and write its audit report.

    fedshield audit runs/demo                      # -> runs/demo/audit/report.html
    fedshield audit runs/demo --out audits/demo    # + audit.json (same numbers)
    fedshield simulate --audit                     # plants canaries, audits at the end

See :mod:`fedshield.simulations.audit` for what is attacked and how; this module
renders its :class:`~fedshield.simulations.audit.AuditResult`. An existing report is
never overwritten: choose another ``--out`` (or remove the old one). Exit codes,
one per verdict (:class:`~fedshield.privacy.audit.Verdict`): 0 consistent, 3
violation, 4 inconclusive, 5 not tested; 2 when the run cannot be audited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fedshield.common.layout import AuditLayout, RunLayout
from fedshield.common.storage import atomic_write_bytes, atomic_write_json
from fedshield.privacy.audit import CanaryTest, Verdict
from fedshield.privacy.audit.report import render_html, report_json
from fedshield.privacy.ledger import DB_NAME, LedgerError, LedgerReader, RecordedEntry
from fedshield.simulations.audit import AuditError, AuditResult, audit_run

from .ledger import epsilon_png

__all__ = ["audit", "write_audit"]

console = Console(soft_wrap=True)


def _ledgers(run_dir: Path) -> dict[str, list[RecordedEntry]]:
    series: dict[str, list[RecordedEntry]] = {}
    for path in sorted(RunLayout(run_dir).sites.glob(f"*/{DB_NAME}")):
        try:
            with LedgerReader(path.parent) as ledger:
                series[path.parent.name] = ledger.entries()
        except LedgerError as err:
            raise AuditError(f"The ledger of {path.parent.name}: {err}") from err
    return series


def write_audit(
    run_dir: Path, out: Path, *, num_sites: int | None = None
) -> dict[str, Any]:
    """Audit ``run_dir`` into ``out`` (report.html + audit.json); returns the
    JSON document (its ``"verdict"`` and ``"exit_code"`` are the run's). Refuses
    to replace an existing report."""
    layout = AuditLayout(out)
    for path in layout.outputs():
        if path.exists():
            raise AuditError(
                f"{path} exists and is left untouched. Choose another --out."
            )
    with console.status("auditing") as status:
        result = audit_run(
            run_dir, num_sites=num_sites, progress=lambda msg: status.update(msg)
        )
    series = _ledgers(run_dir)
    report = result.to_report()
    html = render_html(
        report,
        epsilon_png=epsilon_png(series) if series else None,
        ledger_epsilon={n: e[-1].entry.epsilon for n, e in series.items() if e},
    )
    doc = report_json(report)
    atomic_write_json(layout.numbers, doc)
    atomic_write_bytes(layout.report, html.encode("utf-8"))
    _print(result, layout)
    return doc


def _print(result: AuditResult, out: AuditLayout) -> None:
    table = Table(title="Membership inference and canary tests")
    for col in (
        "tested",
        "phi AUC",
        "LiRA AUC",
        "TPR@1%FPR",
        "emp. eps",
        "ceiling",
        "claimed",
        "verdict",
    ):
        table.add_column(col)
    for s in result.sites:
        best = s.lira or s.phi_attack
        point = best.low_fpr(0.01)
        table.add_row(
            s.site,
            f"{s.phi_attack.auc:.3f}",
            f"{s.lira.auc:.3f}" if s.lira else "-",
            f"{point.tpr:.3f}"
            + ("" if point.fpr == point.target else f" (FPR {point.fpr:.2%})"),
            *_test_cells(s.test),
        )
    table.add_row("all sites", "-", "-", "-", *_test_cells(result.pooled_test))
    console.print(table)
    for site, e in (result.exposure or {}).items():
        planted = [x.exposure for x in e.secrets if x.repeats > 0]
        console.print(
            f"{site}: secrets' exposure {sum(planted) / max(len(planted), 1):.2f} bits "
            f"on average ({len(planted)} planted; held out {e.held_out_mean:.2f}, "
            f"chance {e.chance:.2f})"
        )
    for test in [*(s.test for s in result.sites), result.pooled_test]:
        style = _STYLE[test.verdict]
        console.print(f"[{style}]{test.scope}: {test.explanation()}[/{style}]")
    verdict = result.verdict
    console.print(
        f"[{_STYLE[verdict]}]Verdict: {verdict} (exit code {verdict.exit_code}): "
        f"{result.explanation()}[/{_STYLE[verdict]}]"
    )
    console.print(f"Report: {out.report}; numbers: {out.numbers}")


_STYLE = {
    Verdict.CONSISTENT: "green",
    Verdict.VIOLATION: "bold red",
    Verdict.INCONCLUSIVE: "yellow",
    Verdict.NOT_TESTED: "yellow",
}


def _test_cells(test: CanaryTest) -> list[str]:
    c = test.canaries
    return [
        "-" if c is None else f"{c.empirical_epsilon:.3f}",
        "-" if c is None else f"{c.ceiling:.3f}",
        f"{test.claimed_epsilon:.3f}",
        str(test.verdict),
    ]


def audit(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A finished simulation's --out.")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Directory for the report (default RUN_DIR/audit)."),
    ] = None,
    sites: Annotated[
        int | None,
        typer.Option(
            "--sites",
            min=1,
            help="The run's number of simulated sites (default: from its summary).",
        ),
    ] = None,
) -> None:
    """Attack a finished run's final model and score its canaries; write an HTML
    report and the same numbers as JSON."""
    run_dir = run_dir.expanduser().resolve()
    try:
        result = write_audit(
            run_dir,
            (out or RunLayout(run_dir).audit.root).expanduser(),
            num_sites=sites,
        )
    except AuditError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from err
    if result["exit_code"]:
        raise typer.Exit(result["exit_code"])
