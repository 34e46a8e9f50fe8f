"""Character-level attacks: each edit changes one character of one word, the
greedy attack edits the most important words first, stops when the prediction
flips and never spends more than its budget; and on a tiny classifier the
model-side attack (robustness.text_attack) runs and reports a rate in [0, 1]."""

from __future__ import annotations

import math
import random

import pytest
import torch

from fedshield.models import load_model
from fedshield.models.config import ModelConfig
from fedshield.models.texts import LabeledTexts, tokenize
from fedshield.privacy.adversarial import AdversarialConfig, AdversarialMethod
from fedshield.privacy.adversarial.robustness import (
    RobustnessConfig,
    embedding_pgd_accuracy,
    evaluate_robustness,
    text_attack,
)
from fedshield.privacy.adversarial.text_attacks import (
    HOMOGLYPHS,
    CharEdit,
    char_attack,
    edit_word,
    word_spans,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("edit", list(CharEdit))
def test_each_edit_changes_one_character(edit: CharEdit) -> None:
    rng = random.Random(0)
    for word in ["terrible", "ok", "wonderful", "bad"]:
        out = edit_word(word, edit, rng)
        assert out != word or edit is CharEdit.SWAP and len(set(word)) < len(word)
        if edit is CharEdit.SWAP:
            assert sorted(out) == sorted(word) and len(out) == len(word)
        elif edit is CharEdit.INSERT:
            assert len(out) == len(word) + 1
        elif edit is CharEdit.DELETE:
            assert len(out) == len(word) - 1
        else:
            changed = [(a, b) for a, b in zip(word, out, strict=True) if a != b]
            assert len(changed) == 1 and HOMOGLYPHS[changed[0][0]] == changed[0][1]
    assert edit_word("xyz", CharEdit.HOMOGLYPH, rng) != "xyz"
    assert edit_word("bdf", CharEdit.HOMOGLYPH, rng) == "bdf"  # nothing to map


def test_word_spans_are_the_letter_words() -> None:
    text = "A great film, 10/10 -- don't miss it"
    assert [text[a:b] for a, b in word_spans(text)] == [
        "great",
        "film",
        "don",
        "miss",
        "it",
    ]


def _keyword_model(keyword: str):
    """A 'classifier' whose true-label margin is +1 while ``keyword`` is intact."""

    def margins(texts, labels):
        return [1.0 if keyword in t else -1.0 for t in texts]

    def importance(texts, labels):
        return [
            [1.0 if t[a:b] == keyword else 0.0 for a, b in word_spans(t)] for t in texts
        ]

    return margins, importance


def test_greedy_attack_edits_the_important_word_first_and_stops() -> None:
    margins, importance = _keyword_model("superb")
    texts = ["a superb and moving film", "superb", "plain words only here"]
    result = char_attack(
        texts, [1, 1, 1], margins=margins, importance=importance, budget=3, seed=0
    )
    assert result.attacked == 2  # the third text was misclassified already
    assert result.flipped == 2 and result.success_rate == 1.0
    assert result.mean_edits == 1.0  # the keyword first, then it stopped
    assert "superb" not in result.texts[0] and result.texts[0].startswith("a ")
    assert result.texts[0].endswith(" and moving film")
    assert result.texts[2] == texts[2]  # not attacked


def test_attack_never_exceeds_its_budget() -> None:
    calls = []

    def margins(texts, labels):
        calls.append(len(texts))
        return [1.0] * len(texts)  # never flips

    def importance(texts, labels):
        return [[float(i) for i, _ in enumerate(word_spans(t))] for t in texts]

    text = "one two three four five six"
    result = char_attack(
        [text], [0], margins=margins, importance=importance, budget=2, seed=1
    )
    assert result.flipped == 0 and result.success_rate == 0.0
    words = zip(result.texts[0].split(), text.split(), strict=True)
    assert 1 <= sum(w != o for w, o in words) <= 2
    assert calls == [1, 4, 4]  # the clean check, then 4 candidate edits per word
    with pytest.raises(ValueError, match="budget"):
        char_attack(
            [text], [0], margins=margins, importance=importance, budget=0, seed=1
        )


def test_attacks_on_a_tiny_classifier(tiny_model_dir) -> None:
    loaded = load_model(ModelConfig(source=str(tiny_model_dir), lora_r=4))
    texts = tuple(
        f"the film number {i} was {'great' if i % 2 else 'awful'}" for i in range(12)
    )
    data = LabeledTexts(texts=texts, labels=tuple(i % 2 for i in range(12)))
    chars = text_attack(
        loaded.model,
        loaded.tokenizer,
        data,
        budget=2,
        max_length=16,
        batch_size=4,
        device=CPU,
    )
    assert chars.attacked <= 12 and len(chars.texts) == 12
    assert math.isnan(chars.success_rate) or 0.0 <= chars.success_rate <= 1.0
    dataset = tokenize(data, loaded.tokenizer, max_length=16)
    tiny = AdversarialConfig(method=AdversarialMethod.PGD, epsilon=1e-6, steps=2)
    huge = AdversarialConfig(method=AdversarialMethod.PGD, epsilon=10.0, steps=5)
    clean = embedding_pgd_accuracy(
        loaded.model, dataset, tiny, batch_size=4, device=CPU
    )
    attacked = embedding_pgd_accuracy(
        loaded.model, dataset, huge, batch_size=4, device=CPU
    )
    assert attacked <= clean
    both = evaluate_robustness(
        loaded.model,
        loaded.tokenizer,
        data,
        RobustnessConfig(enabled=True, examples=5, steps=2, char_edits=1),
        max_length=16,
        batch_size=4,
        device=CPU,
    )
    assert both.examples == 5 and 0.0 <= both.robust_accuracy <= 1.0
    assert all(p.grad is None for p in loaded.model.parameters())
