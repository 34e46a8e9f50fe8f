"""Distributed client-level DP: the Skellam sampler, its calibration to the
survivors, its accounting and the modular wrap-around bound.

Statistical tolerances are 6 standard errors (a false failure about once in 10^8
runs) or a chi-square p-value of 1e-7. The sampler and calibration tests fail if
the noise variance is scaled by 0.9 (checked by hand), the accounting tests if
the accounted variance is.
"""

import math
import time
import warnings
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy import stats
from scipy.special import ive, logsumexp

from fedshield.privacy.distributed_dp import (
    DEFAULT_ORDERS,
    DistributedRound,
    SkellamCalibration,
    add_noise,
    distributed_epsilon,
    lift_sum,
    plan_modulus,
    sample_skellam,
    skellam_rdp,
    wrap_probability,
)
from fedshield.privacy.secagg.quantize import Quantizer, modulus_bits

# the orders of google-research/federated distributed_dp/accounting_utils.py
REFERENCE_ORDERS = (*range(2, 129), 256)


def _calibration(**overrides: float) -> SkellamCalibration:
    q = Quantizer(clip_range=1.0, bits=24)  # the run defaults
    args: dict = dict(
        clip_norm=1.0,
        step=2 * q.clip_range / q.levels,
        dimension=100_000,
        noise_multiplier=1.0,
        min_survivors=2,
    )
    args.update(overrides)
    return SkellamCalibration(**args)


# -- sampler ------------------------------------------------------------------


@pytest.mark.parametrize("variance", [3.0, 1e6, 4.4e13])
def test_skellam_noise_has_mean_zero_and_the_requested_variance(
    variance: float,
) -> None:
    n = 1_000_000
    z = sample_skellam(n, variance=variance)
    assert z.dtype == np.int64 and z.shape == (n,)
    # mean: std error sqrt(v / n); variance: relative std error sqrt(2 / n) (the
    # Skellam's excess kurtosis 1/v is negligible)
    assert abs(z.mean()) < 6 * math.sqrt(variance / n)
    assert z.astype(np.float64).var() / variance == pytest.approx(
        1.0, abs=6 * math.sqrt(2 / n)
    )


def _assert_skellam(z: np.ndarray, lam: float, width: int) -> None:
    """Chi-square of ``z`` against Sk(lam, lam) on [-width, width], both tails
    pooled into the end cells."""
    n = z.size
    support = np.arange(-width, width + 1)
    expected = stats.skellam.pmf(support, lam, lam) * n
    observed = np.array([np.count_nonzero(z == k) for k in support], dtype=float)
    expected[0] += stats.skellam.cdf(-width - 1, lam, lam) * n
    expected[-1] += stats.skellam.sf(width, lam, lam) * n
    observed[0] += np.count_nonzero(z < -width)
    observed[-1] += np.count_nonzero(z > width)
    assert stats.chisquare(observed, expected).pvalue > 1e-7


def test_skellam_noise_follows_the_skellam_pmf() -> None:
    variance = 8.0
    _assert_skellam(sample_skellam(400_000, variance=variance), variance / 2, 12)


def test_ptrs_path_follows_the_skellam_pmf() -> None:
    """Rates >= 10 take PTRS with the exact (Loader) acceptance test; a wrong
    constant or a float truncation there changes the shape, not only moments."""
    variance = 100.0  # rate 50 per Poisson
    _assert_skellam(sample_skellam(400_000, variance=variance), variance / 2, 30)


def test_poisson_draws_are_exact_for_an_integer_rate() -> None:
    """An int rate once made the log-pmf array int64, truncating every value."""
    from fedshield.privacy.distributed_dp import _poisson
    from fedshield.privacy.secagg.primitives import Uniforms

    n = 400_000
    x = _poisson(50, n, Uniforms())  # type: ignore[arg-type]
    assert abs(x.mean() - 50) < 6 * math.sqrt(50 / n)
    assert x.var() / 50 == pytest.approx(1.0, abs=6 * math.sqrt(2 / n))


