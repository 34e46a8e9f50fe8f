"""Labelled texts and their tokenized form: what a classifier trains and is
evaluated on, shared by the sites, the server's central evaluation and the audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from .loading import forward_inputs

__all__ = ["LabeledTexts", "TokenizedTexts", "batch_inputs", "tokenize"]


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

    def subset(self, indices: Sequence[int]) -> LabeledTexts:
        return LabeledTexts(
            texts=tuple(self.texts[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
        )


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


def batch_inputs(
    batch: list[torch.Tensor] | tuple[torch.Tensor, ...], device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Split a collated batch into model kwargs and labels, on ``device``."""
    tensors = [t.to(device) for t in batch]
    named = {"input_ids": tensors[0], "attention_mask": tensors[1]}
    if len(tensors) == 4:
        named["token_type_ids"] = tensors[2]
    return forward_inputs(named), tensors[-1]
