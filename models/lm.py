"""The causal-LM task: records as token sequences, the per-record loss DP-SGD
clips, held-out perplexity, and greedy generation from fixed prompts.

**One record (one document) is the privacy unit.** A record is tokenized, an
end-of-sequence token appended (so the model learns where a record ends), and the
result *truncated* to ``model.max-length`` tokens: never chunked. Chunking a long
record into k training examples would let that one record contribute k clipped
gradients to a step, multiplying its sensitivity by k while the accountant prices
one; truncation keeps one record = one example = one clipped gradient. The
tokens past the limit are not trained on (:attr:`TokenizedRecords.truncated`
counts the records cut; a site logs it).

Per-record loss (Opacus' convention for generative tasks, and what book-keeping
clips): the logits at position t predict token t + 1; the token cross-entropy is
averaged over the record's target tokens (padding carries label ``-100``), then
over the records of the batch:

    loss_i = (1 / |T_i|) sum_{t in T_i} -log p(x_{i,t+1} | x_{i,<=t})

A record with no target token (an empty text: only the end token) has loss 0 and
a zero gradient. Batches are right-padded; the attention mask hides the padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from .evaluate import EvalResult
from .loading import forward_inputs

__all__ = [
    "IGNORE_INDEX",
    "TokenizedRecords",
    "causal_lm_per_sample_loss",
    "evaluate_lm",
    "generate_samples",
    "token_nll",
    "tokenize_records",
]

IGNORE_INDEX = -100  # labels at padding: excluded from the loss and its mean


class TokenizedRecords(Dataset[tuple[torch.Tensor, ...]]):
    """Each record's token ids (truncated, end token appended, unpadded).

    Items are ``(input_ids, attention_mask)`` of shape ``(t_i,)``; :meth:`collate`
    right-pads a batch to its longest record and returns ``[input_ids,
    attention_mask, labels]``, each ``(b, t)``, labels ``-100`` at padding. The
    layout matches :class:`~fedshield.models.texts.TokenizedTexts` (labels last),
    so :func:`~fedshield.models.texts.batch_inputs` splits either.
    """

    def __init__(self, ids: list[list[int]], pad_id: int, truncated: int = 0) -> None:
        self.ids = ids
        self.pad_id = pad_id
        self.truncated = truncated  # records that lost tokens to max_length

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        ids = torch.tensor(self.ids[i], dtype=torch.long)
        return ids, torch.ones_like(ids)

    def collate(self, items: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
        width = max((item[0].numel() for item in items), default=0)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, (row, _) in enumerate(items):
            ids[r, : row.numel()] = row
            mask[r, : row.numel()] = 1
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        return [ids, mask, labels]  # each (b, t)


def _encode(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase
) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            "The tokenizer has no end-of-sequence token; a causal LM's records need "
            "one to mark where each ends. Use the model's own tokenizer."
        )
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [list(ids) + [int(eos)] for ids in encoded]


def tokenize_records(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, *, max_length: int
) -> TokenizedRecords:
    """Token ids of each record, end token appended, truncated to ``max_length``
    (one record = one example; see the module docstring)."""
    full = _encode(texts, tokenizer)
    return TokenizedRecords(
        [row[:max_length] for row in full],
        pad_id=int(tokenizer.pad_token_id),
        truncated=sum(len(row) > max_length for row in full),
    )


def token_nll(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token negative log-likelihoods (b, t-1), in float32 whatever the
    logits' dtype, 0 where the target is padding, and the mask of real targets:
    the logits at position t predict token t + 1."""
    shift_logits = logits[:, :-1, :].float()  # (b, t-1, V)
    targets = labels[:, 1:]  # (b, t-1)
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    return nll, targets != IGNORE_INDEX


def causal_lm_per_sample_loss(
    logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per-record loss (b,): next-token cross-entropy averaged over each record's
    target tokens."""
    nll, valid = token_nll(logits, labels)
    return nll.sum(dim=1) / valid.sum(dim=1).clamp(min=1)


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    dataset: TokenizedRecords,
    *,
    batch_size: int,
    device: torch.device,
) -> EvalResult:
    """Held-out metrics of a causal LM: ``loss`` is the mean negative
    log-likelihood over every target token of the set (not a mean of per-record
    means), ``perplexity`` its exp, ``accuracy`` the share of target tokens the
    model ranks first."""
    model.to(device).eval()
    nll, tokens, correct = 0.0, 0, 0
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate)
    for ids, mask, labels in loader:
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        logits = model(
            **forward_inputs({"input_ids": ids, "attention_mask": mask})
        ).logits  # (b, t, V)
        token_loss, valid = token_nll(logits, labels)  # (b, t-1) each
        nll += float(token_loss.sum())
        guess = logits[:, :-1, :].argmax(dim=-1)  # (b, t-1)
        correct += int(((guess == labels[:, 1:]) & valid).sum())
        tokens += int(valid.sum())
    if tokens == 0:
        raise ValueError(
            "Cannot evaluate a causal LM on a set without a target token: the "
            "held-out records are empty."
        )
    loss = nll / tokens
    return EvalResult(
        accuracy=correct / tokens,
        loss=loss,
        num_examples=len(dataset),
        perplexity=math.exp(min(loss, 700.0)),
        tokens=tokens,
    )


@torch.no_grad()
def generate_samples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    device: torch.device,
) -> list[str]:
    """Greedy continuations of ``prompts`` (the new text only), one at a time so
    that no padding enters a prompt."""
    model.to(device).eval()
    out = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(device)
        generated = model.generate(  # type: ignore[operator]
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = generated[0, enc["input_ids"].shape[1] :]
        out.append(str(tokenizer.decode(new, skip_special_tokens=True)))
    return out