def test_uniforms_are_53_bit_and_fresh_per_source() -> None:
    from fedshield.privacy.secagg.primitives import Uniforms

    a, b = Uniforms().draw(100_000), Uniforms().draw(100_000)
    assert a.min() >= 0 and a.max() < 1
    assert np.all(a * 2.0**53 == np.floor(a * 2.0**53))  # on the 2^-53 grid
    assert not np.array_equal(a, b)  # a fresh key each
    assert a.mean() == pytest.approx(0.5, abs=6 * math.sqrt(1 / 12 / a.size))


def test_two_calls_draw_different_uncorrelated_noise() -> None:
    n = 200_000
    a = sample_skellam(n, variance=1e6)
    b = sample_skellam(n, variance=1e6)
    assert not np.array_equal(a, b)
    assert abs(np.corrcoef(a, b)[0, 1]) < 6 / math.sqrt(n)
    # nor shifted copies of each other (a counter offset of a reused key)
    assert abs(np.corrcoef(a[1:], b[:-1])[0, 1]) < 6 / math.sqrt(n)


def test_sum_of_m_site_shares_has_m_times_the_variance_and_is_skellam() -> None:
    m, n, v = 5, 400_000, 1.6
    total = np.sum([sample_skellam(n, variance=v) for _ in range(m)], axis=0)
    assert total.astype(np.float64).var() / (m * v) == pytest.approx(
        1.0, abs=6 * math.sqrt(2 / n)
    )
    _assert_skellam(total, m * v / 2, 8)


def test_sampler_refuses_zero_noise_and_rates_beyond_exact_sampling() -> None:
    with pytest.raises(ValueError, match="no noise"):
        sample_skellam(10, variance=0.0)
    with pytest.raises(ValueError, match="2\\^51"):
        sample_skellam(10, variance=2.0**52)


