"""``fedshield scrub``: remove or pseudonymize PII in a text file before it is used.

    fedshield scrub notes.csv --out notes.scrubbed.csv                 # <PERSON> tags
    fedshield scrub notes.jsonl --out clean.jsonl --column body --mode pseudonym \\
        --state-dir /var/lib/fedshield                                 # site key there
    fedshield scrub letters.txt --out letters.masked.txt --mode mask

Streams CSV/TSV, JSONL and plain text with a progress bar, writes the output
atomically, never touches the input, and prints how many findings of each entity
type it replaced (never the values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn
from rich.table import Table

from fedshield.common.config import ConfigError, parse_enum
from fedshield.privacy.pii import PIIConfig, PIIError, PIIMode, Scrubber, load_site_key
from fedshield.privacy.pii.files import scrub_file

__all__ = ["scrub"]

console = Console(soft_wrap=True)


def scrub(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="File to scrub.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the result.")],
    column: Annotated[
        str, typer.Option("--column", help="Text column (CSV/TSV) or field (JSONL).")
    ] = "text",
    mode: Annotated[
        str, typer.Option("--mode", help="tag, mask or pseudonym.")
    ] = PIIMode.TAG.value,
    state_dir: Annotated[
        Path,
        typer.Option(
            "--state-dir",
            help="Directory of the site key for pseudonyms (created on first use).",
        ),
    ] = Path("~/.fedshield/sites/local"),
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --out file.")
    ] = False,
    encoding: Annotated[
        str,
        typer.Option(
            "--encoding",
            help="Text encoding of INPUT (utf-8 also reads a byte-order mark; "
            "cp1252 for files saved by Excel on Windows). OUT is always UTF-8.",
        ),
    ] = "utf-8",
) -> None:
    """Replace PII in INPUT (CSV, TSV, JSONL or TXT) and write OUT."""
    try:
        pii_mode = parse_enum(PIIMode, "--mode", mode)
        if pii_mode is PIIMode.OFF:
            raise ConfigError("--mode must be tag, mask or pseudonym.")
        key = (
            load_site_key(state_dir.expanduser())
            if pii_mode is PIIMode.PSEUDONYM
            else b""
        )
        scrubber = Scrubber(PIIConfig(mode=pii_mode), key=key)
        size = input_path.stat().st_size if input_path.is_file() else None
        with Progress(
            "[bold]scrubbing",
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("scrub", total=size)
            rows = scrub_file(
                input_path,
                out,
                scrubber=scrubber,
                column=column,
                overwrite=force,
                progress=lambda done: bar.update(task, completed=done),
                encoding=encoding,
            )
    except (PIIError, ConfigError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from err
    table = Table(title=f"{input_path} -> {out}: {rows} rows")
    table.add_column("entity")
    table.add_column("replaced", justify="right")
    for entity, count in sorted(scrubber.counts.items()):
        table.add_row(entity, str(count))
    table.add_row("[bold]total", f"[bold]{sum(scrubber.counts.values())}")
    console.print(table)
