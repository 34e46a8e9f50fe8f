"""Membership-inference statistics, LiRA, the one-run audit bound and canaries."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import binom, norm

from fedshield.common.config import ConfigError
from fedshield.privacy.audit import (
    AuditConfig,
    CanaryKind,
    CanaryTest,
    OneRunAudit,
    RocCurve,
    SiteAudit,
    Verdict,
    audit_guesses,
    empirical_epsilon,
    lira_offline_scores,
    logit_confidence,
    make_canaries,
    p_value,
    roc,
)
from fedshield.privacy.audit.canaries import SECRET_FORMAT

POOLED_NAME = "all sites"


def test_roc_auc_and_tpr_at_fpr_on_a_hand_computed_case() -> None:
    curve = roc([0.9, 0.8, 0.3], [0.7, 0.2, 0.1, 0.05])
    # member 0.9 and 0.8 beat all 4 non-members, 0.3 beats 3 of them
    assert curve.auc == pytest.approx(11 / 12)
    assert curve.tpr_at(0.0) == pytest.approx(2 / 3)  # threshold above 0.7
    assert curve.tpr_at(0.25) == pytest.approx(1.0)  # threshold 0.3: one FP in 4
    assert curve.to_dict()["tpr_at_0.01_fpr"] == pytest.approx(2 / 3)


def test_roc_of_known_gaussian_separation() -> None:
    rng = np.random.default_rng(0)
    n, shift = 20_000, 1.0
    members, others = rng.normal(shift, 1, n), rng.normal(0, 1, n)
    curve = roc(members, others)
    # AUC of N(d, 1) vs N(0, 1) is Phi(d / sqrt 2); TPR at FPR f is Phi(d + Phi^-1(f))
    assert curve.auc == pytest.approx(norm.cdf(shift / math.sqrt(2)), abs=0.01)
    assert curve.tpr_at(0.01) == pytest.approx(
        norm.cdf(shift + norm.ppf(0.01)), abs=0.02
    )
    same = roc(rng.normal(0, 1, n), others)
    assert same.auc == pytest.approx(0.5, abs=0.01)
    assert roc([1.0, 2.0], [0.0, 0.5]).auc == 1.0


def test_roc_rejects_empty_or_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="members and non-members"):
        roc([], [0.1])
    with pytest.raises(ValueError, match="finite"):
        roc([float("nan")], [0.1])


def test_logit_confidence_is_log_odds_of_the_true_label() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    p = logits.softmax(dim=1)[torch.arange(2), labels]
    expected = torch.log(p) - torch.log1p(-p)
    assert torch.allclose(logit_confidence(logits, labels), expected, atol=1e-5)


def test_lira_separates_members_shifted_above_their_reference_distribution() -> None:
    rng = np.random.default_rng(1)
    n, k = 2000, 4
    mu = rng.normal(0, 2, n)  # per-record difficulty
    refs = mu + rng.normal(0, 0.5, (k, n))  # OUT models
    target = mu + rng.normal(0, 0.5, n)
    target[: n // 2] += 1.5  # the first half are members
    scores = lira_offline_scores(target, refs)
    assert roc(scores[: n // 2], scores[n // 2 :]).auc > 0.9
    # without the per-record calibration the same signal is drowned by difficulty
    assert roc(target[: n // 2], target[n // 2 :]).auc < 0.75
    assert roc(scores[n // 2 :][::2], scores[n // 2 :][1::2]).auc == pytest.approx(
        0.5, abs=0.06
    )
    with pytest.raises(ValueError, match="Reference confidences"):
        lira_offline_scores(target, refs[:, :10])


def _eps_delta0_by_root(r: int, v: int, beta: float = 0.05) -> float:
    """Independent: with delta = 0 the bound solves P[Binomial(r, q) >= v] = beta."""

    def excess(eps: float) -> float:
        return float(binom.sf(v - 1, r, 1 / (1 + math.exp(-eps)))) - beta

    return brentq(excess, 0.0, 50.0, xtol=1e-10)


def _p_value_direct(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Independent: Theorem 3.1 of Steinke et al., vectorised."""
    q = 1 / (1 + math.exp(-eps))
    tail = binom.sf(v - 1, r, q)
    below = np.cumsum(binom.pmf(v - np.arange(1, v + 1), r, q))
    return min(tail + 2 * m * delta * np.max(below / np.arange(1, v + 1)), 1.0)


