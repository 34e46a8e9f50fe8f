"""Privacy budgets: compose releases into epsilon, and decide *before* a release
whether it fits the budget.

A *release* is one batch of subsampled Gaussian steps with fixed parameters
``(sigma, q, steps)``: a site's DP-SGD in one round (sample-level), or the server's
noisy aggregate in one round (client-level). Composition is the accountant's
(Opacus RDP or PRV), never our own math::

    eps(delta) = Accountant(history=[(sigma_1, q_1, T_1), ..., (sigma_k, q_k, T_k)])
                         .get_epsilon(delta)

RDP: the subsampled-Gaussian Renyi divergences of all steps add up, and the
smallest conversion to (epsilon, delta) over the orders is reported (Mironov
2017; Mironov, Talwar, Zhang 2019). PRV: the privacy-loss distributions are
convolved numerically (Gopi, Lee, Wutschitz 2021); its epsilon carries a small
numerical error bound, and Opacus reports the upper estimate.

Prospective check: with ``spent = epsilon(H)`` and ``after = epsilon(H + [r])`` for
the planned release ``r``, the release is allowed iff ``after <= max_epsilon``.
Because the planned ``(sigma, q, steps)`` are fixed before training, from the
sampler's own arithmetic (Opacus' Poisson sampler at ``q = 1 / ceil(n / b)`` takes
``int(1 / q)`` batches per epoch, empty ones included: :func:`steps_per_epoch`),
the release that is recorded is the one that was checked; the caller verifies that
and never sends an update whose release differs.

A non-private release (DP off) has ``epsilon = inf``: once recorded, every later
check on the same data refuses.

Concurrency: :func:`exclusive` takes an OS file lock on the site's state
directory from the check until the release is recorded, so two runs at one site
cannot both pass the check on the same remaining budget. The OS drops the lock when
a process dies, so a killed run never blocks the site.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from opacus.accountants import create_accountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import MAX_SIGMA

from fedshield.common.config import ConfigError

from .dp import AccountantKind, DPConfig, noise_for_target_epsilon, rdp_epsilon

__all__ = [
    "BudgetCheck",
    "Release",
    "TargetEpsilonSpent",
    "accountant_of",
    "check_budget",
    "compose_epsilon",
    "exclusive",
    "plan_release",
    "steps_per_epoch",
]

logger = logging.getLogger(__name__)

LOCK_NAME = "budget.lock"


@dataclass(frozen=True)
class Release:
    """``steps`` subsampled Gaussian steps with noise multiplier ``sigma`` and
    sampling rate ``q``; ``sigma = 0`` is a non-private release (epsilon = inf)."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or not math.isfinite(self.noise_multiplier):
            raise ValueError(
                f"A release needs a finite noise multiplier >= 0. Found "
                f"{self.noise_multiplier}."
            )
        if not 0 < self.sample_rate <= 1:
            raise ValueError(
                f"A release needs a sample rate in (0, 1]. Found {self.sample_rate}."
            )
        if self.steps < 0:
            raise ValueError(f"A release needs steps >= 0. Found {self.steps}.")


def accountant_of(kind: AccountantKind, releases: Iterable[Release]) -> IAccountant:
    """An Opacus accountant of ``kind`` that has composed every private release
    (consecutive releases with equal ``(sigma, q)`` merged, as Opacus does)."""
    history: list[tuple[float, float, int]] = []
    for r in releases:
        if not (r.private and r.steps > 0):
            continue
        if history and history[-1][:2] == (r.noise_multiplier, r.sample_rate):
            history[-1] = (r.noise_multiplier, r.sample_rate, history[-1][2] + r.steps)
        else:
            history.append((r.noise_multiplier, r.sample_rate, r.steps))
    accountant = create_accountant(mechanism=kind.value)
    accountant.history = history
    return accountant


def compose_epsilon(
    releases: Iterable[Release], *, delta: float, accountant: AccountantKind
) -> float:
    """Epsilon at ``delta`` of all ``releases`` composed; 0.0 for none, inf if any
    release was non-private."""
    releases = list(releases)
    if any(not r.private and r.steps > 0 for r in releases):
        return math.inf
    acc = accountant_of(accountant, releases)
    if not acc.history:
        return 0.0
    if accountant is AccountantKind.RDP:  # the same value, per-step RDP cached
        return rdp_epsilon(acc.history, delta)
    return float(acc.get_epsilon(delta=delta))


