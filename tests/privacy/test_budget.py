"""Composition and prospective budget checks against independent references.

Reference values were computed with Google's dp-accounting 0.6.0 (not a dependency)::

    acc = dp_accounting.rdp.RdpAccountant()  # or dp_accounting.pld.PLDAccountant()
    for sigma, q, steps in history:
        acc.compose(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)
    acc.get_epsilon(1e-5)

RDP accountants differ only in their grid of orders (so agree to ~1e-3); Opacus'
PRV accountant reports an upper bound of the PLD value.
"""

import math
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from fedshield.common.config import ConfigError
from fedshield.privacy.budget import (
    Release,
    TargetEpsilonSpent,
    accountant_of,
    check_budget,
    compose_epsilon,
    exclusive,
    plan_release,
    steps_per_epoch,
)
from fedshield.privacy.dp import AccountantKind, DPConfig
from fedshield.privacy.fingerprint import dataset_fingerprint

RDP = AccountantKind.RDP
# Two runs on one dataset: run A = 2 rounds of (0.8, 0.1, 10), run B = (1.1, 0.05, 40)
CROSS_RUN = [Release(0.8, 0.1, 10), Release(0.8, 0.1, 10), Release(1.1, 0.05, 40)]
DP_ACCOUNTING_RDP_CROSS_RUN = 6.8917463200405695
DP_ACCOUNTING_PLD_CROSS_RUN = 5.895854732839842
DP_ACCOUNTING_RDP_SINGLE = 2.101366525420273  # (1.0, 0.01, 1000)


def test_single_release_matches_dp_accounting() -> None:
    eps = compose_epsilon([Release(1.0, 0.01, 1000)], delta=1e-5, accountant=RDP)
    assert eps == pytest.approx(DP_ACCOUNTING_RDP_SINGLE, rel=1e-3)


def test_cross_run_composition_matches_dp_accounting_rdp_and_pld() -> None:
    rdp = compose_epsilon(CROSS_RUN, delta=1e-5, accountant=RDP)
    assert rdp == pytest.approx(DP_ACCOUNTING_RDP_CROSS_RUN, rel=1e-3)
    prv = compose_epsilon(CROSS_RUN, delta=1e-5, accountant=AccountantKind.PRV)
    assert DP_ACCOUNTING_PLD_CROSS_RUN <= prv <= DP_ACCOUNTING_PLD_CROSS_RUN * 1.01


