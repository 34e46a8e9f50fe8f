"""Macro precision, recall and F1 of the central evaluation, on a fixed case
worked by hand and checked against scikit-learn."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from fedshield.models.evaluate import evaluate_model


class _Fixed(torch.nn.Module):
    """Predicts ``predictions[i]`` for the record whose input id is i."""

    def __init__(self, predictions: list[int], num_labels: int) -> None:
        super().__init__()
        self.logits = torch.nn.functional.one_hot(
            torch.tensor(predictions), num_labels
        ).float()

    def forward(self, input_ids: torch.Tensor, **_: object) -> object:
        return type("Out", (), {"logits": self.logits[input_ids[:, 0]]})()


class _Records(torch.utils.data.Dataset):
    """Record i: input ids [i], its label; collated as the tokenized datasets are
    (input ids, attention mask, labels)."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, items: list[int]) -> list[torch.Tensor]:
        ids = torch.tensor(items).unsqueeze(1)
        return [
            ids,
            torch.ones_like(ids),
            torch.tensor([self.labels[i] for i in items]),
        ]


def test_macro_scores_weigh_a_rare_class_as_much_as_a_common_one() -> None:
    # 3 classes; class 2 is rare and always missed
    truth = [0, 0, 0, 0, 1, 1, 1, 2]
    preds = [0, 0, 0, 1, 1, 1, 0, 0]
    result = evaluate_model(
        _Fixed(preds, 3), _Records(truth), batch_size=3, device=torch.device("cpu")
    )
    # by hand: class 0 P=3/5 R=3/4 F1=2/3; class 1 P=R=F1=2/3; class 2 (never
    # predicted) P=R=F1=0
    assert result.macro_precision == pytest.approx((3 / 5 + 2 / 3 + 0) / 3)
    assert result.macro_recall == pytest.approx((3 / 4 + 2 / 3 + 0) / 3)
    assert result.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert result.accuracy == pytest.approx(5 / 8)
    for ours, theirs in (
        (result.macro_precision, precision_score(truth, preds, average="macro")),
        (result.macro_recall, recall_score(truth, preds, average="macro")),
        (result.macro_f1, f1_score(truth, preds, average="macro")),
    ):
        assert ours == pytest.approx(theirs)
