"""Adversarial DP training buys robustness on a toy task built so that it must:
Tsipras et al. ("Robustness may be at odds with accuracy", ICLR 2019). Each
record is one token whose frozen embedding holds one robust feature (+-3, agreeing
with the label 90 % of the time) and 16 weak ones (N(+-0.5, 1)): together the weak
ones predict the label better, and a plain classifier leans on them, but an
L-infinity move of 1 per coordinate turns every weak feature against the label.
Only the classifier trains, with DP-SGD (sigma 1, book-keeping clipping)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fedshield.client.trainer import TrainConfig, train_site
from fedshield.models.evaluate import evaluate_model
from fedshield.models.texts import TokenizedTexts
from fedshield.privacy.adversarial import AdversarialConfig, AdversarialMethod, BallNorm
from fedshield.privacy.adversarial.robustness import embedding_pgd_accuracy
from fedshield.privacy.dp import DPConfig, GradSampleMode

WEAK, ETA, ROBUST, AGREE = 16, 0.5, 3.0, 0.9
RADIUS = 2 * ETA  # linf: flips the sign of every weak feature's mean
CPU = torch.device("cpu")


class OneTokenClassifier(nn.Module):
    """A linear classifier on the mean of frozen token embeddings."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(table, freeze=True)
        self.classifier = nn.Linear(table.shape[1], 2)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **_):
        e = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        m = attention_mask.unsqueeze(-1).to(e.dtype)
        return SimpleNamespace(logits=self.classifier((e * m).sum(1) / m.sum(1)))


def _task(n_train: int = 400, n_test: int = 200):
    g = torch.Generator().manual_seed(0)
    n = n_train + n_test
    y = torch.arange(n) % 2
    sign = (2 * y - 1).float()
    agree = torch.where(torch.rand(n, generator=g) < AGREE, 1.0, -1.0)
    robust = ROBUST * sign * agree
    weak = ETA * sign[:, None] + torch.randn((n, WEAK), generator=g)
    table = torch.cat([torch.zeros(1, WEAK + 1), torch.cat([robust[:, None], weak], 1)])

    def records(lo: int, hi: int) -> TokenizedTexts:
        ids = [[i + 1] for i in range(lo, hi)]  # token 0 is padding
        labels = tuple(int(v) for v in y[lo:hi])
        return TokenizedTexts(
            {"input_ids": ids, "attention_mask": [[1]] * len(ids)}, labels, pad_id=0
        )

    return table, records(0, n_train), records(n_train, n)


def _train_and_attack(method: str) -> tuple[float, float]:
    table, train, test = _task()
    torch.manual_seed(0)
    model = OneTokenClassifier(table)
    train_site(
        model=model,
        dataset=train,
        train_cfg=TrainConfig(local_epochs=10, batch_size=32, lr=0.05, head_lr=0.05),
        dp_cfg=DPConfig(noise_multiplier=1.0, max_grad_norm=1.0),
        mode=GradSampleMode.BOOKKEEPING,
        noise_multiplier=1.0,
        seed=0,
        device=CPU,
        adversarial=AdversarialConfig(
            method=AdversarialMethod(method),
            epsilon=RADIUS,
            steps=3,
            norm=BallNorm.LINF,
        ),
    )
    clean = evaluate_model(model, test, batch_size=64, device=CPU).accuracy
    attack = AdversarialConfig(
        method=AdversarialMethod.PGD, epsilon=RADIUS, steps=10, norm=BallNorm.LINF
    )
    robust = embedding_pgd_accuracy(model, test, attack, batch_size=64, device=CPU)
    return clean, robust


@pytest.fixture(scope="module")
def plain() -> tuple[float, float]:
    return _train_and_attack("off")


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_adversarial_dp_training_buys_robust_accuracy(plain, method) -> None:
    clean_plain, robust_plain = plain
    clean, robust = _train_and_attack(method)
    assert clean_plain > 0.95 and robust_plain < 0.3  # leans on the weak features
    assert robust > robust_plain + 0.5 and robust > 0.8  # moved to the robust one
    assert clean > 0.8  # at the cost the theory predicts: about AGREE
