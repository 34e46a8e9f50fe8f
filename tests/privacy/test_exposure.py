"""Secret-Sharer exposure: exact ranks, ties, the sampled and extrapolated
estimators and the chance baseline, with fake scorers (no model)."""

import json
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from scipy.stats import norm

from fedshield.privacy.audit.exposure import (
    ExposureMethod,
    PlantedSecrets,
    SecretFormat,
    chance_exposure,
    measure_exposure,
    plant_secrets,
)

PIN = SecretFormat(template="my pin is {secret}.", digits=3, separator="-")


def value_of(fmt: SecretFormat, text: str) -> int:
    body = text[len(fmt.prefix) : len(text) - len(fmt.template.split("{secret}")[1])]
    return int(body.replace(fmt.separator, ""))


def scorer(
    fmt: SecretFormat, loss: Callable[[int], float]
) -> Callable[[Sequence[str]], np.ndarray]:
    """A fake model: the loss of a text is ``loss`` of the secret it renders."""
    return lambda texts: np.array([loss(value_of(fmt, t)) for t in texts])


def hashed_uniform(v: int) -> float:
    """A fixed pseudo-random number in (0, 1) for each value."""
    return ((v * 2654435761 + 12345) % 2**32 + 0.5) / 2**32


def one_secret(fmt: SecretFormat, value: int) -> PlantedSecrets:
    return PlantedSecrets(format=fmt, values=(value,), repeats=(1,), held_out=())


def test_render_pads_and_separates_digits() -> None:
    assert PIN.render(7) == "my pin is 0-0-7."
    assert PIN.prefix == "my pin is "
    assert PIN.space_size == 1000
    assert SecretFormat(template="{secret}", digits=4, separator="").render(42) == (
        "0042"
    )


def test_plant_secrets_is_seeded_distinct_and_repeats_each_text() -> None:
    planted = plant_secrets(PIN, repeats=(1, 4, 16), per_repeat=3, seed=5)
    assert planted == plant_secrets(PIN, repeats=(1, 4, 16), per_repeat=3, seed=5)
    assert planted.repeats == (1, 1, 1, 4, 4, 4, 16, 16, 16)
    assert len(planted.held_out) == 9
    assert len(set(planted.values + planted.held_out)) == 18
    texts = planted.training_texts()
    assert len(texts) == 3 * (1 + 4 + 16)
    assert texts.count(PIN.render(planted.values[-1])) == 16
    assert not {PIN.render(v) for v in planted.held_out} & set(texts)


def test_lowest_loss_secret_has_full_exposure() -> None:
    audit = measure_exposure(
        one_secret(PIN, 417), scorer(PIN, lambda v: 0.0 if v == 417 else 1.0 + v)
    )
    (s,) = audit.secrets
    assert audit.method is ExposureMethod.EXACT
    assert s.rank == 1
    assert s.exposure == math.log2(1000)
    assert s.exposure_low == s.exposure and not s.lower_bound


@pytest.mark.parametrize("k", [1, 2, 10, 999, 1000])
def test_kth_ranked_secret_has_log2_n_minus_log2_k(k: int) -> None:
    order = np.random.default_rng(0).permutation(1000)  # order[i]: rank i + 1
    secret = int(order[k - 1])
    loss = np.empty(1000)
    loss[order] = np.arange(1000) * 0.5
    audit = measure_exposure(one_secret(PIN, secret), scorer(PIN, lambda v: loss[v]))
    assert audit.secrets[0].rank == k
    assert audit.secrets[0].exposure == pytest.approx(
        math.log2(1000) - math.log2(k), abs=1e-12
    )


def test_ties_rank_pessimistically_so_they_never_raise_exposure() -> None:
    tied = {3, 500, 800}  # the secret and two others share the lowest loss
    audit = measure_exposure(
        one_secret(PIN, 500), scorer(PIN, lambda v: 0.0 if v in tied else 2.0)
    )
    assert audit.secrets[0].rank == 3
    assert audit.secrets[0].exposure == pytest.approx(math.log2(1000 / 3))
    flat = measure_exposure(one_secret(PIN, 500), scorer(PIN, lambda v: 1.0))
    assert flat.secrets[0].exposure == 0.0


