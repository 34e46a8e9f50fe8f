"""Canary records for the one-run audit (:mod:`.one_run`), and which are included.

Each of a site's m canaries is included in its training data independently with
probability 1/2, drawn from a seed. The auditor who knows the seed knows the
inclusion bits; the server does not see them (it never sees the data). Kinds
(:class:`CanaryKind`):

- ``mislabelled``: real texts the site never trains on otherwise (the
  population), each given a wrong label chosen at random. A model that
  memorises a record predicts its (wrong) label, so inclusion shows in the loss.
- ``crafted``: strings of random word-pieces with a random label; they need no
  population data (any site can plant them) and sit far from the real text, the
  strongest signal for a black-box auditor.
- ``gradient``: not records but white-box gradient canaries inserted into the
  DP-SGD steps (:mod:`~fedshield.privacy.audit.gradient_canaries`); the most
  power, testing the mechanism rather than the data pipeline.
- ``secret`` (causal LM only): Secret-Sharer records "my account number is
  4-8-1-5-1-6-2-3-4", nine random digits each (:mod:`.exposure`): high-entropy
  sequences no other record predicts, so inclusion shows in the record's loss
  (the rare-sequence canaries of Panda et al., ICLR 2025, in the Secret Sharer's
  format), and the excluded ones are the held-out baseline of their exposure.
  They enter a site's records *after* PII scrubbing (simulation only), because
  the scrubber tags such digit strings, inconsistently (measured: the dashed form
  becomes ``<DATE_TIME>``, the spaced form stays): scrubbed secrets would test
  the scrubber, which the PII benchmark measures, not what training memorises.

Canaries are neither PII nor real records: they may be stored and reported.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from .exposure import SecretFormat

__all__ = ["SECRET_FORMAT", "Canaries", "CanaryKind", "make_canaries"]

#: The format of ``secret`` canaries: 10**9 candidates, one token per digit.
SECRET_FORMAT = SecretFormat(template="my account number is {secret}", digits=9)

# a fixed vocabulary of short lower-case syllables for crafted canaries
_SYLLABLES = tuple(
    c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")
)


class CanaryKind(StrEnum):
    MISLABELLED = "mislabelled"
    CRAFTED = "crafted"
    GRADIENT = "gradient"
    SECRET = "secret"

    @property
    def is_data(self) -> bool:
        """Canaries that are records (scored by the model's outputs)."""
        return self is not CanaryKind.GRADIENT

    @property
    def after_scrubbing(self) -> bool:
        """Records added to a site's data after its PII scrubbing (see above)."""
        return self is CanaryKind.SECRET


@dataclass(frozen=True)
class Canaries:
    """m canaries (text, label) and whether each is in the training data."""

    kind: CanaryKind
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    included: tuple[bool, ...]
    values: tuple[int, ...] = ()  # secret canaries: each one's value in its format
    # secret canaries: more secrets, always trained on, ``repeats`` copies each
    # (exposure's dose-response; not in the one-run test: k copies are a group)
    repeated: tuple[int, ...] = ()
    repeats: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def included_records(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The included canaries, then each repeated secret ``repeats`` times."""
        keep = [i for i, inc in enumerate(self.included) if inc]
        copies = [
            SECRET_FORMAT.render(v) for v in self.repeated for _ in range(self.repeats)
        ]
        texts = tuple(self.texts[i] for i in keep) + tuple(copies)
        return texts, tuple(self.labels[i] for i in keep) + (0,) * len(copies)


def make_canaries(
    *,
    kind: CanaryKind,
    count: int,
    num_labels: int,
    seed: int,
    population: Sequence[tuple[str, int]] = (),
    repeated: int = 0,
    repeats: int = 0,
) -> Canaries:
    """``count`` canaries of ``kind``, reproducible from ``seed``. Mislabelled
    canaries take ``count`` records of ``population`` (text, true label).
    Secret canaries: ``repeated`` more secrets, ``repeats`` copies each, drawn
    distinct from the others (the first ``count`` are as without them)."""
    if count < 1:
        raise ValueError(f"The canary count must be >= 1; found {count}.")
    if not kind.is_data:
        raise ValueError(
            "Gradient canaries are not records; make them with make_gradient_canaries."
        )
    rng = random.Random(seed)
    if kind is CanaryKind.SECRET:
        values = tuple(SECRET_FORMAT.random_values(np.random.default_rng(seed), count))
        extra: list[int] = []
        more = np.random.default_rng([seed, 1])
        while len(extra) < repeated:  # distinct from every other secret
            v = SECRET_FORMAT.random_values(more, 1)[0]
            if v not in values and v not in extra:
                extra.append(v)
        return Canaries(
            kind=kind,
            texts=tuple(SECRET_FORMAT.render(v) for v in values),
            labels=(0,) * count,
            included=tuple(rng.random() < 0.5 for _ in range(count)),
            values=values,
            repeated=tuple(extra),
            repeats=repeats if extra else 0,
        )
    if num_labels < 2:
        raise ValueError(f"Canaries need >= 2 classes; found {num_labels}.")
    if kind is CanaryKind.MISLABELLED:
        if len(population) < count:
            raise ValueError(
                f"{count} mislabelled canaries need {count} population records "
                f"that no site trains on; found {len(population)}. Lower "
                '`audit.canaries` or use `audit.canary-kind="crafted"`.'
            )
        chosen = rng.sample(list(population), count)
        texts = tuple(text for text, _ in chosen)
        labels = tuple(
            (label + rng.randrange(1, num_labels)) % num_labels for _, label in chosen
        )
    else:
        texts = tuple(
            " ".join(
                "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
                for _ in range(rng.randint(8, 14))
            )
            for _ in range(count)
        )
        labels = tuple(rng.randrange(num_labels) for _ in range(count))
    included = tuple(rng.random() < 0.5 for _ in range(count))
    return Canaries(kind=kind, texts=texts, labels=labels, included=included)