@pytest.mark.slow
def test_sampler_speed_for_1m_and_10m_coordinates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Measured on the 2 shared cores of the dev box (ChaCha20 + vectorised PTRS),
    idle: 1M coordinates in 0.09-0.11 s, 10M in about 1 s, at the demo's rate
    (variance 4.4e13 a site); up to twice that under load."""
    for n in (1_000_000, 10_000_000):
        start = time.perf_counter()
        sample_skellam(n, variance=4.4e13)
        with capsys.disabled():
            print(
                f"\nSkellam noise, {n:,} coordinates: "
                f"{time.perf_counter() - start:.2f} s"
            )


# -- calibration ----------------------------------------------------------------


def test_site_noise_of_min_survivors_reaches_the_accounted_float_noise() -> None:
    cal = _calibration(min_survivors=4, dimension=1000)
    # float std of the survivors' total noise: sqrt(m v) * gamma >= z S
    for m in (4, 5, 20):
        assert math.sqrt(m * cal.site_variance) * cal.step >= (
            cal.noise_multiplier * cal.clip_norm * (1 - 1e-12)
        )
    # measured: 4 sites' shares, summed, in float units
    n = 250_000
    shares = [sample_skellam(n, variance=cal.site_variance) for _ in range(4)]
    total = np.sum(shares, axis=0)
    std = float(np.std(total.astype(np.float64))) * cal.step
    assert std == pytest.approx(1.0, abs=6 * math.sqrt(1 / (2 * n)))


def test_sensitivities_are_stated_in_integer_units() -> None:
    cal = _calibration(dimension=100)
    assert cal.l2_sensitivity == pytest.approx(cal.clip_norm / cal.step)
    assert cal.l1_sensitivity == pytest.approx(10 * cal.l2_sensitivity)  # sqrt(d)
    # the site's clip to S - sqrt(d) gamma makes Delta_2 > sqrt(d), hence
    # Delta_1 = sqrt(d) Delta_2 < Delta_2^2
    coarse = _calibration(step=0.5, dimension=100, clip_norm=6.0)
    assert coarse.l2_sensitivity == 12.0 and coarse.l1_sensitivity == 120.0
    # the site clips to S - sqrt(d) gamma, as client/app.py does
    assert cal.site_clip_norm == pytest.approx(1.0 - 10 * cal.step)


def test_fewer_survivors_than_calibrated_for_spend_more_epsilon() -> None:
    cal = _calibration(min_survivors=4)
    eps = {
        m: distributed_epsilon([cal.round_with(m)] * 10, delta=1e-5)
        for m in (1, 2, 3, 4, 8)
    }
    assert eps[1] > eps[2] > eps[3] > eps[4] > eps[8]
    target = _gaussian_epsilon(1.0, rounds=10, delta=1e-5)
    assert eps[4] == pytest.approx(target, rel=1e-6)
    assert eps[3] > 1.1 * target


def test_calibration_refuses_a_step_too_coarse_for_the_clip_norm() -> None:
    with pytest.raises(ValueError, match="quantization-bits"):
        _calibration(step=0.01, dimension=10_000)  # sqrt(d) gamma = 1 >= S


def test_calibration_refuses_a_rate_beyond_exact_sampling() -> None:
    q = Quantizer(clip_range=1.0, bits=32)
    with pytest.raises(ValueError, match="Lower secagg.quantization-bits"):
        _calibration(step=2 * q.clip_range / q.levels, min_survivors=1)


# -- accounting -----------------------------------------------------------------

# (scale s = 1/gamma, l2 and l1 in float units, central variance in float units) ->
# RDP at orders 2, 8, 32, 256, and epsilon at delta = 1e-5 after 1 and 10 rounds
# (REFERENCE_ORDERS), computed with `_skellam_rdp` of google-research/federated
# distributed_dp/accounting_utils.py @5e27a86323a35c2018fb97fbbe755c7ade9370ab
# (l1 from its `rounded_l1_norm_bound`, no rounding inflation) and the RDP -> (eps,
# delta) conversion of dp_accounting's `compute_epsilon` (google/differential-
# privacy @b5b0286), which Opacus' get_privacy_spent implements too.
REFERENCE = [
    (
        dict(scale=4.0, l2=1.0, l1=4.0, var=0.25),
        [6.25, 21.25, 70.0, 518.0],
        [13.551691480042894, 72.62663110385034],
    ),
    (
        dict(scale=32767.5, l2=1.0, l1=1036199.3322956737 / 32767.5, var=1.0),
        [
            1.0000000006998615,
            4.0000000034939145,
            16.000000014670125,
            128.00000011898143,
        ],
        [4.75272833891671, 19.801691491698264],
    ),
    (
        dict(scale=10.0, l2=0.5, l1=2.5, var=0.09),
        [3.4722222222222223, 12.731481481481481, 48.61111111111111, 359.72222222222223],
        [9.646503604140307, 44.84885332607256],
    ),
]


@pytest.mark.parametrize(("case", "rdp", "eps"), REFERENCE)
def test_rdp_and_epsilon_match_the_reference_implementation(
    case: dict[str, float], rdp: list[float], eps: list[float]
) -> None:
    s = case["scale"]
    one = DistributedRound(
        l2_sensitivity=s * case["l2"],
        l1_sensitivity=s * case["l1"],
        variance=s * s * case["var"],
    )
    assert one.rdp([2, 8, 32, 256]) == pytest.approx(rdp, rel=1e-12)
    for rounds, expected in zip((1, 10), eps, strict=True):
        got = distributed_epsilon([one] * rounds, delta=1e-5, orders=REFERENCE_ORDERS)
        assert got == pytest.approx(expected, rel=1e-12)


def _exact_skellam_rdp(alpha: int, shift: int, variance: float) -> float:
    """D_alpha(Sk + shift || Sk) in one dimension, from the pmf e^-2l I_|x|(2l)."""
    lam = variance / 2
    x = np.arange(-400, 401)
    p, q = ive(np.abs(x), 2 * lam), ive(np.abs(x - shift), 2 * lam)
    ok = (p > 0) & (q > 0)
    return float(
        logsumexp(alpha * np.log(q[ok]) + (1 - alpha) * np.log(p[ok])) / (alpha - 1)
    )


@pytest.mark.parametrize("variance", [0.5, 2.0, 8.0, 100.0])
@pytest.mark.parametrize("shift", [1, 3])
def test_the_bound_dominates_the_exact_one_dimensional_divergence(
    variance: float, shift: int
) -> None:
    orders = [2, 3, 5, 10, 30]
    bound = skellam_rdp(
        orders, l2_sensitivity=shift, l1_sensitivity=shift, variance=variance
    )
    exact = [_exact_skellam_rdp(a, shift, variance) for a in orders]
    assert all(b >= e for b, e in zip(bound, exact, strict=True))


def _gaussian_epsilon(z: float, *, rounds: int, delta: float) -> float:
    """The central Gaussian's epsilon (Opacus RDP, q = 1) at our integer orders."""
    rdp = compute_rdp(q=1.0, noise_multiplier=z, steps=rounds, orders=DEFAULT_ORDERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # best order at the edge
        eps, _ = get_privacy_spent(
            orders=list(DEFAULT_ORDERS), rdp=list(rdp), delta=delta
        )
    return float(eps)


@pytest.mark.parametrize("z", [0.7, 1.0, 3.0])
def test_epsilon_approaches_the_continuous_gaussians_at_fine_quantization(
    z: float,
) -> None:
    cal = _calibration(noise_multiplier=z, min_survivors=3)
    rounds = [cal.round_with(3)] * 20
    gaussian = _gaussian_epsilon(z, rounds=20, delta=1e-5)
    eps = distributed_epsilon(rounds, delta=1e-5)
    assert gaussian <= eps <= gaussian * (1 + 1e-6)
    # and per order: the Gaussian term alpha / (2 z^2) plus a vanishing correction
    rdp = rounds[0].rdp()
    gauss_rdp = np.asarray(DEFAULT_ORDERS) / (2 * z * z)
    assert np.all(rdp >= gauss_rdp) and np.allclose(rdp, gauss_rdp, rtol=1e-9)


def test_coarse_quantization_costs_more_than_the_gaussian() -> None:
    # Delta_2 = 8 integer steps: the Skellam correction is visible
    cal = _calibration(step=1 / 8, dimension=16, clip_norm=1.0)
    eps = distributed_epsilon([cal.round_with(2)] * 5, delta=1e-5)
    assert eps > 1.01 * _gaussian_epsilon(1.0, rounds=5, delta=1e-5)


@pytest.mark.parametrize("scale", [0.1, 0.5, 0.9])
def test_scaled_down_noise_exceeds_the_target_epsilon(scale: float) -> None:
    cal = _calibration(min_survivors=4)
    target = _gaussian_epsilon(1.0, rounds=10, delta=1e-5) * (1 + 1e-6)
    honest = cal.round_with(4)
    assert distributed_epsilon([honest] * 10, delta=1e-5) <= target
    weak = DistributedRound(
        l2_sensitivity=honest.l2_sensitivity,
        l1_sensitivity=honest.l1_sensitivity,
        variance=honest.variance * scale,
    )
    assert distributed_epsilon([weak] * 10, delta=1e-5) > target * (1 + 0.02)


def test_rounds_compose_and_no_rounds_cost_nothing() -> None:
    r = _calibration().round_with(2)
    assert distributed_epsilon([], delta=1e-5) == 0.0
    one, ten = (distributed_epsilon([r] * t, delta=1e-5) for t in (1, 10))
    assert 0 < one < ten
    assert np.allclose(sum(r.rdp() for _ in range(10)), 10 * r.rdp())


def test_rdp_refuses_fractional_or_small_orders() -> None:
    r = _calibration().round_with(2)
    with pytest.raises(ValueError, match="integer orders"):
        r.rdp(np.array([1.5, 2.0]))


# -- wrap-around ----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 12),
    count=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_lift_recovers_every_sum_inside_the_window(
    bits: int, count: int, seed: int
) -> None:
    levels = (1 << bits) - 1
    k = modulus_bits(bits, count) + 2
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, levels + 1, size=(count, 64))
    # noise up to the slack r = 2^(k-1) - ceil(count L / 2), either sign
    slack = (1 << (k - 1)) - math.ceil(count * levels / 2)
    noise = rng.integers(-slack + 1, slack, size=64)
    exact = inputs.sum(0) + noise
    dtype = np.uint32 if k <= 32 else np.uint64
    total = np.zeros(64, dtype=np.uint64)
    for i in range(count):
        share = add_noise(
            inputs[i].astype(dtype),
            noise if i == 0 else np.zeros(64, dtype=np.int64),
            modulus_bits=k,
        )
        assert share.dtype == dtype and int(share.max()) < 1 << k
        total = (total + share) & np.uint64((1 << k) - 1)
    lifted = lift_sum(total, modulus_bits=k, count=count, levels=levels)
    assert lifted.dtype == np.int64 and np.array_equal(lifted, exact)