def test_mean_exact_exposure_over_the_whole_space_is_the_chance_expectation() -> None:
    every = tuple(range(1000))
    planted = PlantedSecrets(format=PIN, values=(), repeats=(), held_out=every)
    audit = measure_exposure(planted, scorer(PIN, hashed_uniform))
    assert audit.held_out_mean == pytest.approx(chance_exposure(1000), abs=1e-12)
    direct = math.log2(1000) - sum(math.log2(k) for k in range(1, 1001)) / 1000
    assert audit.chance == pytest.approx(direct, abs=1e-12)
    assert audit.chance == pytest.approx(1.436386, abs=1e-6)


def test_chance_expectation_tends_to_one_over_ln2() -> None:
    assert chance_exposure(1) == 0.0
    assert chance_exposure(2) == pytest.approx(0.5)  # ranks 1, 2: bits 1 and 0
    assert chance_exposure(10**12) == pytest.approx(1 / math.log(2), abs=1e-9)


def test_held_out_secrets_under_a_random_scorer_average_near_chance() -> None:
    planted = plant_secrets(PIN, repeats=(1,), per_repeat=400, seed=1)
    audit = measure_exposure(planted, scorer(PIN, hashed_uniform))
    # exposure of a held-out secret has sd ~ 1/ln 2 bits: 400 of them, se ~ 0.07
    assert audit.held_out_mean == pytest.approx(audit.chance, abs=0.25)
    held, planted_group = audit.groups
    assert (held.repeats, held.count, planted_group.repeats) == (0, 400, 1)


def test_sampled_estimate_agrees_with_the_exact_exposure() -> None:
    fmt = SecretFormat(template="code {secret}", digits=4)
    order = np.random.default_rng(3).permutation(10_000)
    loss = np.empty(10_000)
    loss[order] = np.arange(10_000, dtype=float)
    secret = int(order[99])  # rank 100: exposure log2(100) = 6.64 bits
    planted, score = one_secret(fmt, secret), scorer(fmt, lambda v: loss[v])
    exact = measure_exposure(planted, score).secrets[0]
    assert exact.exposure == pytest.approx(math.log2(100))
    misses = 0
    for seed in range(20):
        sampled = measure_exposure(
            planted, score, method=ExposureMethod.SAMPLED, samples=2000, seed=seed
        ).secrets[0]
        assert sampled.method is ExposureMethod.SAMPLED and not sampled.lower_bound
        assert sampled.exposure == pytest.approx(exact.exposure, abs=0.6)
        misses += sampled.exposure_low > exact.exposure
    assert misses <= 3  # a 95% lower bound: about 1 miss in 20 expected


def test_sampled_secret_below_every_sample_is_flagged_as_a_lower_bound() -> None:
    fmt = SecretFormat(template="id {secret}", digits=6)
    score = scorer(fmt, lambda v: -1.0 if v == 123_456 else hashed_uniform(v))
    audit = measure_exposure(one_secret(fmt, 123_456), score, samples=1000)
    (s,) = audit.secrets
    assert audit.method is ExposureMethod.SAMPLED  # 10**6 > exact_limit
    assert s.lower_bound and audit.groups[0].lower_bounded == 1
    assert s.exposure == pytest.approx(math.log2(1000), abs=0.01)  # ~ log2 m
    # one-sided Clopper-Pearson: 0 of 1000 gives fraction <= 1 - 0.05**(1/1000)
    assert s.exposure_low == pytest.approx(-math.log2(1 - 0.05**0.001), abs=0.01)


def test_skew_normal_extrapolation_recovers_a_normal_cdf() -> None:
    fmt = SecretFormat(template="key {secret}", digits=9)
    secrets = {11: -2.0, 22: -4.0}  # both planted; the rest is N(0, 1)
    score = scorer(fmt, lambda v: secrets.get(v, norm.ppf(hashed_uniform(v))))
    planted = PlantedSecrets(format=fmt, values=(11, 22), repeats=(1, 1), held_out=())
    audit = measure_exposure(
        planted, score, method=ExposureMethod.EXTRAPOLATED, samples=5000, seed=0
    )
    near, far = audit.secrets
    assert near.method is ExposureMethod.EXTRAPOLATED
    assert near.exposure == pytest.approx(-norm.logcdf(-2.0) / math.log(2), abs=0.3)
    assert far.exposure == pytest.approx(-norm.logcdf(-4.0) / math.log(2), abs=1.0)
    assert far.exposure > math.log2(5000)  # beyond what the samples resolve
    assert far.exposure_low < far.exposure  # the bound ignores the fit


