"""Scrub a whole file (CSV/TSV, JSONL or plain text), streaming, written atomically.

The input is opened read-only and never modified. Rows are read, scrubbed (one batch
of the analyzer per chunk of rows) and written a chunk at a time, so files of
any size stream through bounded memory; the output goes to
a temporary file beside it and is renamed into place only when every row is done,
so an interrupted run leaves no partial output. An existing output is never
overwritten unless asked, and the input never is.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from fedshield.common.keys import TEXT_ENCODING
from fedshield.common.tables import (
    RaggedRow,
    duplicate_columns,
    read_table,
    table_rows,
    text_codec,
)

from .config import PIIError
from .scrubber import Scrubber

__all__ = ["FORMATS", "scrub_file"]

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".txt": "txt"}
Progress = Callable[[int], None]  # bytes read so far
CHUNK = 256  # rows scrubbed in one batch
T = TypeVar("T")


def _lines(f: IO[str], progress: Progress | None) -> Iterator[str]:
    done = 0
    for line in f:
        done += len(line.encode("utf-8"))
        if progress is not None:
            progress(done)
        yield line


def _chunks(items: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    """``items`` in lists of ``size``: the scrubber analyses a chunk in one
    batch, and memory stays bounded by the chunk whatever the file's size."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _check_paths(src: Path, dst: Path, overwrite: bool) -> str:
    kind = FORMATS.get(src.suffix.lower())
    if kind is None:
        raise PIIError(
            f"{src}: unknown format {src.suffix!r}. Expected one of "
            f"{', '.join(FORMATS)}."
        )
    if not src.is_file():
        raise PIIError(f"{src} does not exist or is not a file.")
    if not os.access(src, os.R_OK):
        raise PIIError(f"{src} is not readable; check its permissions.")
    if dst.resolve() == src.resolve():
        raise PIIError(
            f"The output {dst} is the input file; scrubbing never modifies the "
            "input. Choose another --out."
        )
    if dst.exists() and not overwrite:
        raise PIIError(f"{dst} exists and is left untouched. Choose another --out.")
    if src.stat().st_size == 0:
        raise PIIError(f"{src} is empty: there is nothing to scrub.")
    return kind


def _checked_rows(
    reader: csv.DictReader[str], name: str, delimiter: str
) -> Iterator[dict[str, str]]:
    try:
        for _, row in table_rows(reader):
            yield row
    except RaggedRow as ragged:
        raise PIIError(
            f"{name}: the record at line {ragged.line} has {ragged.found} "
            f"field(s), the header {ragged.expected}. A text with the delimiter "
            f'{delimiter!r} in it must be quoted ("like, this"); fill in or '
            "remove short rows."
        ) from None


def _scrub_table(
    src: IO[str],
    dst: IO[str],
    *,
    suffix: str,
    column: str,
    scrubber: Scrubber,
    progress: Progress | None,
    name: str,
) -> int:
    reader, delimiter = read_table(_lines(src, progress), suffix)
    fields = reader.fieldnames or []
    twice = duplicate_columns(fields)
    if twice:
        raise PIIError(
            f"{name}: the header names column(s) {twice} more than once; only the "
            "last of each would be scrubbed and written. Rename the duplicates."
        )
    if column not in fields:
        raise PIIError(
            f"{name} has no column {column!r}; its columns are {fields}. Pass "
            "--column NAME."
        )
    writer = csv.DictWriter(dst, fieldnames=fields, delimiter=delimiter)
    writer.writeheader()
    rows = 0
    for chunk in _chunks(_checked_rows(reader, name, delimiter)):
        texts = scrubber.scrub_many([row[column] or "" for row in chunk])
        for row, text in zip(chunk, texts, strict=True):
            row[column] = text
            writer.writerow(row)
        rows += len(chunk)
    return rows


def _scrub_jsonl(
    src: IO[str],
    dst: IO[str],
    *,
    column: str,
    scrubber: Scrubber,
    progress: Progress | None,
    name: str,
) -> int:
    rows = 0
    for chunk in _chunks(_records(src, column=column, progress=progress, name=name)):
        texts = scrubber.scrub_many([record[column] for record in chunk])
        for record, text in zip(chunk, texts, strict=True):
            record[column] = text
            dst.write(json.dumps(record, ensure_ascii=False) + "\n")
        rows += len(chunk)
    return rows


def _records(
    src: IO[str], *, column: str, progress: Progress | None, name: str
) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(_lines(src, progress), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PIIError(f"{name} line {number} is not JSON ({err.msg}).") from None
        except RecursionError:
            raise PIIError(
                f"{name} line {number} nests JSON too deeply to read."
            ) from None
        if not isinstance(record, dict) or column not in record:
            raise PIIError(
                f"{name} line {number} has no field {column!r}. Pass --column NAME."
            )
        if not isinstance(record[column], str):
            raise PIIError(
                f"{name} line {number}: field {column!r} is a JSON "
                f"{type(record[column]).__name__}, expected a string. Pass "
                "--column NAME for the text field."
            )
        yield record


def scrub_file(
    src: Path,
    dst: Path,
    *,
    scrubber: Scrubber,
    column: str = "text",
    overwrite: bool = False,
    progress: Progress | None = None,
    encoding: str = "utf-8",
) -> int:
    """Scrub ``src`` (read as ``encoding``; UTF-8 also reads a byte-order mark)
    into ``dst`` (always UTF-8); returns the number of rows (lines for .txt).
    Per-entity counts accumulate in ``scrubber.counts``."""
    problem = TEXT_ENCODING.problem(encoding)
    if problem:
        raise PIIError(f"--encoding {encoding!r} {problem}.")
    codec = text_codec(encoding)
    kind = _check_paths(src, dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with (
            src.open(encoding=codec, newline="") as fin,
            os.fdopen(fd, "w", encoding="utf-8", newline="") as fout,
        ):
            if kind in ("csv", "tsv"):
                rows = _scrub_table(
                    fin, fout, suffix=src.suffix,
                    column=column, scrubber=scrubber, progress=progress, name=str(src),
                )  # fmt: skip
            elif kind == "jsonl":
                rows = _scrub_jsonl(
                    fin, fout, column=column, scrubber=scrubber, progress=progress,
                    name=str(src),
                )  # fmt: skip
            else:
                rows = 0
                for chunk in _chunks(_lines(fin, progress)):
                    texts = scrubber.scrub_many([line.rstrip("\n") for line in chunk])
                    for line, text in zip(chunk, texts, strict=True):
                        fout.write(text + ("\n" if line.endswith("\n") else ""))
                    rows += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except UnicodeDecodeError as err:
        raise PIIError(
            f"{src} is not {encoding} text ({err.reason}). Files saved by Excel or "
            "on Windows are often cp1252: pass --encoding cp1252 (or latin-1; "
            "utf-16 for a file that starts with a UTF-16 byte-order mark)."
        ) from None
    except csv.Error as err:
        raise PIIError(
            f"{src} is not well-formed CSV ({err}). Check its quoting."
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return rows
