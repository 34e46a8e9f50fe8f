"""A site's labelled text: read its own file (CSV or JSONL), validate, tokenize.

The site's file is opened read-only and never modified. Each problem (missing or
unreadable file, missing columns, no rows, empty text, labels outside the model's
classes) raises :class:`SiteDataError` naming the file, what was expected, what was
found and what to change.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fedshield.models.config import ConfigError, require
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

__all__ = [
    "LabeledTexts",
    "SiteDataConfig",
    "SiteDataError",
    "TokenizedTexts",
    "read_labeled_file",
    "tokenize",
]


class SiteDataError(ValueError):
    """A site's data file is missing, unreadable or does not fit the model."""


@dataclass(frozen=True)
class LabeledTexts:
    """Texts with integer class labels in ``[0, num_labels)``."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"{len(self.texts)} texts but {len(self.labels)} labels; "
                "they must pair."
            )

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> LabeledTexts:
        return LabeledTexts(
            texts=tuple(self.texts[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
        )


@dataclass(frozen=True)
class SiteDataConfig:
    """Columns of a site file and the names of the classes (index = label id)."""

    text_column: str = "text"
    label_column: str = "label"
    label_names: tuple[str, ...] = ("rotten", "fresh")

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> SiteDataConfig:
        names = tuple(
            n.strip() for n in require(run_config, "data.label-names", str).split(",")
        )
        num_labels = require(run_config, "model.num-labels", int)
        if len(names) != num_labels or any(not n for n in names):
            raise ConfigError(
                f"`data.label-names` must list {num_labels} non-empty names (one per "
                f"class, as `model.num-labels` says). Found {list(names)}."
            )
        return cls(
            text_column=require(run_config, "data.text-column", str),
            label_column=require(run_config, "data.label-column", str),
            label_names=names,
        )


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for i, row in enumerate(reader, start=2):  # row 1 is the header
                yield i, row
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
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
        raise SiteDataError(
            f"{path}: unsupported file type {suffix!r}. Expected .csv, .tsv or .jsonl."
        )


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
    raise SiteDataError(
        f"{path}: line {line} has label {raw!r}, which is not one of the model's "
        f"classes: ids 0..{len(cfg.label_names) - 1} or names {list(cfg.label_names)}. "
        "Fix the row, or set data.label-names / model.num-labels to match the data."
    )


def read_labeled_file(path: Path, cfg: SiteDataConfig) -> LabeledTexts:
    """Read and validate a CSV/TSV/JSONL file of (text, label) rows."""
    path = Path(path)
    if not path.is_file():
        raise SiteDataError(
            f"Site data file {str(path)!r} does not exist (or is not a file). Set "
            "`data-path` in the SuperNode's --node-config to a CSV or JSONL file with "
            f"columns {cfg.text_column!r} and {cfg.label_column!r}."
        )
    texts: list[str] = []
    labels: list[int] = []
    try:
        for line, row in _rows(path):
            missing = [c for c in (cfg.text_column, cfg.label_column) if c not in row]
            if missing:
                raise SiteDataError(
                    f"{path}: line {line} lacks column(s) {missing}; found columns "
                    f"{sorted(row)}. Set data.text-column / data.label-column to the "
                    "file's column names."
                )
            text = row[cfg.text_column]
            if text is None or not str(text).strip():
                raise SiteDataError(
                    f"{path}: line {line} has an empty {cfg.text_column!r} field. "
                    "Remove the row or fill in its text."
                )
            texts.append(str(text))
            labels.append(_label_id(row[cfg.label_column], cfg, path, line))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SiteDataError(
            f"Site data file {str(path)!r} could not be read ({type(err).__name__}: "
            f"{err}). Check its permissions and that it is UTF-8 text."
        ) from err
    if not texts:
        raise SiteDataError(
            f"Site data file {str(path)!r} holds no data rows. A site needs at least "
            "one labelled example to train."
        )
    return LabeledTexts(texts=tuple(texts), labels=tuple(labels))


class TokenizedTexts(Dataset[tuple[torch.Tensor, ...]]):
    """Token ids of each text (truncated, unpadded) with its label.

    Items are ``(input_ids, attention_mask, [token_type_ids,] label)`` with the first
    ones of shape ``(t_i,)``; :meth:`collate` pads a batch to its longest text, so a
    batch of short reviews costs ``(b, max t_i)``, not ``(b, max_length)``.
    """

    def __init__(
        self,
        encodings: dict[str, list[list[int]]],
        labels: tuple[int, ...],
        pad_id: int,
    ) -> None:
        self.keys = [
            k
            for k in ("input_ids", "attention_mask", "token_type_ids")
            if k in encodings
        ]
        self.columns = [encodings[k] for k in self.keys]
        self.labels = labels
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return (
            *(torch.tensor(col[i], dtype=torch.long) for col in self.columns),
            torch.tensor(self.labels[i], dtype=torch.long),
        )

    def collate(self, items: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
        """Pad each sequence column to the batch's longest text; stack labels."""
        width = max(item[0].numel() for item in items)
        out = []
        for c, key in enumerate(self.keys):
            fill = self.pad_id if key == "input_ids" else 0
            column = torch.full((len(items), width), fill, dtype=torch.long)
            for r, item in enumerate(items):
                column[r, : item[c].numel()] = item[c]
            out.append(column)  # (b, width)
        out.append(torch.stack([item[-1] for item in items]))  # (b,)
        return out


def tokenize(
    data: LabeledTexts, tokenizer: PreTrainedTokenizerBase, *, max_length: int
) -> TokenizedTexts:
    """Token ids truncated to ``max_length``; padding happens per batch."""
    enc = tokenizer(list(data.texts), truncation=True, max_length=max_length)
    return TokenizedTexts(
        {
            k: enc[k]
            for k in ("input_ids", "attention_mask", "token_type_ids")
            if k in enc
        },
        data.labels,
        pad_id=int(tokenizer.pad_token_id),
    )
