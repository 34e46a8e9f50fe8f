"""Privacy auditing with one training run (Steinke, Nasr, Jagielski, NeurIPS 2023).

m canary records are each included in the training data independently with
probability 1/2. After training, the auditor scores every canary (higher = more
likely included), guesses "included" for the ``k_plus`` highest scores and "not
included" for the ``k_minus`` lowest, and abstains on the rest. With r = k_plus +
k_minus guesses of which v are correct, their Theorem 3.1 bounds the chance of v or
more correct guesses under the null hypothesis that training is (eps, delta)-DP:

    p(eps, delta) = P[B >= v]
                    + 2 m delta * max_{i=1..v} (1/i) P[v - i <= B < v],
    B ~ Binomial(r, q),  q = e^eps / (1 + e^eps)
    (q is the accuracy of eps-DP randomized response).

The empirical lower bound at confidence 1 - beta is the largest eps whose p-value
is below beta: training with a smaller eps would have produced that many correct
guesses with probability < beta. This is the authors' published procedure
(their Algorithm 1 and appendix code): a bisection on eps of the p-value above. We
write it here because no maintained library ships it.

The bound is a *lower* bound on the true eps of the mechanism for the canaries'
neighbouring relation (add/remove one record: the sample-level eps). An empirical
eps above the accountant's claimed eps means the implementation does not provide
the claimed guarantee: a bug to report.

The **ceiling** (:func:`ceiling`, :attr:`OneRunAudit.ceiling`) is the bound with all
r guesses right: no outcome of the audit can show more, so a claim at or above it
was not tested (:mod:`.verdict`). With delta > 0 each canary adds 2 delta to the
p-value, which caps the ceiling however many guesses (:func:`guesses_needed`).
Verdicts use one analysis, fixed here (:data:`PRIMARY_BOUND`); the f-DP analysis
of the same guesses (:mod:`.fdp`) is reported beside it as a cross-check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binom

from .fdp import empirical_epsilon_fdp, empirical_mu_gdp

__all__ = [
    "PRIMARY_ANALYSIS",
    "PRIMARY_BOUND",
    "Bound",
    "OneRunAudit",
    "audit_guesses",
    "ceiling",
    "empirical_epsilon",
    "guesses_needed",
    "p_value",
]


def p_value(*, m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[>= v correct of r guesses] for m canaries under (eps, delta)-DP."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"Need 0 <= v <= r <= m; found v={v}, r={r}, m={m}.")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"Need eps >= 0 and delta in [0, 1]; found {eps}, {delta}.")
    q = 1.0 / (1.0 + math.exp(-eps))
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    if v > 0 and delta > 0:
        i = np.arange(1, v + 1)
        below = np.cumsum(binom.pmf(v - i, r, q))  # P[v > Binomial(r, q) >= v - i]
        alpha = float(np.max(below / i))
    return min(tail + alpha * delta * 2 * m, 1.0)


def empirical_epsilon(
    *, m: int, r: int, v: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest eps (to 1e-6) that ``v`` correct of ``r`` guesses on ``m``
    canaries refute at ``confidence``; 0 when they refute none."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); found {confidence}.")
    beta = 1 - confidence
    if p_value(m=m, r=r, v=v, eps=0.0, delta=delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m=m, r=r, v=v, eps=high, delta=delta) < beta:
        low, high = high, high * 2
        if high > 1e3:
            return math.inf  # v = r with delta = 0 and huge r: no finite bound
    while high - low > 1e-6:
        mid = (low + high) / 2
        if p_value(m=m, r=r, v=v, eps=mid, delta=delta) < beta:
            low = mid
        else:
            high = mid
    return low


class Bound(Protocol):
    """An empirical-epsilon analysis: the largest eps that ``v`` correct of ``r``
    guesses on ``m`` canaries refute at ``confidence`` under (eps, delta)-DP."""

    def __call__(
        self, *, m: int, r: int, v: int, delta: float, confidence: float
    ) -> float: ...


@dataclass(frozen=True)
class OneRunAudit:
    """A canary audit: m canaries, r guesses, v correct, the bound, and the
    ceiling (the bound had all r guesses been right: no outcome of this audit
    could show more)."""

    canaries: int
    guesses: int
    correct: int
    delta: float
    confidence: float
    empirical_epsilon: float
    ceiling: float
    analysis: str
    # the same guesses, other analyses (never used for a verdict):
    fdp_epsilon: float | None = None  # f-DP test of the same (eps, delta) claim
    gdp_mu: float | None = None  # mu-GDP lower bound (no epsilon without a curve)

    def to_dict(self) -> dict[str, float | int | str | None]:
        return {
            "fdp_epsilon": self.fdp_epsilon,
            "gdp_mu": self.gdp_mu,
            "canaries": self.canaries,
            "guesses": self.guesses,
            "correct": self.correct,
            "delta": self.delta,
            "confidence": self.confidence,
            "empirical_epsilon": self.empirical_epsilon,
            "ceiling": self.ceiling,
            "analysis": self.analysis,
        }


def audit_guesses(
    scores: ArrayLike,
    included: ArrayLike,
    *,
    k_plus: int,
    k_minus: int,
    delta: float,
    confidence: float = 0.95,
    bound: Bound = empirical_epsilon,
    analysis: str = "Steinke et al. 2023",
) -> OneRunAudit:
    """Guess "in" for the ``k_plus`` highest scores and "out" for the ``k_minus``
    lowest; count the correct guesses and bound eps with ``bound`` (named
    ``analysis``). ``k_plus`` and ``k_minus`` must be fixed before the scores are
    seen (choosing them by looking at the outcome would void the confidence
    level)."""
    s = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(included, dtype=bool)
    m = s.size
    if truth.size != m:
        raise ValueError(f"{m} scores but {truth.size} inclusion bits.")
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ValueError(
            f"Need k_plus, k_minus >= 0 and k_plus + k_minus <= m = {m}; found "
            f"{k_plus} and {k_minus}."
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("Canary scores must be finite; found NaN or inf.")
    order = np.argsort(-s, kind="stable")  # highest first
    guessed_in, guessed_out = order[:k_plus], order[m - k_minus :]
    correct = int(truth[guessed_in].sum()) + int((~truth[guessed_out]).sum())
    r = k_plus + k_minus
    return OneRunAudit(
        canaries=m,
        guesses=r,
        correct=correct,
        delta=delta,
        confidence=confidence,
        empirical_epsilon=bound(
            m=m, r=r, v=correct, delta=delta, confidence=confidence
        ),
        ceiling=bound(m=m, r=r, v=r, delta=delta, confidence=confidence),
        analysis=analysis,
        fdp_epsilon=empirical_epsilon_fdp(
            m=m, r=r, v=correct, delta=delta, confidence=confidence
        ),
        gdp_mu=empirical_mu_gdp(m=m, r=r, v=correct, confidence=confidence),
    )


# The analysis every verdict uses (one, fixed: taking the larger of two bounds
# would not hold at the stated confidence).
PRIMARY_BOUND: Bound = empirical_epsilon
PRIMARY_ANALYSIS = "Steinke et al. 2023"


def ceiling(
    *, m: int, r: int, delta: float, confidence: float, bound: Bound | None = None
) -> float:
    """The largest bound ``r`` guesses on ``m`` canaries can give (all right)."""
    return (bound or PRIMARY_BOUND)(m=m, r=r, v=r, delta=delta, confidence=confidence)


def guesses_needed(
    claimed: float,
    *,
    guess_fraction: float,
    delta: float,
    confidence: float,
    max_guesses: int = 1 << 17,
    bound: Bound | None = None,
) -> int | None:
    """The fewest guesses (on ``guesses / guess_fraction`` canaries) whose ceiling
    exceeds ``claimed``; None if even ``max_guesses`` cannot (with delta > 0 the
    bound is capped: each canary adds 2 delta to the p-value)."""

    def reaches(r: int) -> bool:
        m = max(r, math.ceil(r / guess_fraction))
        return ceiling(m=m, r=r, delta=delta, confidence=confidence, bound=bound) > (
            claimed
        )

    high = 2
    while not reaches(high):
        if high >= max_guesses:
            return None
        high = min(high * 2, max_guesses)
    low = high // 2  # reaches(low) is False (or low < 2)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if reaches(mid) else (mid, high)
    return high
