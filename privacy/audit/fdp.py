"""One-run privacy audit, f-DP analysis (Mahloujifar, Melis, Chaudhuri, ICML 2025).

Same experiment and the same outcome as :mod:`fedshield.privacy.audit.one_run`:
m canaries are each included in training independently with probability 1/2;
after training the auditor guesses "in" for the ``k_plus`` highest scores and
"out" for the ``k_minus`` lowest, abstains on the rest, and ``v`` of its
``r = k_plus + k_minus`` guesses are correct. Steinke, Nasr and Jagielski turn
(m, r, v) into a p-value for "training is (eps, delta)-DP"; this module tests
instead "training is f-DP" for a whole trade-off curve f, which handles delta
through the curve rather than through a union bound.

The theorem
-----------
Mahloujifar, Melis and Chaudhuri, "Auditing f-Differential Privacy in One Run"
(arXiv:2410.22235, ICML 2025), main result for a guessing game with abstentions
(the test their code calls ``audit_rh_with_cap``; we did not have the paper's
text at hand to check its theorem numbers, so we cite it by name). In our words,
for k = 2 possible secrets per canary (in / out):

    Let f be a symmetric trade-off function and g(y) = f(1 - y): the least
    probability an event can have on one of two neighbouring datasets when it
    has probability y on the other. Fix beta in (0, 1) and set
    a_v = beta v / m, b_v = beta (r - v) / m, and for i = v - 1, ..., 0
        b_i = max(b_{i+1}, g(a_{i+1})),
        a_i = a_{i+1} + i / (r - i) * (b_i - b_{i+1}).
    If training is f-DP for adding or removing one canary and a_0 + b_0 > r / m,
    then P[at least v of the r guesses are correct] <= beta.

Our reading of the proof: a_i and b_i are lower bounds on the probability, per
canary, of a correct (a) and a wrong (b) guess jointly with "at least i correct
in all", under the hypothesis that P[>= v correct] > beta. f-DP applied to one
canary at a time (the other canaries fixed) forces b >= g(a); the ratio
i / (r - i) comes from "i correct means r - i wrong"; and a_0 + b_0 can be at
most r / m, the guessing rate per canary. Exceeding it refutes the hypothesis,
so observing v correct guesses rejects "f-DP" at confidence 1 - beta.

Why it applies here: the inclusion bits are independent Bernoulli(1/2), drawn
before training and independent of everything else, and the guesses are a
function of the trained model alone, their number r fixed before the scores
are seen (``one_run.audit_guesses`` takes k_plus and k_minus as arguments for
that reason). Choosing k_plus or k_minus after looking at the outcome voids the
confidence level, exactly as for the Steinke bound.

What we compute
---------------
* :func:`empirical_epsilon_fdp`: f is the (eps, delta)-DP curve
  f(alpha) = max(0, 1 - delta - e^eps alpha, e^-eps (1 - delta - alpha)),
  so g(y) = max(0, e^-eps (y - delta), 1 - delta - e^eps (1 - y)). The bound is
  the largest eps (bisection to 1e-6) whose curve is rejected: a lower bound on
  the true eps at that delta, comparable with ``one_run.empirical_epsilon``.
* :func:`empirical_mu_gdp`: f is mu-GDP, f(alpha) = Phi(Phi^-1(1 - alpha) - mu),
  so g(y) = Phi(Phi^-1(y) - mu): a lower bound on mu for a mechanism whose
  trade-off curve is Gaussian (DP-SGD's is close to one). Turning it into an
  epsilon with :func:`gdp_epsilon` gives the much larger number that the paper,
  PrivacyGuard and jax_privacy report, but that epsilon is a valid lower bound
  only under the assumption that the curve *is* Gaussian; it is not a lower
  bound on the (eps, delta) of an arbitrary mechanism.

Against Steinke et al. (measured, see tests/privacy/test_audit_fdp.py): the
(eps, delta) bound here is not uniformly tighter. With delta = 0 it can never be:
their binomial tail is exact for randomized response, so no valid bound that
sees only (m, r, v) exceeds it, and this one trails it by up to 0.020 in eps
(m from 20 to 10^4, r / m from 0.05 to 1, v from r / 2 to r, delta up to
1e-3). With delta > 0 it wins when all guesses are correct and wherever
Steinke's 2 m delta term matters: at m = 10^4, r = v = 200, delta = 1e-5 it
gives 4.19 against 3.91; at m = 1000, r = 200, v = 190, delta = 1e-3, 2.35
against 1.41 (at delta = 1e-3 it was ahead, or behind by at most 0.005, on
the whole grid). Taking the larger of the two bounds would not be valid at the
stated confidence (two tests, one level); pick one before the audit.

Source and why our own code: the recursion follows PrivacyGuard
(github.com/facebookresearch/PrivacyGuard,
privacy_guard/analysis/mia/fdp_analysis_node.py at commit
3b4b846938526d147369cbbe14a7d176e1cf2341, contributed by the paper's co-author
L. Melis in PrivacyGuard PR #5); jax_privacy's ``auditing._epsilon_one_run_fdp``
(v2.0.0) computes the same test. Both ship on PyPI (``privacyguard-platform``
0.0.2, same file; ``jax-privacy`` 2.0.0) but pull in torch/transformers or jax,
expose the test only inside a class (PrivacyGuard, with mu on a fixed grid of
1000 noise values) or as a private function (jax_privacy, Gaussian family
only), and neither offers the (eps, delta) curve; the test itself is twenty
lines. We add two exact shortcuts (a_i + b_i never decreases, so stop once it
exceeds r / m; once b_i stops changing nothing changes again), which make one
test cost at most a few milliseconds for m, r up to 10^4.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from numbers import Integral

from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr, ndtri

__all__ = [
    "empirical_epsilon_fdp",
    "empirical_mu_gdp",
    "gdp_delta",
    "gdp_epsilon",
    "rejects_dp",
    "rejects_gdp",
]

_TOL = 1e-6  # bisection width on eps and on mu
_CEILING = 1e3  # beyond this the bound is reported as infinite


def _check_counts(m: int, r: int, v: int) -> None:
    for name, x in (("m", m), ("r", r), ("v", v)):
        if not isinstance(x, Integral) or isinstance(x, bool):
            raise ValueError(f"{name} must be an integer; found {x!r}.")
    if not 0 <= v <= r <= m:
        raise ValueError(f"Need 0 <= v <= r <= m; found v={v}, r={r}, m={m}.")


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); found {confidence}.")
    return 1.0 - confidence


def _check_delta(delta: float) -> None:
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1]; found {delta}.")


def _rejects(m: int, r: int, v: int, beta: float, g: Callable[[float], float]) -> bool:
    """The theorem's test: True when v correct of r guesses on m canaries refute
    the curve whose g(y) = f(1 - y) is given, at confidence 1 - beta."""
    if v == 0:
        return False
    rate = r / m  # the guessing rate per canary, the most a + b can reach
    a, b = beta * v / m, beta * (r - v) / m
    for i in range(v - 1, -1, -1):
        b_next = g(a)
        if b_next <= b:  # a fixed point: neither a nor b changes again
            break
        a += i / (r - i) * (b_next - b)
        b = b_next
        if a + b > rate:  # a + b never decreases along the recursion
            return True
    return a + b > rate


def _dp_g(eps: float, delta: float) -> Callable[[float], float]:
    """g(y) = f(1 - y) for the (eps, delta)-DP trade-off curve f."""
    shrink = math.exp(-eps)
    grow = math.exp(min(eps, 700.0))  # past 700 the branch is negative anyway

    def g(y: float) -> float:
        return max(0.0, shrink * (y - delta), 1.0 - delta - grow * (1.0 - y))

    return g


def _gdp_g(mu: float) -> Callable[[float], float]:
    """g(y) = f(1 - y) = Phi(Phi^-1(y) - mu) for the mu-GDP curve f."""

    def g(y: float) -> float:
        return float(ndtr(ndtri(min(y, 1.0)) - mu))

    return g


def rejects_dp(
    *, m: int, r: int, v: int, eps: float, delta: float, confidence: float = 0.95
) -> bool:
    """Whether ``v`` correct of ``r`` guesses on ``m`` canaries reject, at
    ``confidence``, the hypothesis that training is (eps, delta)-DP."""
    _check_counts(m, r, v)
    beta = _check_confidence(confidence)
    _check_delta(delta)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0; found {eps}.")
    return _rejects(m, r, v, beta, _dp_g(eps, delta))


def rejects_gdp(*, m: int, r: int, v: int, mu: float, confidence: float = 0.95) -> bool:
    """Whether ``v`` correct of ``r`` guesses on ``m`` canaries reject, at
    ``confidence``, the hypothesis that training is mu-GDP."""
    _check_counts(m, r, v)
    beta = _check_confidence(confidence)
    if not mu >= 0:
        raise ValueError(f"mu must be >= 0; found {mu}.")
    return _rejects(m, r, v, beta, _gdp_g(mu))


def _largest_rejected(rejected: Callable[[float], bool]) -> float:
    """The largest x >= 0 (to _TOL, from below) with ``rejected(x)``, for a
    predicate that holds on an interval [0, x*); 0 when it never holds."""
    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2 * high
        if high > _CEILING:
            return math.inf
    while high - low > _TOL:
        mid = (low + high) / 2
        if rejected(mid):
            low = mid
        else:
            high = mid
    return low


@lru_cache(maxsize=4096)
def _epsilon_fdp(m: int, r: int, v: int, delta: float, beta: float) -> float:
    return _largest_rejected(lambda e: _rejects(m, r, v, beta, _dp_g(e, delta)))


@lru_cache(maxsize=4096)
def _mu_gdp(m: int, r: int, v: int, beta: float) -> float:
    return _largest_rejected(lambda mu: _rejects(m, r, v, beta, _gdp_g(mu)))


def empirical_epsilon_fdp(
    *, m: int, r: int, v: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest eps (to 1e-6) whose (eps, delta)-DP trade-off curve ``v``
    correct of ``r`` guesses on ``m`` canaries reject at ``confidence``; 0 when
    they reject none. The f-DP counterpart of ``one_run.empirical_epsilon``."""
    _check_counts(m, r, v)
    beta = _check_confidence(confidence)
    _check_delta(delta)
    return _epsilon_fdp(int(m), int(r), int(v), float(delta), beta)