@dataclass(frozen=True)
class BudgetCheck:
    """The outcome of a prospective budget check (``max_epsilon = 0``: no budget)."""

    spent: float
    after: float
    max_epsilon: float
    delta: float

    @property
    def allowed(self) -> bool:
        return self.max_epsilon == 0 or self.after <= self.max_epsilon

    @property
    def left(self) -> float:
        """Budget left before the release (inf without a budget)."""
        return max(self.max_epsilon - self.spent, 0.0) if self.max_epsilon else math.inf

    def reason(self) -> str:
        if self.allowed:
            return ""
        if math.isinf(self.after):
            return (
                f"the round would release a non-private update (dp.enabled=false) "
                f"but this site's budget is epsilon <= {self.max_epsilon:g}"
                if math.isfinite(self.spent)
                else "this data was already released without DP (epsilon = inf)"
            )
        return (
            f"the round would raise epsilon from {self.spent:.4f} to "
            f"{self.after:.4f} at delta={self.delta:g}, above the site's budget "
            f"max-epsilon={self.max_epsilon:g}"
        )


def check_budget(
    *,
    history: Iterable[Release],
    planned: Release,
    max_epsilon: float,
    delta: float,
    accountant: AccountantKind,
) -> BudgetCheck:
    """Would ``planned`` on top of ``history`` stay within ``max_epsilon`` at
    ``delta``? (``max_epsilon = 0`` means no budget: always allowed.)"""
    if max_epsilon < 0 or not 0 < delta < 1:
        raise ValueError(
            f"A budget needs max-epsilon >= 0 and delta in (0, 1). Found "
            f"max-epsilon={max_epsilon}, delta={delta}."
        )
    history = list(history)
    spent = compose_epsilon(history, delta=delta, accountant=accountant)
    after = compose_epsilon([*history, planned], delta=delta, accountant=accountant)
    return BudgetCheck(spent=spent, after=after, max_epsilon=max_epsilon, delta=delta)


