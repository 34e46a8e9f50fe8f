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
from pathlib import Path

import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from fedshield.privacy.budget import (
    Release,
    accountant_of,
    check_budget,
    compose_epsilon,
    exclusive,
    plan_release,
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


def test_plan_release_fixes_rate_and_steps_before_training() -> None:
    dp = DPConfig(noise_multiplier=0.9)
    r = plan_release(
        dp, num_examples=73, batch_size=8, local_epochs=2, planned_rounds=3
    )
    assert r == Release(0.9, 1 / 10, 20)
    off = plan_release(
        DPConfig(enabled=False),
        num_examples=10,
        batch_size=4,
        local_epochs=1,
        planned_rounds=1,
    )
    assert off == Release(0.0, 1 / 3, 3) and not off.private


@pytest.mark.parametrize("epochs", [1, 2])
def test_plan_release_with_target_epsilon_reaches_it_after_planned_rounds(
    epochs: int,
) -> None:
    """sigma covers every step of the planned run: rounds x local epochs x batches."""
    dp = DPConfig(target_epsilon=4.0)
    r = plan_release(
        dp, num_examples=200, batch_size=10, local_epochs=epochs, planned_rounds=3
    )
    assert r.steps == 20 * epochs
    eps = compose_epsilon([r] * 3, delta=1e-5, accountant=RDP)
    assert eps <= 4.0 and eps == pytest.approx(4.0, abs=0.05)


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


def test_fingerprint_is_order_free_and_changes_with_any_record() -> None:
    texts, labels = ("a", "b", "c"), (0, 1, 0)
    fp = dataset_fingerprint(texts, labels)
    assert fp.startswith("sha256:")
    assert dataset_fingerprint(("c", "a", "b"), (0, 0, 1)) == fp
    assert dataset_fingerprint(("a", "b", "c"), (0, 1, 1)) != fp
    assert dataset_fingerprint(("a", "b"), (0, 1)) != fp
    assert dataset_fingerprint(("a", "b", "c "), (0, 1, 0)) != fp


def test_fingerprint_counts_duplicates_and_keeps_labels_paired_to_texts() -> None:
    """A multiset of (text, label) records: a duplicated record or labels moved
    between records is different data, so a new budget scope must not open for
    the same data nor the same scope hide a change."""
    one = dataset_fingerprint(("a", "b"), (0, 1))
    assert dataset_fingerprint(("a", "a", "b"), (0, 0, 1)) != one
    assert dataset_fingerprint(("a", "b"), (1, 0)) != one
    assert dataset_fingerprint(("a", "b"), (0, 2)) != one
    assert dataset_fingerprint(("b", "a"), (1, 0)) == one