def empirical_mu_gdp(*, m: int, r: int, v: int, confidence: float = 0.95) -> float:
    """The largest mu (to 1e-6) such that ``v`` correct of ``r`` guesses on
    ``m`` canaries reject "training is mu-GDP" at ``confidence``; 0 when they
    reject none."""
    _check_counts(m, r, v)
    beta = _check_confidence(confidence)
    return _mu_gdp(int(m), int(r), int(v), beta)


def _check_mu(mu: float) -> None:
    if not 0 <= mu < math.inf:
        raise ValueError(f"mu must be finite and >= 0; found {mu}.")


def _log_gdp_delta(mu: float, eps: float) -> float:
    # log(Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)), stable in the tails
    first = float(log_ndtr(-eps / mu + mu / 2))
    second = eps + float(log_ndtr(-eps / mu - mu / 2))
    if second >= first:  # rounding at a vanishing difference
        return -math.inf
    return first + math.log1p(-math.exp(second - first))


def gdp_delta(mu: float, eps: float) -> float:
    """The delta at which a mu-GDP mechanism is (eps, delta)-DP (Dong, Roth, Su
    2019, Cor. 2.13): Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    _check_mu(mu)
    if not 0 <= eps < math.inf:
        raise ValueError(f"eps must be finite and >= 0; found {eps}.")
    if mu == 0:
        return 0.0
    return math.exp(_log_gdp_delta(mu, eps))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest eps with a mu-GDP mechanism (eps, delta)-DP: the root of
    ``gdp_delta(mu, eps) = delta`` (decreasing in eps), to about 1e-10."""
    _check_mu(mu)
    if not 0 < delta <= 1:
        raise ValueError(f"delta must be in (0, 1]; found {delta}.")
    if mu == 0:
        return 0.0
    log_delta = math.log(delta)

    def gap(eps: float) -> float:
        return _log_gdp_delta(mu, eps) - log_delta

    if gap(0.0) <= 0:
        return 0.0
    high = 1.0
    while gap(high) > 0:
        high *= 2
    return float(brentq(gap, 0.0, high, xtol=1e-12, rtol=1e-12))
