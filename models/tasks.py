"""What differs between the two task kinds, in one place: how records become
examples, the per-record loss DP-SGD clips, and held-out evaluation.

Sites, the server's central evaluation and the audit call these three and never
branch on the task themselves.

- **sequence classification**: a record is a text and its label; the loss is the
  label's cross-entropy; evaluation reports accuracy over records.
- **causal LM** (:mod:`.lm`): a record is a text (its label unused), truncated to
  ``model.max-length`` tokens, never chunked; the loss is its mean next-token
  cross-entropy; evaluation reports perplexity and token accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from .config import ModelConfig, TaskKind
from .evaluate import EvalResult, evaluate_model
from .lm import (
    TokenizedRecords,
    causal_lm_per_sample_loss,
    evaluate_lm,
    tokenize_records,
)
from .texts import LabeledTexts, TokenizedTexts, tokenize

__all__ = [
    "PerSampleLoss",
    "classification_loss",
    "encode",
    "evaluate",
    "per_sample_loss",
]

Examples = TokenizedTexts | TokenizedRecords

#: ``(logits, labels) -> (b,)``: each record's loss, the quantity DP-SGD clips the
#: gradient of. Classification: the cross-entropy of its label; causal LM: the
#: mean next-token cross-entropy over its tokens
#: (:func:`.lm.causal_lm_per_sample_loss`).
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, reduction="none")  # (b,)


def encode(
    data: LabeledTexts, tokenizer: PreTrainedTokenizerBase, cfg: ModelConfig
) -> Examples:
    """The records of ``data`` as the task's training/evaluation examples."""
    if cfg.task is TaskKind.CAUSAL_LM:
        return tokenize_records(data.texts, tokenizer, max_length=cfg.max_length)
    return tokenize(data, tokenizer, max_length=cfg.max_length)


def per_sample_loss(cfg: ModelConfig) -> PerSampleLoss:
    """``(logits, labels) -> (b,)``: each record's loss."""
    if cfg.task is TaskKind.CAUSAL_LM:
        return causal_lm_per_sample_loss
    return classification_loss


def evaluate(
    model: torch.nn.Module,
    dataset: Dataset[tuple[torch.Tensor, ...]],
    cfg: ModelConfig,
    *,
    batch_size: int,
    device: torch.device,
) -> EvalResult:
    """Held-out metrics of ``model`` on examples built by :func:`encode`."""
    causal = cfg.task is TaskKind.CAUSAL_LM
    if causal and isinstance(dataset, TokenizedRecords):
        return evaluate_lm(model, dataset, batch_size=batch_size, device=device)
    if not causal and isinstance(dataset, TokenizedTexts):
        return evaluate_model(model, dataset, batch_size=batch_size, device=device)
    raise TypeError(
        f"A {cfg.task.value} model cannot be evaluated on a "
        f"{type(dataset).__name__}; build its examples with encode()."
    )