@pytest.mark.parametrize(
    ("m", "r", "v"), [(1000, 100, 100), (1000, 100, 80), (200, 40, 31)]
)
def test_one_run_bound_matches_independent_computations(m: int, r: int, v: int) -> None:
    eps = empirical_epsilon(m=m, r=r, v=v, delta=0.0)
    assert eps == pytest.approx(_eps_delta0_by_root(r, v), abs=1e-5)
    if v == r:  # closed form: q^r = 0.05
        q = 0.05 ** (1 / r)
        assert eps == pytest.approx(math.log(q / (1 - q)), abs=1e-5)  # 3.4934 for r=100
    with_delta = empirical_epsilon(m=m, r=r, v=v, delta=1e-5)
    assert with_delta <= eps
    for e in (0.5, with_delta, 3.0):
        assert p_value(m=m, r=r, v=v, eps=e, delta=1e-5) == pytest.approx(
            _p_value_direct(m, r, v, e, 1e-5), rel=1e-9
        )
    # at the bound the p-value crosses 0.05
    assert _p_value_direct(m, r, v, with_delta - 1e-4, 1e-5) < 0.05
    assert _p_value_direct(m, r, v, with_delta + 1e-4, 1e-5) >= 0.05


def test_one_run_bound_is_zero_without_evidence_and_grows_with_evidence() -> None:
    assert empirical_epsilon(m=100, r=20, v=10, delta=1e-5) == 0.0
    # P[Binomial(20, 1/2) >= 14] = 0.058 > 0.05: chance explains 14 of 20
    assert empirical_epsilon(m=100, r=20, v=14, delta=0.0) == 0.0
    bounds = [empirical_epsilon(m=100, r=20, v=v, delta=1e-5) for v in (15, 16, 18, 20)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    with pytest.raises(ValueError, match="v <= r <= m"):
        p_value(m=10, r=20, v=5, eps=1.0, delta=0.0)


def test_audit_guesses_counts_top_and_bottom_guesses() -> None:
    scores = [0.9, 0.8, 0.7, 0.5, 0.4, 0.1]
    included = [True, False, True, True, False, False]
    result = audit_guesses(scores, included, k_plus=2, k_minus=2, delta=0.0)
    # "in": 0.9 (right), 0.8 (wrong); "out": 0.1 (right), 0.4 (right)
    assert (result.canaries, result.guesses, result.correct) == (6, 4, 3)
    assert result.empirical_epsilon == empirical_epsilon(m=6, r=4, v=3, delta=0.0)
    with pytest.raises(ValueError, match="k_plus"):
        audit_guesses(scores, included, k_plus=5, k_minus=2, delta=0.0)


def test_canaries_are_reproducible_mislabelled_and_included_about_half() -> None:
    population = [(f"snippet {i}", i % 2) for i in range(500)]
    a = make_canaries(
        kind=CanaryKind.MISLABELLED,
        count=400,
        num_labels=2,
        seed=7,
        population=population,
    )
    b = make_canaries(
        kind=CanaryKind.MISLABELLED,
        count=400,
        num_labels=2,
        seed=7,
        population=population,
    )
    assert a == b and len(a) == 400
    truth = dict(population)
    assert all(
        label != truth[text] for text, label in zip(a.texts, a.labels, strict=True)
    )
    assert 150 < sum(a.included) < 250
    texts, labels = a.included_records()
    assert len(texts) == sum(a.included) == len(labels)
    crafted = make_canaries(kind=CanaryKind.CRAFTED, count=50, num_labels=3, seed=1)
    assert len(set(crafted.texts)) == 50 and set(crafted.labels) <= {0, 1, 2}
    with pytest.raises(ValueError, match="population records"):
        make_canaries(kind=CanaryKind.MISLABELLED, count=10, num_labels=2, seed=1)


def test_audit_config_explains_bad_values_and_splits_the_guesses() -> None:
    assert AuditConfig(canaries=100, guess_fraction=0.2).guesses == (10, 10)
    assert AuditConfig(canaries=5, guess_fraction=0.1).guesses == (1, 1)
    with pytest.raises(ConfigError, match="audit.canaries"):
        AuditConfig(canaries=-1)
    with pytest.raises(ConfigError, match="audit.guess-fraction"):
        AuditConfig(guess_fraction=0.0)
    with pytest.raises(ConfigError, match="audit.confidence"):
        AuditConfig(confidence=1.0)


def _test(scope: str, canaries: OneRunAudit | None, claimed: float) -> CanaryTest:
    return CanaryTest(
        scope=scope, canaries=canaries, claimed_epsilon=claimed, delta=1e-5
    )


def _report(sites: list[SiteAudit], pooled: CanaryTest, curve: RocCurve) -> dict:
    tests = [*(s.test for s in sites), pooled]
    violated = any(t.verdict is Verdict.VIOLATION for t in tests)
    verdict = Verdict.VIOLATION if violated else pooled.verdict
    return {
        "run_dir": "runs/x",
        "verdict": str(verdict),
        "exit_code": verdict.exit_code,
        "pooled_test": pooled.to_dict(),
        "summary": {
            "config": {"model.source": "<script>alert(1)</script>"},
            "initial": {"accuracy": 0.5, "loss": 0.7},
            "rounds": [{"round": 1, "accuracy": 0.6, "loss": 0.65}],
            "sites": {"site-0": {"run_epsilon": 1.0, "pii": {"PERSON": 3}}},
        },
        "audit_config": {"confidence": 0.95},
        "sites": [s.to_dict() for s in sites],
        "violations": [
            t.scope
            for t in [*(s.test for s in sites), pooled]
            if t.verdict == "violation"
        ],
        "curves": {s.site: {"phi": curve} for s in sites},
    }


def test_a_violation_is_reported_loudly_and_config_values_are_escaped() -> None:
    from fedshield.privacy.audit.report import SECTIONS, render_html, report_json

    curve = roc([0.9, 0.8, 0.3], [0.7, 0.2, 0.1, 0.05])
    canaries = audit_guesses(
        [5.0] * 20 + [-5.0] * 20, [True] * 20 + [False] * 20,
        k_plus=20, k_minus=20, delta=1e-5,
    )  # fmt: skip
    bad = SiteAudit("site-0", curve, None, _test("site-0", canaries, 1.0))
    ok = SiteAudit("site-1", curve, curve, _test("site-1", None, 2.0))
    assert bad.verdict is Verdict.VIOLATION
    assert bad.test.explanation().startswith("VIOLATION")
    assert ok.verdict is Verdict.NOT_TESTED and "no canaries" in ok.test.explanation()
    audit = _report([bad, ok], _test(POOLED_NAME, canaries, 1.0), curve)
    page = render_html(audit, epsilon_png=None, ledger_epsilon={"site-0": 1.0})
    assert "PRIVACY VIOLATION at site-0" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert all(f"<h2>{s}</h2>" in page for s in SECTIONS)
    doc = report_json(audit)
    assert doc["violations"] == ["site-0", POOLED_NAME]
    assert doc["sites"][0]["verdict"] == "violation" and doc["exit_code"] == 3
    assert doc["roc"]["site-1"]["phi"]["tpr"][-1] == 1.0


def test_simulated_sites_get_disjoint_canaries_and_crafted_ones_need_no_population(
    tiny_run_config: dict,
) -> None:
    from fedshield.simulations.scenario import Scenario

    cfg = {**tiny_run_config, "audit.canaries": 25}
    scenario = Scenario.from_run_config(cfg)
    a, b = scenario.canaries(0, 2), scenario.canaries(1, 2)
    assert a is not None and b is not None and not set(a.texts) & set(b.texts)
    refs = scenario.reference_population(2)
    assert not set(refs.texts) & (set(a.texts) | set(b.texts))
    many = {**cfg, "audit.canaries": 50_000, "audit.canary-kind": "crafted"}
    crafted = Scenario.from_run_config(many).canaries(0, 2)
    assert crafted is not None and len(crafted) == 50_000
    mislabelled = {**many, "audit.canary-kind": "mislabelled"}
    with pytest.raises(ConfigError, match="population records"):
        Scenario.from_run_config(mislabelled).canaries(0, 2)
    assert Scenario.from_run_config(tiny_run_config).canaries(0, 2) is None


def test_audit_result_pools_every_site_and_renders_as_the_report() -> None:
    from fedshield.privacy.audit.report import render_html, report_json
    from fedshield.simulations.audit import (
        POOLED,
        AuditResult,
        RecordScores,
        SiteScores,
    )
    from fedshield.simulations.audit.scoring import attack_site, pooled_curves

    rng = np.random.default_rng(3)

    def scores(n: int, shift: float) -> RecordScores:
        return RecordScores(
            phi=rng.normal(-shift, 1, n),
            labels=np.arange(n) % 2,
        )

    names = ("site-0", "site-1")
    target = {
        n: SiteScores(members=scores(30, 0.0), non_members=scores(20, 1.0))
        for n in names
    }
    refs = [
        {
            n: SiteScores(members=scores(30, 0.5), non_members=scores(20, 0.5))
            for n in names
        }
        for _ in range(2)
    ]
    sites = tuple(
        attack_site(
            site=n,
            target=target[n],
            references=[r[n] for r in refs],
            test=_test(n, None, math.inf),
        )
        for n in names
    )
    pooled = pooled_curves(target, refs, names)
    # pooled: all sites' members, then all non-members, in site order
    members = [target[n].members for n in names]
    others = [target[n].non_members for n in names]
    phi = np.concatenate([s.phi for s in members + others])
    ref_phi = np.stack(
        [
            np.concatenate(
                [r[n].members.phi for n in names]
                + [r[n].non_members.phi for n in names]
            )
            for r in refs
        ]
    )
    lira = lira_offline_scores(phi, ref_phi)
    labels = [*(np.arange(30) % 2).tolist() * 2]
    assert pooled["lira"] == roc(
        lira[:60],
        lira[60:],
        member_labels=labels,
        non_member_labels=[*(np.arange(20) % 2).tolist() * 2],
    )
    assert pooled["phi"].members == 60 and pooled["phi"].non_members == 40
    result = AuditResult(
        run_dir=Path("runs/x"),
        summary={"config": {}, "sites": {}},
        audit=AuditConfig(),
        sites=sites,
        pooled_test=_test(POOLED, None, math.inf),
        curves={**{s.site: {"phi": s.phi_attack} for s in sites}, POOLED: pooled},
    )
    report = result.to_report()
    assert result.violations == () and report["violations"] == []
    assert result.verdict is Verdict.NOT_TESTED and report["exit_code"] == 5
    assert report["audit_config"]["canary_kind"] == "mislabelled"
    assert list(report["curves"]) == [*names, POOLED]
    page = render_html(report, epsilon_png=None, ledger_epsilon={})
    assert "Not tested" in page and 'class="ok"' not in page  # never green
    doc = report_json(report)
    assert set(doc["pooled"]) == {"phi", "lira"} and len(doc["sites"]) == 2


def test_repeated_secrets_are_distinct_copied_and_leave_the_one_run_canaries_alone():
    plain = make_canaries(kind=CanaryKind.SECRET, count=40, num_labels=2, seed=3)
    more = make_canaries(
        kind=CanaryKind.SECRET, count=40, num_labels=2, seed=3, repeated=5, repeats=4
    )
    # the one-run test's canaries and inclusion bits do not move
    assert (more.texts, more.included, more.values) == (
        plain.texts,
        plain.included,
        plain.values,
    )
    assert len(set(more.repeated)) == 5 and not set(more.repeated) & set(more.values)
    texts, labels = more.included_records()
    once, copies = texts[: sum(more.included)], texts[sum(more.included) :]
    assert once == plain.included_records()[0]
    assert len(copies) == 20 == len(labels) - len(once)
    for value in more.repeated:
        assert copies.count(SECRET_FORMAT.render(value)) == 4


def test_repeated_secrets_need_secret_canaries() -> None:
    with pytest.raises(ConfigError, match="audit.repeated-secrets"):
        AuditConfig(canaries=10, repeated_secrets=2).check_task(causal_lm=True)
    with pytest.raises(ConfigError, match="audit.secret-repeats"):
        AuditConfig(secret_repeats=1)
    AuditConfig(
        canaries=10, canary_kind=CanaryKind.SECRET, repeated_secrets=2
    ).check_task(causal_lm=True)