def test_noised_secure_sum_decodes_to_the_sum_plus_the_accounted_noise() -> None:
    q, m, d = Quantizer(clip_range=1.0, bits=16), 4, 20_000
    cal = SkellamCalibration(
        clip_norm=1.0,
        step=2 * q.clip_range / q.levels,
        dimension=d,
        noise_multiplier=1.0,
        min_survivors=m,
    )
    plan = plan_modulus(
        quantization_bits=q.bits,
        participants=m,
        site_variance=cal.site_variance,
        dimension=d,
    )
    k = plan.modulus_bits
    rng = np.random.default_rng(0)
    updates = rng.normal(size=(m, d))
    updates *= cal.site_clip_norm / np.linalg.norm(updates, axis=1, keepdims=True)
    total = np.zeros(d, dtype=np.uint64)
    for x in updates:
        encoded = q.encode(x, modulus=k)
        noise = sample_skellam(d, variance=cal.site_variance)
        y = add_noise(encoded.values, noise, modulus_bits=k)
        total = (total + y) & np.uint64((1 << k) - 1)
    lifted = lift_sum(total, modulus_bits=k, count=m, levels=q.levels)
    decoded = q.decode_sum(lifted, count=m)
    residual = decoded - updates.sum(0)  # noise of float std z S = 1, plus rounding
    assert abs(residual.mean()) < 6 / math.sqrt(d)
    assert residual.std() == pytest.approx(1.0, abs=6 * math.sqrt(1 / (2 * d)))


