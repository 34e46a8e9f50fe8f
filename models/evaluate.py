"""Accuracy, mean cross-entropy and macro precision, recall and F1 of a
classifier on a tokenized dataset (the macro scores by scikit-learn, over the
classes that occur in the labels or the predictions)."""

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
    # classifier only: unweighted means over the classes (a rare class counts as
    # much as a common one; accuracy alone hides a model that ignores it)
    macro_precision: float | None = None
    macro_recall: float | None = None
    macro_f1: float | None = None
    # simulated attacks (server.evaluate probes): name -> the share of the probe
    # records the model puts where the attacker wants them
    attack: dict[str, float] | None = None


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: TokenizedTexts,
    *,
    batch_size: int,
    device: torch.device,
) -> EvalResult:
    from sklearn.metrics import precision_recall_fscore_support

    model.to(device).eval()
    loss_sum = 0.0
    truth: list[torch.Tensor] = []
    predicted: list[torch.Tensor] = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate):
        inputs, labels = batch_inputs(batch, device)
        logits = model(**inputs).logits  # (b, num_labels)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        truth.append(labels.cpu())
        predicted.append(logits.argmax(dim=-1).cpu())
    if not truth:
        raise ValueError("Cannot evaluate on an empty dataset.")
    y_true, y_pred = torch.cat(truth).numpy(), torch.cat(predicted).numpy()
    n = len(y_true)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    return EvalResult(
        accuracy=float((y_true == y_pred).mean()),
        loss=loss_sum / n,
        num_examples=n,
        macro_precision=float(precision),
        macro_recall=float(recall),
        macro_f1=float(f1),
    )
