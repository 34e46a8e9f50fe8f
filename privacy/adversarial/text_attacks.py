"""Character-level text attacks that need no downloads: a DeepWordBug-style greedy
attack (Gao, Lanchantin, Soffa and Qi, IEEE S&P Workshops 2018) on the words a
model's gradient marks as most important.

For each text the attacker ranks its words by importance (the norm of the loss
gradient on the word's token embeddings, summed over its tokens: one backward per
text, where DeepWordBug's scores need one forward per word), then edits them in
that order, one character edit per word, at most ``budget`` words. At each word it
tries one edit of each kind and keeps the one that lowers the true label's margin
most; it stops as soon as the prediction flips. The attack succeeds on a text the
model classified correctly when the prediction flips within the budget.

Edits (each keeps the word readable to a person):

- ``swap``: two adjacent inner characters exchanged;
- ``insert``: a random letter inserted inside the word;
- ``delete``: an inner character removed;
- ``homoglyph``: a Latin letter replaced by a Cyrillic or Greek look-alike
  (``a`` -> ``а``); tokenizers split or [UNK] them.

Positions and letters come from a seeded generator: the same seed, model and
texts give the same attack.

Written here rather than taken from TextAttack or OpenAttack: both pull word
embeddings, language models or NLTK data from the network at import or first
use, which an offline site cannot; the character edits are a few lines each.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "HOMOGLYPHS",
    "CharAttackResult",
    "CharEdit",
    "char_attack",
    "edit_word",
    "word_spans",
]

#: Latin letters and look-alikes that render the same in common fonts.
HOMOGLYPHS = {
    "a": "\u0430",  # Cyrillic a
    "c": "\u0441",
    "e": "\u0435",
    "i": "\u0456",
    "j": "\u0458",
    "o": "\u043e",
    "p": "\u0440",
    "s": "\u0455",
    "x": "\u0445",
    "y": "\u0443",
    "k": "\u03ba",  # Greek kappa
    "v": "\u03bd",  # Greek nu
}

_WORD = re.compile(r"[^\W\d_]{2,}")  # letters only, at least two


class CharEdit(StrEnum):
    SWAP = "swap"
    INSERT = "insert"
    DELETE = "delete"
    HOMOGLYPH = "homoglyph"


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word of two or more letters: the editable words."""
    return [m.span() for m in _WORD.finditer(text)]


def edit_word(word: str, edit: CharEdit, rng: random.Random) -> str:
    """``word`` with one character edit; a word the edit cannot change (a
    homoglyph for a word with no mappable letter) comes back unchanged."""
    n = len(word)
    if edit is CharEdit.SWAP and n >= 2:
        i = rng.randrange(n - 1) if n < 4 else rng.randrange(1, n - 2)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if edit is CharEdit.INSERT:
        i = rng.randrange(1, n) if n > 1 else 1
        return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[i:]
    if edit is CharEdit.DELETE and n >= 2:
        i = rng.randrange(1, n - 1) if n > 2 else rng.randrange(n)
        return word[:i] + word[i + 1 :]
    if edit is CharEdit.HOMOGLYPH:
        places = [i for i, ch in enumerate(word) if ch.lower() in HOMOGLYPHS]
        if places:
            i = rng.choice(places)
            return word[:i] + HOMOGLYPHS[word[i].lower()] + word[i + 1 :]
    return word


@dataclass(frozen=True)
class CharAttackResult:
    """Attack success over the texts the model got right (``attacked``)."""

    attacked: int  # texts classified correctly before the attack
    flipped: int  # of those, misclassified after at most ``budget`` word edits
    budget: int
    mean_edits: float  # words edited per flipped text
    texts: tuple[str, ...]  # every text as the attack left it

    @property
    def success_rate(self) -> float:
        return self.flipped / self.attacked if self.attacked else float("nan")


#: ``(texts, labels) -> margins``: the true label's logit minus the largest other
#: one, per text (negative: misclassified).
Margins = Callable[[Sequence[str], Sequence[int]], Sequence[float]]
#: ``(texts, labels) -> [[importance of each word_spans(text) word], ...]``.
Importance = Callable[[Sequence[str], Sequence[int]], Sequence[Sequence[float]]]


def char_attack(
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    margins: Margins,
    importance: Importance,
    budget: int,
    seed: int,
) -> CharAttackResult:
    """The greedy attack above on every text (see the module docstring)."""
    if budget < 1:
        raise ValueError(f"The edit budget must be >= 1 word; found {budget}.")
    rng = random.Random(seed)
    current = list(texts)
    margin = list(margins(current, labels))
    correct = [i for i, m in enumerate(margin) if m > 0]
    scores = importance([texts[i] for i in correct], [labels[i] for i in correct])
    plans: dict[int, list[tuple[int, int]]] = {}
    for i, word_scores in zip(correct, scores, strict=True):
        spans = word_spans(texts[i])
        order = sorted(range(len(spans)), key=lambda j: -word_scores[j])
        plans[i] = [spans[j] for j in order[:budget]]
    edits = dict.fromkeys(correct, 0)
    for step in range(budget):
        live = [i for i in correct if margin[i] > 0 and step < len(plans[i])]
        if not live:
            break
        candidates: list[str] = []
        owners: list[int] = []
        for i in live:
            start, end = plans[i][step]
            text = current[i]
            for edit in CharEdit:
                word = edit_word(text[start:end], edit, rng)
                # an edit may change the word's length: shift later spans
                candidates.append(text[:start] + word + text[end:])
                owners.append(i)
        scored = margins(candidates, [labels[i] for i in owners])
        best: dict[int, tuple[float, str]] = {}
        for i, text, m in zip(owners, candidates, scored, strict=True):
            if i not in best or m < best[i][0]:
                best[i] = (float(m), text)
        for i, (m, text) in best.items():
            start, end = plans[i][step]
            shift = len(text) - len(current[i])
            plans[i] = plans[i][: step + 1] + [
                (s + shift, e + shift) if s >= end else (s, e)
                for s, e in plans[i][step + 1 :]
            ]
            current[i], margin[i] = text, m
            edits[i] += 1
    flipped = [i for i in correct if margin[i] <= 0]
    return CharAttackResult(
        attacked=len(correct),
        flipped=len(flipped),
        budget=budget,
        mean_edits=sum(edits[i] for i in flipped) / len(flipped) if flipped else 0.0,
        texts=tuple(current),
    )
