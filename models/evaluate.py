"""Accuracy and mean cross-entropy of a classifier on a tokenized dataset."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .texts import TokenizedTexts, batch_inputs

__all__ = ["EvalResult", "evaluate_model"]


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # classification: of records; causal LM: of target tokens
    loss: float  # mean cross-entropy (causal LM: per target token)
    num_examples: int
    perplexity: float | None = None  # causal LM only: exp(loss)
    tokens: int | None = None  # causal LM only: target tokens scored
    # classifier with eval.attacks (fedshield.privacy.adversarial.robustness)
    robust_accuracy: float | None = None  # under embedding PGD
    char_attack_success: float | None = None  # of the correctly classified texts


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: TokenizedTexts,
    *,
    batch_size: int,
    device: torch.device,
) -> EvalResult:
    model.to(device).eval()
    correct, loss_sum, n = 0, 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate):
        inputs, labels = batch_inputs(batch, device)
        logits = model(**inputs).logits  # (b, num_labels)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == labels).sum())
        n += labels.numel()
    if n == 0:
        raise ValueError("Cannot evaluate on an empty dataset.")
    return EvalResult(accuracy=correct / n, loss=loss_sum / n, num_examples=n)