@contextmanager
def exclusive(state_dir: Path, *, timeout: float = 3600.0) -> Iterator[None]:
    """Hold the site's budget lock (``<state_dir>/budget.lock``) for the block.

    Waits up to ``timeout`` seconds for another run at this site to record its
    release; a dead holder's lock is released by the OS.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Another run at this site held {state_dir / LOCK_NAME} for "
                        f"more than {timeout:.0f}s. Wait for it to finish, or stop "
                        "it; the lock is released when its process ends."
                    ) from None
                if not waited:
                    logger.info(
                        "Waiting for another run at this site to finish a round"
                    )
                    waited = True
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def steps_per_epoch(*, num_examples: int, batch_size: int, poisson: bool) -> int:
    """Batches one epoch really takes, as the data loader in use computes them.

    Both loaders start from ``k = len(DataLoader(n, b)) = ceil(n / b)``. A shuffled
    loader (no DP) yields ``k`` batches. Opacus' Poisson loader
    (``DPDataLoader.from_data_loader``) samples at ``q = 1 / k`` and its
    ``UniformWithReplacementSampler`` yields ``int(1 / q)`` batches: in floating
    point ``1 / (1 / k)`` falls just below ``k`` for some ``k`` (93, 99, 105, ...;
    1,364 of ``k`` = 1..20,000), so an epoch is then ``k - 1`` steps, not ``k``.
    """
    batches = math.ceil(num_examples / batch_size)
    return int(1 / (1 / batches)) if poisson else batches


class TargetEpsilonSpent(ValueError):
    """``dp.target-epsilon`` is already spent on this data: no sigma can keep
    another round within it."""


def plan_release(
    dp: DPConfig,
    *,
    num_examples: int,
    batch_size: int,
    local_epochs: int,
    planned_rounds: int,
    server_round: int,
    delta: float,
    history: Sequence[Release],
) -> Release:
    """The sample-level release one round at a site will make, fixed before training.

    Rate and steps are the sampler's own: ``q = 1 / ceil(n / b)`` and
    ``local_epochs * steps_per_epoch`` steps (:func:`steps_per_epoch`; Poisson
    batches can be empty and are steps too), so the release the accountant records
    is the one planned and checked. Without DP the release is non-private
    (``sigma = 0``).

    ``delta`` is the budget's (the site's node config ``delta``, else
    ``dp.delta``): every epsilon of this data is reported at it, so sigma is
    calibrated at it too, and it must be below ``1 / n`` (a mechanism that
    publishes one record of ``n`` in the clear is (0, 1/n)-DP).

    Target epsilon (``dp.target-epsilon`` = eps_T > 0). With ``H`` the releases
    already on the ledger in the budget's scope (``history``: earlier runs and
    earlier rounds of this run on the same records), ``r(sigma) = (sigma, q, T)``
    this round's release and ``R = max(planned_rounds - server_round + 1, 1)``
    the rounds left in this run, this one included, sigma is the smallest (to
    Opacus' search tolerance, 0.01 in epsilon) with::

        eps_delta(H + R x r(sigma)) <= eps_T

    So eps_T caps the epsilon of the *data*, not of one run: after every round
    ``eps_delta(H + r) <= eps_T`` whatever the run claims about its rounds. A
    resume that raises ``num-server-rounds`` raises ``R`` and so sigma; a run
    that understates ``R`` only spends the target sooner. A fresh site in round 1
    gets the sigma that makes the whole planned run end at eps_T. Once
    ``eps_delta(H)`` has reached eps_T, :class:`TargetEpsilonSpent` is raised.

    Raises:
        ValueError: no examples, batch size or epochs.
        ConfigError: ``delta >= 1 / num_examples`` under DP.
        TargetEpsilonSpent: the history already spends ``dp.target-epsilon``.
    """
    if num_examples < 1 or batch_size < 1 or local_epochs < 1:
        raise ValueError(
            "A round needs at least one example, batch size and epoch. Found "
            f"{num_examples} examples, batch size {batch_size}, {local_epochs} epochs."
        )
    sample_rate = 1.0 / math.ceil(num_examples / batch_size)
    per_epoch = steps_per_epoch(
        num_examples=num_examples, batch_size=batch_size, poisson=dp.enabled
    )
    steps = local_epochs * per_epoch
    if not dp.enabled:
        return Release(0.0, sample_rate, steps)
    if not 0 < delta < 1 / num_examples:
        raise ConfigError(
            f"The budget's delta must be > 0 and < 1/n = {1 / num_examples:.3g} "
            f"for this site's {num_examples} records; found delta={delta:g}. At "
            "delta >= 1/n a mechanism that publishes a record in the clear passes "
            "as private. Set the site's node config `delta` (or the run's "
            f"`dp.delta`) to at most {0.1 / num_examples:.1g}."
        )
    sigma = dp.noise_multiplier
    if dp.target_epsilon > 0:
        spent = compose_epsilon(history, delta=delta, accountant=dp.accountant)
        spent_on = (
            f"this site's data has spent epsilon={spent:.4g} of "
            f"dp.target-epsilon={dp.target_epsilon:g} at delta={delta:g}, over "
            f"{len(history)} earlier releases in its budget scope (every run on "
            "the same records)"
        )
        what_next = (
            "The round is not trained. Raise dp.target-epsilon (the site's "
            "max-epsilon still caps it) or stop training on this data."
        )
        if not spent < dp.target_epsilon:
            raise TargetEpsilonSpent(f"The target is spent: {spent_on}. {what_next}")
        rounds_left = max(planned_rounds - server_round + 1, 1)
        try:
            sigma = noise_for_target_epsilon(
                target_epsilon=dp.target_epsilon,
                delta=delta,
                sample_rate=sample_rate,
                steps=rounds_left * steps,
                accountant=dp.accountant,
                spent=accountant_of(dp.accountant, history).history,
            )
        except ValueError as err:  # even sigma = 10^6 would exceed the target
            raise TargetEpsilonSpent(
                f"The target is nearly spent: {spent_on}; even noise multiplier "
                f"{MAX_SIGMA:g} would exceed it in {rounds_left} more round(s). "
                f"{what_next}"
            ) from err
    return Release(sigma, sample_rate, steps)
