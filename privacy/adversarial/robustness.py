"""Robustness of a classifier, measured: accuracy under an embedding-space PGD
attack at a stated radius, and the success rate of character-level text attacks
(:mod:`.text_attacks`). Used by the server's central evaluation every round
(``eval.attacks``), by ``fedshield evaluate --attack`` on a finished run, and by
``benchmarks/adversarial.py``.

Both attacks are white-box (the evaluator holds the model and its gradients), on
the central test set, never on a site's records. The attacked examples are the
first ``eval.attack-examples`` of the test set, the same every round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from fedshield.common.run_config import check_fields, default, read_fields
from fedshield.models.embeddings import LogitsOf, input_embedding, logits_of
from fedshield.models.loading import forward_inputs
from fedshield.models.texts import LabeledTexts, TokenizedTexts, batch_inputs, tokenize

from .attacks import attack_deltas, frozen, input_gradient
from .config import AdversarialConfig, AdversarialMethod, BallNorm
from .text_attacks import CharAttackResult, char_attack, word_spans

__all__ = [
    "RobustnessConfig",
    "RobustnessResult",
    "embedding_pgd_accuracy",
    "evaluate_robustness",
    "text_attack",
]


@dataclass(frozen=True)
class RobustnessConfig:
    """``eval.*`` settings of the robustness evaluation."""

    enabled: bool = default("eval.attacks")
    epsilon: float = default("eval.robust-epsilon")
    steps: int = default("eval.robust-steps")
    norm: BallNorm = BallNorm(default("adversarial.norm"))
    char_edits: int = default("eval.char-edits")
    examples: int = default("eval.attack-examples")

    KEYS: ClassVar[dict[str, str]] = {
        "enabled": "eval.attacks",
        "epsilon": "eval.robust-epsilon",
        "steps": "eval.robust-steps",
        "norm": "adversarial.norm",
        "char_edits": "eval.char-edits",
        "examples": "eval.attack-examples",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)

    @property
    def pgd(self) -> AdversarialConfig:
        """The evaluation's attack: PGD at the stated radius, alpha 2.5 eps / K."""
        return AdversarialConfig(
            method=AdversarialMethod.PGD,
            epsilon=self.epsilon,
            steps=self.steps,
            norm=self.norm,
            mix=1.0,
        )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RobustnessConfig:
        return cls(**read_fields(run_config, cls.KEYS, convert={"norm": BallNorm}))


@dataclass(frozen=True)
class RobustnessResult:
    robust_accuracy: float  # under embedding PGD at ``epsilon``
    epsilon: float
    char_attack_success: float  # of the texts classified correctly
    char_attacked: int
    examples: int

    def to_json(self) -> dict[str, Any]:
        return {
            "robust_accuracy": self.robust_accuracy,
            "robust_epsilon": self.epsilon,
            "char_attack_success": self.char_attack_success,
            "char_attacked": self.char_attacked,
            "attack_examples": self.examples,
        }


def _params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _loss_under(
    logits: LogitsOf, labels: torch.Tensor, delta: torch.Tensor | None
) -> torch.Tensor:
    return F.cross_entropy(logits(delta).float(), labels, reduction="none")


def embedding_pgd_accuracy(
    model: torch.nn.Module,
    dataset: TokenizedTexts,
    cfg: AdversarialConfig,
    *,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
) -> float:
    """Accuracy of ``model`` (eval mode) when every example's input embeddings
    are moved by ``cfg``'s attack (a misclassified clean example counts as
    wrong: the attack starts from a random point and may not recover it)."""
    model.to(device).eval()
    embedding = input_embedding(model)
    generator = torch.Generator().manual_seed(seed)
    correct = total = 0
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate)
    for batch in loader:
        inputs, labels = batch_inputs(batch, device)
        logits = logits_of(model, inputs, embedding)
        loss_of = partial(_loss_under, logits, labels)
        with torch.no_grad():
            like = embedding(inputs["input_ids"])
        deltas = attack_deltas(
            loss_of,
            like,
            inputs["attention_mask"],
            cfg,
            generator=generator,
            params=_params(model),
        )
        with torch.no_grad():
            predicted = logits(deltas[-1]).argmax(dim=-1)
        correct += int((predicted == labels).sum())
        total += labels.numel()
    if total == 0:
        raise ValueError("Cannot evaluate robustness on an empty dataset.")
    return correct / total


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], list[list[tuple[int, int]]]]:
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
        return_offsets_mapping=True,
    )
    offsets = [[(int(a), int(b)) for a, b in row] for row in enc.pop("offset_mapping")]
    named = {k: v.to(device) for k, v in enc.items()}
    return forward_inputs(named), offsets


def text_attack(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: LabeledTexts,
    *,
    budget: int,
    max_length: int,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
) -> CharAttackResult:
    """The character-level attack of :mod:`.text_attacks` on ``data``, with word
    importance from the loss gradient on each word's token embeddings."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            "The character attack maps words to tokens with a fast tokenizer's "
            f"offsets; {type(tokenizer).__name__} is not one."
        )
    model.to(device).eval()
    embedding = input_embedding(model)

    @torch.no_grad()
    def margins(texts: Sequence[str], labels: Sequence[int]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(texts), batch_size):
            inputs, _ = _encode(
                tokenizer, texts[i : i + batch_size], max_length, device
            )
            logits = model(**inputs).logits.float()
            y = torch.tensor(labels[i : i + batch_size], device=device)
            true = logits.gather(1, y[:, None]).squeeze(1)
            other = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
            out.extend((true - other).tolist())
        return out

    def importance(texts: Sequence[str], labels: Sequence[int]) -> list[list[float]]:
        out: list[list[float]] = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            inputs, offsets = _encode(tokenizer, chunk, max_length, device)
            y = torch.tensor(labels[i : i + batch_size], device=device)
            loss_of = partial(_loss_under, logits_of(model, inputs, embedding), y)
            with torch.no_grad():
                like = embedding(inputs["input_ids"])
            with frozen(_params(model)):
                grad = input_gradient(loss_of, torch.zeros_like(like))
            token_scores = grad.norm(dim=-1).cpu()  # (b, t)
            for row, text in enumerate(chunk):
                scores = []
                for start, end in word_spans(text):
                    tokens = [
                        t
                        for t, (a, b) in enumerate(offsets[row])
                        if b > a and a < end and b > start
                    ]
                    scores.append(float(token_scores[row, tokens].sum()))
                out.append(scores)
        return out

    return char_attack(
        data.texts,
        data.labels,
        margins=margins,
        importance=importance,
        budget=budget,
        seed=seed,
    )


def evaluate_robustness(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    test: LabeledTexts,
    cfg: RobustnessConfig,
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
) -> RobustnessResult:
    """Both attacks on the first ``cfg.examples`` test records."""
    data = test.subset(list(range(min(cfg.examples, len(test)))))
    dataset = tokenize(data, tokenizer, max_length=max_length)
    robust = embedding_pgd_accuracy(
        model, dataset, cfg.pgd, batch_size=batch_size, device=device, seed=seed
    )
    chars = text_attack(
        model,
        tokenizer,
        data,
        budget=cfg.char_edits,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        seed=seed,
    )
    return RobustnessResult(
        robust_accuracy=robust,
        epsilon=cfg.epsilon,
        char_attack_success=chars.success_rate,
        char_attacked=chars.attacked,
        examples=len(data),
    )
