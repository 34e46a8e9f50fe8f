"""A site's text: read its own file and validate it.

Sequence classification reads (text, label) rows from CSV, TSV or JSONL. The
causal LM reads text only: one record per non-blank line of a ``.txt`` file, or
the text column/field of a CSV, TSV or JSONL file (a multi-line document fits in
one CSV cell or JSON string); one record is the privacy unit.

The site's file is opened read-only and never modified. Each problem (missing or
unreadable file, missing columns, no rows, empty text, labels outside the model's
classes) raises :class:`SiteDataError` naming the file, what was expected, what was
found and what to change.
"""

from __future__ import annotations

import csv
import difflib
import errno
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedshield.common.config import ConfigError
from fedshield.common.run_config import RunConfig, check, default
from fedshield.common.tables import (
    RaggedRow,
    duplicate_columns,
    read_table,
    table_rows,
    text_codec,
)
from fedshield.models.texts import LabeledTexts

__all__ = [
    "read_raw_labels",
    "SiteDataConfig",
    "SiteDataError",
    "read_labeled_file",
]


class SiteDataError(ValueError):
    """A site's data file is missing, unreadable or does not fit the model."""


@dataclass(frozen=True)
class SiteDataConfig:
    """Columns of a site file and the names of the classes (index = label id);
    ``labelled`` False (the causal LM): records are texts, no label is read."""

    text_column: str = default("data.text-column")
    label_column: str = default("data.label-column")
    label_names: tuple[str, ...] = tuple(default("data.label-names").split(","))
    labelled: bool = True
    encoding: str = default("data.encoding")

    def __post_init__(self) -> None:
        check("data.text-column", self.text_column)
        check("data.label-column", self.label_column)
        check("data.label-names", ",".join(self.label_names))
        check("data.encoding", self.encoding)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> SiteDataConfig:
        run = RunConfig.parse(run_config)
        names = tuple(n.strip() for n in run["data.label-names"].split(","))
        num_labels = run["model.num-labels"]
        labelled = run["model.task"] != "causal-lm"  # a causal LM reads texts only
        if labelled and len(names) != num_labels:
            raise ConfigError(
                f"`data.label-names` must list {num_labels} names (one per class, as "
                f"`model.num-labels` says). Found {list(names)}."
            )
        return cls(
            text_column=run["data.text-column"],
            label_column=run["data.label-column"],
            label_names=names,
            labelled=labelled,
            encoding=run["data.encoding"],
        )


def _rows(path: Path, cfg: SiteDataConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row)`` of each record of ``path``, streamed (the file is never
    held whole); ``line`` is where the record starts."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if cfg.labelled:
            raise SiteDataError(
                f"{path}: a .txt file holds text without labels, but this run trains a "
                "classifier. Give a CSV, TSV or JSONL file with columns "
                f"{cfg.text_column!r} and {cfg.label_column!r}."
            )
        with path.open(encoding=text_codec(cfg.encoding)) as f:
            for i, line in enumerate(f, start=1):
                if line.strip():  # blank lines separate nothing: skipped
                    yield i, {cfg.text_column: line.rstrip("\r\n")}
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding=text_codec(cfg.encoding)) as f:
            reader, delimiter = read_table(f, suffix)
            header = reader.fieldnames or []
            twice = duplicate_columns(header)
            if twice:
                raise SiteDataError(
                    f"{path}: the header names column(s) {twice} more than once; "
                    "only one of each would be read. Rename the duplicates."
                )
            try:
                yield from table_rows(reader)
            except RaggedRow as ragged:
                names = ", ".join(map(repr, header))
                if ragged.found > ragged.expected:
                    raise SiteDataError(
                        f"{path}: the record at line {ragged.line} has {ragged.found} "
                        f"fields, the header {ragged.expected} ({names}). A text with "
                        f"the delimiter {delimiter!r} in it must be quoted "
                        '("like, this"); check that the file is not missing quotes.'
                    ) from None
                raise SiteDataError(
                    f"{path}: the record at line {ragged.line} has {ragged.found} "
                    f"field(s), the header {ragged.expected} ({names}). Fill in the "
                    "missing fields or remove the row."
                ) from None
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding=text_codec(cfg.encoding)) as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as err:
                    if isinstance(err, RecursionError):
                        raise SiteDataError(
                            f"{path}: line {i} nests JSON too deeply to read. Each "
                            "line of a JSONL file must be one flat JSON object."
                        ) from None
                    raise SiteDataError(
                        f"{path}: line {i} is not valid JSON ({err.msg}). Each line of "
                        "a JSONL file must be one JSON object."
                    ) from err
                if not isinstance(row, dict):
                    raise SiteDataError(
                        f"{path}: line {i} is a JSON {type(row).__name__}, expected an "
                        "object with the text and label fields."
                    )
                yield i, row
    else:
        kinds = ".csv, .tsv or .jsonl" + ("" if cfg.labelled else " (or .txt)")
        raise SiteDataError(
            f"{path}: unsupported file type {suffix!r}. Expected {kinds}."
        )