def _rdp_of_cross_run() -> tuple[list[float], object]:
    """Opacus' RDP curve of every release in CROSS_RUN, summed, and its orders."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = sum(
        opacus_rdp.compute_rdp(
            q=r.sample_rate,
            noise_multiplier=r.noise_multiplier,
            steps=r.steps,
            orders=orders,
        )
        for r in CROSS_RUN
    )
    return orders, rdp


def test_cross_run_composition_equals_the_rdp_sum_of_all_releases() -> None:
    orders, rdp = _rdp_of_cross_run()
    reference, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    ours = compose_epsilon(CROSS_RUN, delta=1e-5, accountant=RDP)
    assert ours == pytest.approx(float(reference), rel=1e-9)
    one_run = compose_epsilon(CROSS_RUN[:2], delta=1e-5, accountant=RDP)
    assert ours > one_run  # the second run is not reset to zero


def test_equal_consecutive_releases_are_merged_without_changing_epsilon() -> None:
    acc = accountant_of(RDP, CROSS_RUN)
    assert acc.history == [(0.8, 0.1, 20), (1.1, 0.05, 40)]


def test_non_private_release_makes_epsilon_infinite() -> None:
    eps = compose_epsilon(
        [Release(1.0, 0.1, 5), Release(0.0, 0.1, 5)], delta=1e-5, accountant=RDP
    )
    assert math.isinf(eps)
    assert compose_epsilon([], delta=1e-5, accountant=RDP) == 0.0


def test_budget_allows_up_to_and_refuses_beyond_max_epsilon() -> None:
    history = CROSS_RUN[:2]
    planned = CROSS_RUN[2]
    after = compose_epsilon(CROSS_RUN, delta=1e-5, accountant=RDP)
    ok = check_budget(
        history=history, planned=planned, max_epsilon=after, delta=1e-5, accountant=RDP
    )
    assert ok.allowed and ok.after == pytest.approx(after)
    refused = check_budget(
        history=history,
        planned=planned,
        max_epsilon=after - 1e-6,
        delta=1e-5,
        accountant=RDP,
    )
    assert not refused.allowed
    assert "above the site's budget" in refused.reason()
    assert refused.spent == pytest.approx(
        compose_epsilon(history, delta=1e-5, accountant=RDP)
    )


def test_no_budget_allows_everything_but_a_budget_refuses_non_private_rounds() -> None:
    planned = Release(0.0, 0.1, 10)
    free = check_budget(
        history=[], planned=planned, max_epsilon=0.0, delta=1e-5, accountant=RDP
    )
    assert free.allowed and math.isinf(free.left)
    capped = check_budget(
        history=[], planned=planned, max_epsilon=100.0, delta=1e-5, accountant=RDP
    )
    assert not capped.allowed and "non-private" in capped.reason()


def _plan(
    dp: DPConfig,
    *,
    n: int = 200,
    batch: int = 10,
    epochs: int = 1,
    rounds: int = 3,
    server_round: int = 1,
    delta: float = 1e-5,
    history: Sequence[Release] = (),
) -> Release:
    return plan_release(
        dp,
        num_examples=n,
        batch_size=batch,
        local_epochs=epochs,
        planned_rounds=rounds,
        server_round=server_round,
        delta=delta,
        history=history,
    )


def test_plan_release_fixes_rate_and_steps_before_training() -> None:
    dp = DPConfig(noise_multiplier=0.9)
    assert _plan(dp, n=73, batch=8, epochs=2) == Release(0.9, 1 / 10, 20)
    off = _plan(DPConfig(enabled=False), n=10, batch=4)
    assert off == Release(0.0, 1 / 3, 3) and not off.private


def test_plan_takes_the_poisson_samplers_steps_where_float_rounding_drops_one() -> None:
    """2,976 records at batch 32: q = 1/93, and Opacus' sampler takes
    int(1 / (1/93)) = 92 batches an epoch, not 93. The shuffled loader of a
    non-private run takes all 93."""
    assert 1 / (1 / 93) < 93
    dp = _plan(DPConfig(noise_multiplier=1.0), n=2976, batch=32, epochs=2)
    assert dp == Release(1.0, 1 / 93, 2 * 92)
    off = _plan(DPConfig(enabled=False), n=2976, batch=32, epochs=2)
    assert off == Release(0.0, 1 / 93, 2 * 93)
    assert steps_per_epoch(num_examples=2976, batch_size=32, poisson=True) == 92


@pytest.mark.parametrize("epochs", [1, 2])
def test_plan_release_with_target_epsilon_reaches_it_after_planned_rounds(
    epochs: int,
) -> None:
    """sigma covers every step of the planned run: rounds x local epochs x batches."""
    r = _plan(DPConfig(target_epsilon=4.0), epochs=epochs)
    assert r.steps == 20 * epochs
    eps = compose_epsilon([r] * 3, delta=1e-5, accountant=RDP)
    assert eps <= 4.0 and eps == pytest.approx(4.0, abs=0.05)


def test_target_sigma_is_calibrated_at_the_budgets_delta_not_dp_delta() -> None:
    """A site whose node config sets delta=1e-7 reports every epsilon at 1e-7:
    sigma for the target must meet it there. Calibrated at the run's dp.delta
    (1e-5), the same planned run ends well above the target at 1e-7."""
    dp = DPConfig(target_epsilon=4.0, delta=1e-5)
    r = _plan(dp, delta=1e-7)
    eps = compose_epsilon([r] * 3, delta=1e-7, accountant=RDP)
    assert 3.95 < eps <= 4.0
    at_run_delta = _plan(dp, delta=1e-5)
    assert compose_epsilon([at_run_delta] * 3, delta=1e-7, accountant=RDP) > 4.3


def test_delta_of_one_over_n_or_more_is_refused_with_what_to_set() -> None:
    """delta >= 1/n admits publishing a record in the clear; the plan refuses it
    (a coordinator's dp.delta=0.01 for a site of 200 records, say)."""
    dp = DPConfig(noise_multiplier=1.0)
    for delta in (1 / 200, 0.01, 0.5):
        with pytest.raises(
            ConfigError, match=r"delta must be > 0 and < 1/n = 0\.005"
        ) as err:
            _plan(dp, n=200, delta=delta)
        assert f"found delta={delta:g}" in str(err.value)
        assert "node config `delta`" in str(err.value)
    assert _plan(dp, n=200, delta=0.00499).private
    # without DP there is no (epsilon, delta) to protect: the comparison run trains
    assert not _plan(DPConfig(enabled=False), n=200, delta=0.5).private


def _run(
    dp: DPConfig,
    history: list[Release],
    *,
    rounds: int,
    first: int = 1,
    last: int | None = None,
    claimed_round: int | None = None,
) -> list[float]:
    """Rounds ``first..last`` of a run of ``rounds`` planned rounds, each planned on
    the history so far and then recorded in it; epsilon after each round. One full
    batch per round (q = 1: RDP in closed form, so the searches take milliseconds;
    the target-epsilon rule does not depend on q)."""
    after = []
    for rnd in range(first, (last or rounds) + 1):
        server_round = claimed_round or rnd
        r = _plan(dp, n=10, rounds=rounds, server_round=server_round, history=history)
        history.append(r)
        after.append(compose_epsilon(history, delta=1e-5, accountant=RDP))
    return after


def test_a_resume_with_more_rounds_cannot_push_epsilon_above_the_target() -> None:
    """A coordinator runs rounds 1-2 of a 3-round run at target 4, then resumes at
    round 3 with num-server-rounds raised to 8. Calibrated on the history and the
    rounds left, every round stays within the target and the run ends at it.
    (Calibrating sigma afresh for 8 rounds, ignoring rounds 1-2, ends at 4.87.)"""
    dp = DPConfig(target_epsilon=4.0)
    history: list[Release] = []
    before = _run(dp, history, rounds=3, last=2)
    resumed = _run(dp, history, rounds=8, first=3)
    assert max(before + resumed) <= 4.0
    assert resumed[-1] == pytest.approx(4.0, abs=0.05)
    assert history[2].noise_multiplier > history[1].noise_multiplier
    fresh = _plan(dp, n=10, rounds=8)  # for the whole raised run, from scratch
    assert compose_epsilon(history[:2] + [fresh] * 6, delta=1e-5, accountant=RDP) > 4.5


def test_a_second_run_on_the_same_data_gets_only_what_is_left_of_the_target() -> None:
    """The target caps the data's epsilon, not one run's: a new run (round 1 of 3)
    on data a finished run already took to the target is refused; with a higher
    target it may spend only the difference."""
    history: list[Release] = []
    first = _run(DPConfig(target_epsilon=2.0), history, rounds=3)
    again = _run(DPConfig(target_epsilon=2.0), history, rounds=3)
    assert max(first + again) <= 2.0  # the slack of the search only: sigma > 10x
    assert (
        min(r.noise_multiplier for r in history[3:]) > 10 * history[0].noise_multiplier
    )
    after = _run(DPConfig(target_epsilon=4.0), history, rounds=3)
    assert max(after) <= 4.0 and after[-1] == pytest.approx(4.0, abs=0.05)
    over = [Release(0.5, 1.0, 1)]  # epsilon 10.7 (a round without a target)
    with pytest.raises(TargetEpsilonSpent, match="dp.target-epsilon=4") as err:
        _plan(DPConfig(target_epsilon=4.0), n=10, history=over)
    assert "The target is spent" in str(err.value)


def test_a_run_that_understates_its_rounds_only_spends_the_target_sooner() -> None:
    """A coordinator claims every round is the last (server-round =
    num-server-rounds) to get little noise: round 1 spends the target, and later
    rounds get only the search's slack (sigma > 10x) or are refused; epsilon never
    passes the target."""
    dp = DPConfig(target_epsilon=4.0)
    history: list[Release] = []
    after = _run(dp, history, rounds=3, last=1, claimed_round=3)
    assert 3.95 < after[0] <= 4.0
    for _ in range(4):
        try:
            after += _run(dp, history, rounds=3, first=1, last=1, claimed_round=3)
        except TargetEpsilonSpent as refused:
            assert "not trained" in str(refused)
    assert max(after) <= 4.0
    assert all(
        r.noise_multiplier > 10 * history[0].noise_multiplier for r in history[1:]
    )


def test_data_released_without_dp_has_no_target_left() -> None:
    with pytest.raises(TargetEpsilonSpent, match="epsilon=inf"):
        _plan(DPConfig(target_epsilon=8.0), n=10, history=[Release(0.0, 1.0, 1)])


def test_bad_release_and_budget_values_are_explained() -> None:
    with pytest.raises(ValueError, match="sample rate in"):
        Release(1.0, 0.0, 3)
    with pytest.raises(ValueError, match="noise multiplier >= 0"):
        Release(float("nan"), 0.1, 3)
    with pytest.raises(ValueError, match="max-epsilon >= 0"):
        check_budget(
            history=[],
            planned=Release(1, 0.1, 1),
            max_epsilon=-1,
            delta=1e-5,
            accountant=RDP,
        )


def test_site_lock_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    """A second run at the site (its own descriptor, as another process has) gets
    no lock while the first holds it, and gets it at once after."""
    entered = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with exclusive(tmp_path):
            entered.set()
            release.wait(60)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert entered.wait(60)
        second = exclusive(tmp_path, timeout=0)
        with pytest.raises(TimeoutError, match="Another run at this site"):
            second.__enter__()
    finally:
        release.set()
        t.join()
    with exclusive(tmp_path, timeout=0):  # free again: no waiting allowed
        pass


def test_epsilon_is_reported_at_the_budgets_delta() -> None:
    """A budget at delta=1e-7 is stricter than at 1e-3: the same releases must
    compose to the epsilon the accountant gives at each delta, not at a default."""
    orders, rdp = _rdp_of_cross_run()
    eps = {}
    for delta in (1e-3, 1e-7):
        reference, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
        eps[delta] = compose_epsilon(CROSS_RUN, delta=delta, accountant=RDP)
        assert eps[delta] == pytest.approx(float(reference), rel=1e-9)
        check = check_budget(
            history=CROSS_RUN[:2],
            planned=CROSS_RUN[2],
            max_epsilon=100.0,
            delta=delta,
            accountant=RDP,
        )
        assert check.after == pytest.approx(eps[delta], rel=1e-9)
    assert eps[1e-7] > eps[1e-3] * 1.2


def test_fingerprint_is_order_free_and_changes_with_any_text() -> None:
    fp = dataset_fingerprint(("a", "b", "c"))
    assert fp.startswith("text-sha256:")
    assert dataset_fingerprint(("c", "a", "b")) == fp
    assert dataset_fingerprint(("a", "b")) != fp
    assert dataset_fingerprint(("a", "b", "c ")) != fp
    assert dataset_fingerprint(("a", "a", "b", "c")) != fp  # a multiset


def test_no_label_or_task_setting_opens_a_fresh_budget_on_the_same_texts(
    tmp_path: Path,
) -> None:
    """The coordinator switches model.task or data.label-column: the site reads
    the same texts with other labels (or none); its budget scope is unchanged."""
    from fedshield.client.data import SiteDataConfig, read_labeled_file

    f = tmp_path / "site.csv"
    f.write_text("text,label,other\nAlice has diabetes,1,0\nBob is fine,0,1\n")
    classifier = read_labeled_file(f, SiteDataConfig(label_names=("a", "b")))
    other_column = read_labeled_file(
        f, SiteDataConfig(label_column="other", label_names=("a", "b"))
    )
    causal = read_labeled_file(f, SiteDataConfig(labelled=False))
    assert len({classifier.labels, other_column.labels, causal.labels}) == 3
    fps = {dataset_fingerprint(d.texts) for d in (classifier, other_column, causal)}
    assert len(fps) == 1


def test_the_cached_rdp_sum_is_opacus_accountant_to_the_last_bit() -> None:
    """compose_epsilon (RDP) caches one step's RDP per (q, sigma) and scales it:
    every epsilon equals RDPAccountant.get_epsilon on the same history exactly,
    also after the cache holds each entry, and for a repeated (q, sigma) spread
    over several releases."""
    import random

    from opacus.accountants import RDPAccountant

    rng = random.Random(7)
    for _ in range(8):
        releases = [
            Release(
                rng.choice([0.5, 0.8, 1.3, rng.uniform(0.4, 3.0)]),
                rng.choice([0.01, 0.05, rng.uniform(0.001, 0.5)]),
                rng.randint(1, 400),
            )
            for _ in range(rng.randint(1, 5))
        ]
        acc = RDPAccountant()
        acc.history = accountant_of(RDP, releases).history
        want = acc.get_epsilon(delta=1e-5)
        for _ in range(2):  # cold, then cached
            assert compose_epsilon(releases, delta=1e-5, accountant=RDP) == want
