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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binom

__all__ = ["OneRunAudit", "audit_guesses", "empirical_epsilon", "p_value"]


def p_value(*, m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[>= v correct of r guesses] for m canaries under (eps, delta)-DP."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"Need 0 <= v <= r <= m; found v={v}, r={r}, m={m}.")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"Need eps >= 0 and delta in [0, 1]; found {eps}, {delta}.")
    q = 1.0 / (1.0 + math.exp(-eps))
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha, below = 0.0, 0.0  # below = P[v > Binomial(r, q) >= v - i]
    for i in range(1, v + 1):
        below += float(binom.pmf(v - i, r, q))
        alpha = max(alpha, below / i)
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


@dataclass(frozen=True)
class OneRunAudit:
    """One site's canary audit: m canaries, r guesses, v correct, the bound."""

    canaries: int
    guesses: int
    correct: int
    delta: float
    confidence: float
    empirical_epsilon: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "canaries": self.canaries,
            "guesses": self.guesses,
            "correct": self.correct,
            "delta": self.delta,
            "confidence": self.confidence,
            "empirical_epsilon": self.empirical_epsilon,
        }


def audit_guesses(
    scores: ArrayLike,
    included: ArrayLike,
    *,
    k_plus: int,
    k_minus: int,
    delta: float,
    confidence: float = 0.95,
) -> OneRunAudit:
    """Guess "in" for the ``k_plus`` highest scores and "out" for the ``k_minus``
    lowest; count the correct guesses and bound eps. ``k_plus`` and ``k_minus``
    must be fixed before the scores are seen (choosing them by looking at the
    outcome would void the confidence level)."""
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
        empirical_epsilon=empirical_epsilon(
            m=m, r=r, v=correct, delta=delta, confidence=confidence
        ),
    )