def test_wrap_bound_dominates_the_exact_skellam_tail_and_shrinks_with_bits() -> None:
    levels, n, d, variance = 255, 3, 1, 4000.0
    probs = [
        wrap_probability(
            modulus_bits=k,
            participants=n,
            levels=levels,
            variance=variance,
            dimension=d,
        )
        for k in range(10, 16)
    ]
    assert all(a > b or b == 0 for a, b in pairwise(probs) if a < 1)
    for k, p in zip(range(10, 16), probs, strict=True):
        r = (1 << (k - 1)) - math.ceil(n * levels / 2)
        if r <= 0:
            assert p == 1.0
            continue
        exact = 2 * stats.skellam.sf(r - 1, variance / 2, variance / 2)  # P(|Z|>=r)
        assert p >= exact


def test_wrap_bound_matches_simulation_where_wraps_are_common() -> None:
    levels, n, d = 15, 2, 200_000
    k = modulus_bits(4, n)  # 6 bits: slack 32 - 15 = 17
    variance = 60.0
    per_coordinate = wrap_probability(
        modulus_bits=k, participants=n, levels=levels, variance=variance, dimension=1
    )
    z = sample_skellam(d, variance=variance)
    observed = np.count_nonzero(np.abs(z) >= 17) / d
    assert observed <= per_coordinate
    assert per_coordinate < 10 * observed + 1e-3  # a Chernoff bound, not vacuous


def test_plan_modulus_for_twenty_sites_and_a_million_coordinates() -> None:
    q = Quantizer(clip_range=1.0, bits=24)
    cal = SkellamCalibration(
        clip_norm=1.0,
        step=2 * q.clip_range / q.levels,
        dimension=1_000_000,
        noise_multiplier=1.0,
        min_survivors=10,
    )
    plan = plan_modulus(
        quantization_bits=24,
        participants=20,
        site_variance=cal.site_variance,
        dimension=1_000_000,
    )
    assert plan.modulus_bits == modulus_bits(24, 20) + plan.headroom_bits
    assert plan.wrap_probability <= 1e-9
    one_less = wrap_probability(
        modulus_bits=plan.modulus_bits - 1,
        participants=20,
        levels=q.levels,
        variance=20 * cal.site_variance,
        dimension=1_000_000,
    )
    assert plan.headroom_bits == 0 or one_less > 1e-9
