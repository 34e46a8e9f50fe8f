"""The audit's four verdicts, its ceiling, the tests' confidence levels, the
pre-run power warning, and ROC figures that never claim more than the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from fedshield.common.run_config import RunConfig
from fedshield.privacy.audit import (
    CanaryTest,
    Verdict,
    audit_guesses,
    clopper_pearson,
    empirical_epsilon,
    roc,
)
from fedshield.privacy.audit.one_run import ceiling, guesses_needed
from fedshield.simulations.audit import confidence_levels, plan_audit


def _all_right(n: int) -> tuple[list[float], list[bool]]:
    """n canaries in, n out, scored perfectly: every guess right."""
    return [5.0] * n + [-5.0] * n, [True] * n + [False] * n


def _test(claimed: float, n: int = 20, *, correct: bool = True) -> CanaryTest:
    scores, included = _all_right(n)
    if not correct:  # the scores carry no information: half the guesses right
        included = [i % 2 == 0 for i in range(2 * n)]
    canaries = audit_guesses(scores, included, k_plus=n, k_minus=n, delta=1e-5)
    return CanaryTest(
        scope="site-0", canaries=canaries, claimed_epsilon=claimed, delta=1e-5
    )


def test_each_verdict_and_its_exit_code() -> None:
    # 40 guesses all right: ceiling ~2.6, and the bound reaches it
    top = _test(1.0).canaries
    assert top is not None and top.empirical_epsilon == pytest.approx(top.ceiling)
    assert 2.0 < top.ceiling < 3.0
    cases = {
        Verdict.VIOLATION: _test(1.0),  # bound ~2.6 > 1
        Verdict.CONSISTENT: _test(1.0, correct=False),  # bound 0 < 1 < ceiling
        Verdict.INCONCLUSIVE: _test(8.0),  # bound 2.6 < 8, but so is the ceiling
        Verdict.NOT_TESTED: CanaryTest(
            scope="site-0", canaries=None, claimed_epsilon=1.0, delta=1e-5
        ),
    }
    for verdict, test in cases.items():
        assert test.verdict is verdict, (verdict, test.explanation())
        assert test.to_dict()["verdict"] == str(verdict)
    codes = {v: v.exit_code for v in Verdict}
    assert codes == {
        Verdict.CONSISTENT: 0,
        Verdict.VIOLATION: 3,
        Verdict.INCONCLUSIVE: 4,
        Verdict.NOT_TESTED: 5,
    }
    assert [v for v in Verdict if v.passed] == [Verdict.CONSISTENT]


def test_an_untested_claim_is_never_consistent() -> None:
    no_dp = _test(math.inf)  # no sample-level DP: nothing is claimed
    assert no_dp.verdict is Verdict.NOT_TESTED
    assert "prove epsilon >=" in no_dp.explanation()
    # two guesses cannot bound epsilon above 0 even when both are right
    few = audit_guesses([1.0, -1.0], [True, False], k_plus=1, k_minus=1, delta=1e-5)
    assert few.ceiling == 0.0
    test = CanaryTest(scope="s", canaries=few, claimed_epsilon=0.5, delta=1e-5)
    assert test.verdict is Verdict.NOT_TESTED
    assert "cannot bound epsilon above 0" in test.explanation()
    # the case: 20 guesses (the old default) against a claim of 8
    scores, included = _all_right(10)
    old_default = audit_guesses(scores, included, k_plus=10, k_minus=10, delta=1e-5)
    assert old_default.ceiling == pytest.approx(
        empirical_epsilon(m=20, r=20, v=20, delta=1e-5)
    )
    verdict = CanaryTest(
        scope="s", canaries=old_default, claimed_epsilon=8.0, delta=1e-5
    ).verdict
    assert verdict is Verdict.INCONCLUSIVE


def test_confidence_levels_bound_the_false_alarms_of_all_tests_together() -> None:
    assert confidence_levels(0.95, 1) == (0.95, 0.95)
    pooled, site = confidence_levels(0.95, 4)
    assert pooled == pytest.approx(0.975) and site == pytest.approx(1 - 0.05 / 8)
    # the union bound over the pooled test and 4 site tests
    assert (1 - pooled) + 4 * (1 - site) == pytest.approx(0.05)


def test_ceiling_grows_with_guesses_and_guesses_needed_finds_the_smallest() -> None:
    ceilings = [ceiling(m=5 * r, r=r, delta=1e-5, confidence=0.95) for r in (20, 200)]
    assert ceilings[0] < ceilings[1]
    needed = guesses_needed(3.0, guess_fraction=0.2, delta=1e-5, confidence=0.95)
    assert needed is not None
    assert ceiling(m=5 * needed, r=needed, delta=1e-5, confidence=0.95) > 3.0
    before = needed - 1
    assert ceiling(m=5 * before, r=before, delta=1e-5, confidence=0.95) <= 3.0
    # with delta = 1e-5 no number of guesses certifies epsilon 8 (the case)
    assert guesses_needed(8.0, guess_fraction=0.2, delta=1e-5, confidence=0.95) is None


def test_plan_warns_before_a_run_whose_audit_cannot_refute_its_claim(
    tiny_run_config: dict,
) -> None:
    weak = {
        **tiny_run_config,
        "dp.target-epsilon": 8.0,
        "audit.canaries": 100,
        "audit.guess-fraction": 0.2,
    }
    plan = plan_audit(RunConfig(weak), 4)
    assert plan.claimed == 8.0 and plan.ceiling < 8.0 and not plan.can_refute
    warning = plan.warning()
    assert warning is not None and "No number of guesses reaches it" in warning
    assert "gradient" in warning  # record canaries: say what comes closest
    reachable = {**weak, "dp.target-epsilon": 3.5}
    plan = plan_audit(RunConfig(reachable), 4)
    assert plan.needed is not None and plan.needed > plan.guesses
    warning = plan.warning()
    assert warning is not None and f"at least {plan.needed} pooled guesses" in warning
    strong = {**reachable, "audit.canaries": 2000}
    assert plan_audit(RunConfig(strong), 4).warning() is None
    # a fixed noise multiplier: the claim is the planned rounds' epsilon
    fixed = {**weak, "dp.target-epsilon": 0.0, "dp.noise-multiplier": 0.8}
    plan = plan_audit(RunConfig(fixed), 2)
    assert plan.claimed is not None and 0 < plan.claimed < math.inf
    no_dp = plan_audit(RunConfig({**weak, "dp.enabled": False}), 2)
    assert no_dp.claimed is None and "not tested" in (no_dp.warning() or "")


# --- ROC figures ------------------------------------------------------------------


def test_every_roc_point_is_kept_for_tpr_at_a_fixed_fpr() -> None:
    """sklearn's default drops points lying on a straight segment of the curve;
    TPR at an FPR that only such a point reaches is then under-reported."""
    members = [10.0] * 2 + [9.0] * 3 + [8.0] * 3 + [0.0] * 2
    others = [9.0, 8.0] + [-1.0] * 18
    # thresholds 10, 9, 8: (FPR, TPR) = (0, .2), (.05, .5), (.1, .8), collinear
    curve = roc(members, others)
    assert curve.tpr_at(0.05) == pytest.approx(0.5)  # (0.2 with the point dropped)
    assert curve.tpr_at(0.0) == pytest.approx(0.2)
    assert curve.tpr_at(0.1) == pytest.approx(1.0)  # the members at 0 beat -1


def test_low_fpr_is_reported_where_the_non_members_can_resolve_it() -> None:
    rng = np.random.default_rng(0)
    curve = roc(rng.normal(1, 1, 300), rng.normal(0, 1, 200))
    assert curve.min_fpr == pytest.approx(1 / 200)
    point = curve.low_fpr(0.001)  # below 1/200: only FPR 0 is reachable
    assert point.fpr == 0.0 and "not reachable" in point.label
    assert curve.low_fpr(0.01).fpr == pytest.approx(0.01)  # 2 of 200
    assert curve.low_fpr(0.01).label == "TPR at 1.0% FPR"


def test_clopper_pearson_matches_scipy_and_covers_the_truth() -> None:
    for k, n in [(0, 20), (3, 20), (20, 20), (57, 300)]:
        expected = binomtest(k, n).proportion_ci(0.95, method="exact")
        low, high = clopper_pearson(k, n)
        assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-9)
    rng = np.random.default_rng(1)
    covered = sum(
        lo <= 0.3 <= hi
        for lo, hi in (
            clopper_pearson(int(rng.binomial(50, 0.3)), 50) for _ in range(400)
        )
    )
    assert covered >= 0.93 * 400
    curve = roc([2.0, 1.5, 0.2], [0.0, 0.1, 0.3])
    point = curve.low_fpr(0.01)
    assert point.ci[0] <= point.tpr <= point.ci[1]
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson(5, 3)


def test_label_skew_alone_does_not_look_like_membership() -> None:
    """A site whose training share is 90 % label 1 against held-out records at
    50 %: an 'attack' that scores the label would seem to work unless the
    non-members are stratified by label."""
    rng = np.random.default_rng(2)
    member_labels = (rng.random(2000) < 0.9).astype(int)
    other_labels = (rng.random(2000) < 0.5).astype(int)
    members = member_labels + rng.normal(0, 0.1, 2000)  # the score is the label
    others = other_labels + rng.normal(0, 0.1, 2000)
    assert roc(members, others).auc > 0.65
    stratified = roc(
        members,
        others,
        member_labels=member_labels.tolist(),
        non_member_labels=other_labels.tolist(),
    )
    assert stratified.auc == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="both members and non-members"):
        roc([1.0], [0.0], member_labels=[1])
    with pytest.raises(ValueError, match="shares a label"):
        roc([1.0], [0.0], member_labels=[1], non_member_labels=[0])


def test_a_run_is_consistent_only_when_every_sites_claim_was_testable() -> None:
    """The pooled test tests the largest claim only: a site claiming less, whose
    own test had no power, leaves the run inconclusive, never green."""
    from pathlib import Path

    from fedshield.privacy.audit import AuditConfig, SiteAudit
    from fedshield.simulations.audit import POOLED, AuditResult

    curve = roc([1.0, 0.5], [0.0, 0.2])
    weak = audit_guesses([1.0, -1.0] * 5, [True, False] * 5, k_plus=3, k_minus=3,
                         delta=1e-5)  # fmt: skip
    scores, included = _all_right(40)
    strong = audit_guesses(scores, [not b for b in included] * 1, k_plus=40,
                           k_minus=40, delta=1e-5)  # fmt: skip
    assert weak.ceiling < 1.5 and strong.ceiling > 2.5
    assert strong.empirical_epsilon == 0.0  # every guess wrong: no evidence

    def site(name: str, claim: float) -> SiteAudit:
        test = CanaryTest(scope=name, canaries=weak, claimed_epsilon=claim, delta=1e-5)
        return SiteAudit(name, curve, None, test)

    pooled = CanaryTest(scope=POOLED, canaries=strong, claimed_epsilon=2.5, delta=1e-5)

    def run(claims: tuple[float, float]) -> AuditResult:
        return AuditResult(
            run_dir=Path("runs/x"),
            summary={"config": {}, "sites": {}},
            audit=AuditConfig(),
            sites=tuple(site(f"site-{k}", c) for k, c in enumerate(claims)),
            pooled_test=pooled,
            curves={POOLED: {"phi": curve}},
        )

    result = run((1.5, 2.5))
    assert pooled.verdict is Verdict.CONSISTENT
    assert result.uncovered == ("site-0",)  # site-1's claim is the pooled one
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "site-0" in result.explanation()
    assert result.to_report()["exit_code"] == 4
    same = run((2.5, 2.5))
    assert same.uncovered == () and same.verdict is Verdict.CONSISTENT
    # sites calibrated to one target land within the accountant's tolerance of it
    assert run((2.495, 2.5)).verdict is Verdict.CONSISTENT


def test_members_of_a_label_no_non_member_has_are_left_out_and_counted() -> None:
    curve = roc(
        [1.0, 2.0, 3.0, 4.0],
        [0.0, 1.0, 0.5],
        member_labels=[0, 0, 1, 1],
        non_member_labels=[0, 0, 0],
    )
    assert curve.members == 2 and curve.unmatched_members == 2
    assert curve.effective_non_members == pytest.approx(3.0)
    skewed = roc(
        [1.0, 2.0, 3.0],
        [0.0, 1.0, 0.5, 0.2],
        member_labels=[0, 0, 1],
        non_member_labels=[0, 1, 1, 1],
    )
    # weights 2/3 / (1/4) for the label-0 non-member, 1/3 / (3/4) for the others
    assert skewed.effective_non_members < 4
