"""Delimited text tables as users save them: which delimiter a file uses.

A ``.csv`` file is comma-separated by name only: Excel writes semicolons in
locales whose decimal separator is a comma, and some exports use tabs or pipes.
The header line decides, the same way for every reader.
"""

from __future__ import annotations

import codecs
import csv
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "CSV_DELIMITERS",
    "RaggedRow",
    "duplicate_columns",
    "pick_delimiter",
    "read_table",
    "table_rows",
    "text_codec",
]

#: what a .csv file may be separated by, in the order tried
CSV_DELIMITERS = (",", ";", "\t", "|")


def pick_delimiter(header: str, suffix: str) -> str:
    """The delimiter of a table whose first line is ``header``: for a ``.csv``,
    the candidate that splits it into the most fields (the comma on a tie); a
    ``.tsv`` is tab-separated only. The choice depends on the header alone, so
    every reader of one file (the site's reader, ``fedshield scrub``) splits it
    the same way, whatever columns it needs: a scrubber that split differently
    could clean one column while training reads another."""
    if suffix.lower() == ".tsv":
        return "\t"
    widths = [
        (len(next(csv.reader([header], delimiter=d), [])), -i, d)
        for i, d in enumerate(CSV_DELIMITERS)
    ]
    return max(widths)[2]


def duplicate_columns(fields: Iterable[str | None]) -> list[str]:
    """Column names a header has more than once (a reader keyed by name would
    keep only the last of them)."""
    seen: set[str] = set()
    dupes = []
    for name in fields:
        if name is not None and name in seen and name not in dupes:
            dupes.append(name)
        seen.add(str(name))
    return dupes


def text_codec(encoding: str) -> str:
    """The codec to open a user's text file with: UTF-8 also drops a byte-order
    mark (Excel writes one; left in, it would become part of the first column's
    name)."""
    name = codecs.lookup(encoding).name
    return "utf-8-sig" if name == "utf-8" else name


def read_table(lines: Iterator[str], suffix: str) -> tuple[csv.DictReader[str], str]:
    """A ``DictReader`` over ``lines`` (a text file's lines) and its delimiter,
    chosen by :func:`pick_delimiter` from the first line; a cell may hold a whole
    document (no 128 KiB limit)."""
    csv.field_size_limit(2**31 - 1)
    header = next(lines, "")
    delimiter = pick_delimiter(header, suffix)
    return csv.DictReader(
        itertools.chain([header], lines), delimiter=delimiter
    ), delimiter


@dataclass
class RaggedRow(ValueError):
    """A record with more or fewer fields than its table's header."""

    line: int  # where the record starts
    found: int  # its fields
    expected: int  # the header's

    def __str__(self) -> str:
        return f"line {self.line}: {self.found} fields, the header {self.expected}"


def table_rows(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` of each record of ``reader``, ``line`` where the record
    starts (a quoted cell may span lines). A record with more or fewer fields than
    the header raises :class:`RaggedRow`: read by name, it would shift or invent
    fields."""
    header = reader.fieldnames or []
    start = 1 + reader.line_num  # the header's lines come first
    for row in reader:
        extra = row.get(None) or []  # type: ignore[call-overload]
        if extra or any(value is None for value in row.values()):
            found = len(extra) + sum(
                value is not None for key, value in row.items() if key is not None
            )
            raise RaggedRow(line=start, found=found, expected=len(header))
        yield start, row
        start = 1 + reader.line_num
