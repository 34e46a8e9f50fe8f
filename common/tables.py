"""Delimited text tables as users save them: which delimiter a file uses.

A ``.csv`` file is comma-separated by name only: Excel writes semicolons in
locales whose decimal separator is a comma, and some exports use tabs or pipes.
The header line decides, by the columns the caller needs.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable

__all__ = ["CSV_DELIMITERS", "pick_delimiter"]

#: what a .csv file may be separated by, in the order tried
CSV_DELIMITERS = (",", ";", "\t", "|")


def pick_delimiter(header: str, suffix: str, columns: Iterable[str]) -> str:
    """The delimiter whose split of ``header`` holds every wanted column (comma
    first); a ``.tsv`` is tab-separated only. When none does, the comma (the tab
    for .tsv): the caller then reports the missing columns as read."""
    candidates = ("\t",) if suffix.lower() == ".tsv" else CSV_DELIMITERS
    wanted = set(columns)
    for delimiter in candidates:
        fields = {f.strip() for f in next(csv.reader([header], delimiter=delimiter))}
        if wanted <= fields:
            return delimiter
    return candidates[0]
