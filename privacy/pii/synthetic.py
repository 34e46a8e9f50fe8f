"""Synthetic PII with known spans, from ``presidio-evaluator``: its sentence templates
("My name is {{person}} and my email is {{email}}") filled from its 3,000 fake
person records and Faker providers, with the character span and type of every
value it put in.

Used for three things: the benchmark's labelled set (``benchmarks/pii.py``), the
demo's realistic site shards (``data.inject-pii``: some records get a PII sentence
appended, so scrubbing has something to remove), and the canary tests.

Offline: presidio-evaluator's ``HospitalProvider`` queries WikiData when built, so
it is left out (no template uses it). Its generator seeds the *global* ``random``,
``numpy.random`` and ``Faker`` state; we restore the first two afterwards so that
nothing else in the process (partitioning, training) changes with it.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "PIISpan",
    "SyntheticSentence",
    "inject_pii",
    "stable_template_lines",
    "synthetic_sentences",
    "template_lines",
]

# presidio-evaluator's template types -> the entity types our scrubber reports
# (theirs: GPE for city/country/state, ZIP_CODE, DOMAIN_NAME). Types absent here
# (TITLE: "Mr."/job titles, NRP: nationalities) are kept as they are.
CANONICAL = {"GPE": "LOCATION", "ZIP_CODE": "US_ZIP_CODE", "DOMAIN_NAME": "URL"}


@dataclass(frozen=True)
class PIISpan:
    start: int
    end: int
    entity_type: str
    value: str


@dataclass(frozen=True)
class SyntheticSentence:
    text: str
    spans: tuple[PIISpan, ...]
    template_id: int


@contextlib.contextmanager
def _global_rng_restored() -> Iterator[None]:
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def template_lines() -> list[str]:
    """presidio-evaluator's shipped templates (one per line)."""
    from presidio_evaluator.data_generator import presidio_templates_file_path

    text = presidio_templates_file_path.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def stable_template_lines() -> list[str]:
    """The templates whose output depends only on the seed: ``{{date_time}}``
    gives Faker's "now"-relative timestamps (microseconds), which would make each
    process of a simulation generate different text."""
    return [t for t in template_lines() if "{{date_time}}" not in t]


@lru_cache(maxsize=2)
def _person_records() -> Any:
    from presidio_evaluator.data_generator.faker_extensions.datasets import (
        load_fake_person_df,
    )

    with _global_rng_restored():
        # the table's full names draw middle initials from the global ``random``,
        # which every process seeds from the OS: seed it, or each simulated site's
        # process (and the audit) would generate other text from the same seed
        random.seed(0)
        return load_fake_person_df()


def synthetic_sentences(
    n: int,
    *,
    seed: int,
    templates: Sequence[str] | None = None,
    lower_case_ratio: float = 0.05,
) -> list[SyntheticSentence]:
    """``n`` sentences, each with the spans of the PII it contains (types mapped by
    :data:`CANONICAL`). The default templates are :func:`stable_template_lines`, for
    which the same (n, seed) gives the same sentences (``{{date_of_birth}}`` is
    relative to today's date, so they may differ across midnight)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, found {n}.")
    if n == 0:
        return []
    faker = _faker(
        tuple(templates) if templates else tuple(stable_template_lines()),
        lower_case_ratio,
    )
    with _global_rng_restored(), contextlib.redirect_stdout(io.StringIO()):
        faker.seed(seed)  # Faker's, ``random``'s and numpy's: all its draws
        samples = faker.generate_new_fake_sentences(n)
    out = []
    for sample in samples:
        spans = tuple(
            sorted(
                (
                    PIISpan(
                        start=s.start_position,
                        end=s.end_position,
                        entity_type=CANONICAL.get(s.entity_type, s.entity_type),
                        # the text, not s.entity_value: presidio-evaluator
                        # lower-cases the latter where the text is not
                        value=sample.full_text[s.start_position : s.end_position],
                    )
                    for s in sample.spans
                ),
                key=lambda s: s.start,
            )
        )
        out.append(
            SyntheticSentence(
                text=sample.full_text, spans=spans, template_id=int(sample.template_id)
            )
        )
    return out


@lru_cache(maxsize=4)
def _faker(templates: tuple[str, ...], lower_case_ratio: float) -> Any:
    """One generator per (templates, ratio) and process: building it (providers,
    3,000 person records, organisation lists) costs ~0.2 s, generating a few
    sentences ~1 ms, and a simulated site injects once per round. Its draws
    depend only on the seed it is given before each use (``seed`` sets Faker's,
    ``random``'s and numpy's state): the cached generator gives exactly what a
    fresh one seeded alike gives (``tests/privacy/test_pii.py``, across processes)."""
    from presidio_evaluator.data_generator import (
        PresidioSentenceFaker,
        presidio_additional_entity_providers,
    )
    from presidio_evaluator.data_generator.faker_extensions import HospitalProvider

    providers = [
        p for p in presidio_additional_entity_providers if p is not HospitalProvider
    ]
    with _global_rng_restored(), contextlib.redirect_stdout(io.StringIO()):
        return PresidioSentenceFaker(
            locale="en_US",
            lower_case_ratio=lower_case_ratio,
            sentence_templates=list(templates),
            entity_providers=providers,
            base_records=_person_records().copy(),
            random_seed=0,
        )


@lru_cache(maxsize=8)
def _cached_sentences(n: int, seed: int) -> tuple[SyntheticSentence, ...]:
    return tuple(synthetic_sentences(n, seed=seed))


def inject_pii(
    texts: Sequence[str], *, fraction: float, seed: int
) -> tuple[list[str], dict[int, SyntheticSentence]]:
    """``texts`` with a synthetic PII sentence appended to ``round(fraction * n)``
    of them (chosen and generated from ``seed``), and which ones got what.

    For simulations and tests only: it makes the embedded default data look like a
    site's real text, so that scrubbing has something to remove."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], found {fraction}.")
    k = round(fraction * len(texts))
    if k == 0:
        return list(texts), {}
    chosen = sorted(random.Random(seed).sample(range(len(texts)), k))
    sentences = _cached_sentences(k, seed)
    out = list(texts)
    injected = {}
    for index, sentence in zip(chosen, sentences, strict=True):
        out[index] = f"{out[index]} {sentence.text}"
        injected[index] = sentence
    return out, injected