def _undecodable(path: Path, cfg: SiteDataConfig) -> str:
    """Where and why ``path`` is not ``cfg.encoding`` text, and what to set."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(0)
            for i, raw in enumerate(f, start=1):
                try:
                    raw.decode(text_codec(cfg.encoding))
                except UnicodeDecodeError as err:
                    bad = raw[max(err.start - 12, 0) : err.end + 12]
                    where = f"line {i} ({bad!r})"
                    break
            else:
                where = "a multi-byte sequence"
    except OSError:  # pragma: no cover - it was readable a moment ago
        where, head = "somewhere", b""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        hint = (
            "It starts with a UTF-16 byte-order mark: set data.encoding='utf-16' "
            "(a deployed site: data-encoding='utf-16' in its node config), or save "
            "it as UTF-8."
        )
    else:
        hint = (
            "Files saved by Excel or on Windows are often cp1252: set "
            "data.encoding='cp1252' (or 'latin-1'; a deployed site: "
            "data-encoding='cp1252' in its node config), or save it as UTF-8."
        )
    return f"Site data file {str(path)!r} is not {cfg.encoding} text at {where}. {hint}"


def _label_id(raw: Any, cfg: SiteDataConfig, path: Path, line: int) -> int:
    text = str(raw).strip()
    if text in cfg.label_names:
        return cfg.label_names.index(text)
    try:
        value = int(text)
    except ValueError:
        value = -1
    if 0 <= value < len(cfg.label_names) and str(value) == text:
        return value
    close = [n for n in cfg.label_names if n.casefold() == text.casefold()]
    close = close or difflib.get_close_matches(text, cfg.label_names, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise SiteDataError(
        f"{path}: line {line} has label {raw!r}, which is not one of the model's "
        f"classes: ids 0..{len(cfg.label_names) - 1} or names {list(cfg.label_names)}."
        f"{hint} Fix the row, or set data.label-names / model.num-labels to match "
        "the data."
    )


def _check_is_a_file(path: Path, cfg: SiteDataConfig) -> None:
    wanted = (
        f"a CSV or JSONL file with columns {cfg.text_column!r} and {cfg.label_column!r}"
        if cfg.labelled
        else f"a .txt file (one record per line) or a CSV/JSONL file with a "
        f"{cfg.text_column!r} column"
    )
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SiteDataError(
                f"Site data file {str(path)!r} is a loop of symbolic links. Point "
                f"`data-path` at the file itself ({wanted})."
            ) from err
    if path.is_dir():
        raise SiteDataError(
            f"Site data file {str(path)!r} is a directory. Point `data-path` at the "
            f"file inside it ({wanted})."
        )
    if not path.is_file():
        raise SiteDataError(
            f"Site data file {str(path)!r} does not exist (or is not a file). Set "
            f"`data-path` in the SuperNode's --node-config to {wanted}."
        )


def _records(path: Path, cfg: SiteDataConfig) -> list[tuple[int, str, Any]]:
    """``(line, text, raw label)`` of each record of a site file (the label None
    when ``cfg.labelled`` is False), after the checks every reader needs: the
    file exists and reads as UTF-8, every row has the columns, no text is empty,
    at least one record."""
    path = Path(path)
    _check_is_a_file(path, cfg)
    records: list[tuple[int, str, Any]] = []
    columns = (
        (cfg.text_column, cfg.label_column) if cfg.labelled else (cfg.text_column,)
    )
    try:
        for line, row in _rows(path, cfg):
            missing = [c for c in columns if c not in row]
            if missing:
                raise SiteDataError(
                    f"{path}: line {line} lacks column(s) {missing}; found columns "
                    f"{sorted(row)}. Set data.text-column"
                    + (" / data.label-column" if cfg.labelled else "")
                    + " to the file's column names."
                )
            text = row[cfg.text_column]
            if isinstance(text, dict | list):
                raise SiteDataError(
                    f"{path}: line {line}: {cfg.text_column!r} is a JSON "
                    f"{'object' if isinstance(text, dict) else 'array'}, expected "
                    "the record's text as a string."
                )
            if text is None or not str(text).strip():
                raise SiteDataError(
                    f"{path}: line {line} has an empty {cfg.text_column!r} field. "
                    "Remove the row or fill in its text."
                )
            if "\x00" in str(text):
                raise SiteDataError(
                    f"{path}: line {line} has a NUL character in its "
                    f"{cfg.text_column!r} field: this is binary data, or text in "
                    "another encoding (UTF-16 puts a NUL beside every ASCII "
                    "letter). Save the file as UTF-8 text, or set data.encoding."
                )
            label = row[cfg.label_column] if cfg.labelled else None
            records.append((line, str(text), label))
    except UnicodeError as err:
        raise SiteDataError(_undecodable(path, cfg)) from err
    except csv.Error as err:
        raise SiteDataError(
            f"Site data file {str(path)!r} is not well-formed CSV ({err}). Check "
            "its quoting, or save it again from a spreadsheet as CSV UTF-8."
        ) from err
    except OSError as err:
        raise SiteDataError(
            f"Site data file {str(path)!r} could not be read ({type(err).__name__}: "
            f"{err}). Check that this process may read it."
        ) from err
    if not records:
        raise SiteDataError(
            f"Site data file {str(path)!r} holds no data rows. A site needs at least "
            "one record to train."
        )
    return records


def read_labeled_file(path: Path, cfg: SiteDataConfig) -> LabeledTexts:
    """Read and validate a site file: (text, label) rows, or texts only when
    ``cfg.labelled`` is False (every label is then 0 and unused)."""
    records = _records(path, cfg)
    return LabeledTexts(
        texts=tuple(text for _, text, _ in records),
        labels=tuple(
            _label_id(label, cfg, Path(path), line) if cfg.labelled else 0
            for line, _, label in records
        ),
    )


def read_raw_labels(path: Path, cfg: SiteDataConfig) -> list[str]:
    """The label column of a labelled site file as written (stripped), for
    inferring the class names of a user's data; the file passes the checks of
    :func:`read_labeled_file` first, and no label may be empty."""
    labels = []
    for line, _, label in _records(path, replace(cfg, labelled=True)):
        if label is None or not str(label).strip():
            raise SiteDataError(
                f"{path}: line {line} has an empty {cfg.label_column!r} field. "
                "Fill in its label or remove the row."
            )
        labels.append(str(label).strip())
    return labels
