"""Delimited text tables as users save them: which delimiter a file uses.

A ``.csv`` file is comma-separated by name only: Excel writes semicolons in
locales whose decimal separator is a comma, and some exports use tabs or pipes.
The header line decides, the same way for every reader.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable

__all__ = ["CSV_DELIMITERS", "duplicate_columns", "pick_delimiter"]

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
