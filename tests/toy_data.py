"""Toy labelled files for tests that run whole federations: each record is a few
words drawn from its class's word list, so a tiny model can learn the classes."""

from __future__ import annotations

import csv
import random
from collections.abc import Mapping
from pathlib import Path


def write_reviews(
    path: Path,
    n: int,
    seed: int,
    words: Mapping[str, str],
    columns: tuple[str, str] = ("text", "label"),
    length: int = 6,
) -> Path:
    """``n`` rows of ``columns`` (text, label) at ``path``: a seeded random label
    of ``words``, and ``length`` words from that label's list."""
    rng = random.Random(seed)
    labels = sorted(words)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(list(columns))
        for _ in range(n):
            label = rng.choice(labels)
            vocabulary = words[label].split()
            text = " ".join(rng.choice(vocabulary) for _ in range(length))
            out.writerow([text, label])
    return path