def test_extrapolated_exposure_is_capped_at_log2_of_the_space() -> None:
    fmt = SecretFormat(template="{secret}", digits=4)
    score = scorer(fmt, lambda v: -50.0 if v == 9 else norm.ppf(hashed_uniform(v)))
    audit = measure_exposure(
        one_secret(fmt, 9), score, method=ExposureMethod.EXTRAPOLATED, samples=500
    )
    assert audit.secrets[0].exposure == math.log2(10_000)
    assert audit.secrets[0].rank == 1


def test_scores_in_batches_and_reports_json() -> None:
    seen: list[int] = []

    def score(texts: Sequence[str]) -> np.ndarray:
        seen.append(len(texts))
        return np.array([hashed_uniform(value_of(PIN, t)) for t in texts])

    planted = plant_secrets(PIN, repeats=(1, 4), per_repeat=2, seed=0)
    audit = measure_exposure(planted, score, batch_size=64)
    assert max(seen) == 64 and sum(seen) == 1000
    report = json.loads(json.dumps(audit.to_dict()))
    assert [g["repeats"] for g in report["groups"]] == [0, 1, 4]
    assert len(report["secrets"]) == 8


def test_warns_when_held_out_secrets_look_memorised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    planted = plant_secrets(PIN, repeats=(1,), per_repeat=20, seed=2)
    leaked = set(planted.held_out)
    score = scorer(PIN, lambda v: 0.0 if v in leaked else 1.0 + hashed_uniform(v))
    with caplog.at_level(logging.WARNING):
        measure_exposure(planted, score)
    assert "above chance" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"digits": 0}, "`digits` must be in"),
        ({"digits": 19}, "`digits` must be in"),
        ({"template": "my pin"}, "exactly once"),
        ({"template": "{secret} {secret}"}, "exactly once"),
        ({"separator": "1"}, "must not contain digits"),
    ],
)
def test_secret_format_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SecretFormat(**kwargs)  # type: ignore[arg-type]


def test_secret_values_and_planting_are_validated() -> None:
    with pytest.raises(ValueError, match=r"must be in \[0, 1000\); found 1000"):
        PIN.render(1000)
    with pytest.raises(ValueError, match="Cannot draw 1001 distinct"):
        PIN.random_values(np.random.default_rng(0), 1001)
    with pytest.raises(ValueError, match="Cannot draw 1200 distinct"):
        plant_secrets(PIN, repeats=(1, 2, 3), per_repeat=200, seed=0)
    with pytest.raises(ValueError, match="Repeat counts must be >= 1"):
        PlantedSecrets(format=PIN, values=(1,), repeats=(0,), held_out=())
    with pytest.raises(ValueError, match="distinct"):
        PlantedSecrets(format=PIN, values=(1,), repeats=(1,), held_out=(1,))


@pytest.mark.parametrize(
    ("score", "message"),
    [
        (lambda texts: np.zeros((len(texts), 1)), r"shape \(\d+, 1\)"),
        (lambda texts: np.zeros(len(texts) - 1), "one loss per text"),
        (lambda texts: np.full(len(texts), np.nan), "NaN or inf"),
    ],
)
def test_score_must_return_one_finite_loss_per_text(
    score: Callable[[Sequence[str]], np.ndarray], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        measure_exposure(one_secret(PIN, 1), score)


def test_method_and_sample_count_are_validated() -> None:
    fmt = SecretFormat(digits=6)
    score = scorer(fmt, hashed_uniform)
    with pytest.raises(ValueError, match="above exact_limit"):
        measure_exposure(one_secret(fmt, 1), score, method=ExposureMethod.EXACT)
    with pytest.raises(ValueError, match="`samples` must be in"):
        measure_exposure(one_secret(fmt, 1), score, samples=1)
