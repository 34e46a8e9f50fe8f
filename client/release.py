"""A site's guarded release: the budget check before training and the ledger entry
before the update leaves.

Node config keys (``flower-supernode --node-config "..."``):
    state-dir     where the site keeps its ledger and key (default
                  ``~/.fedshield/sites/<site>``; in simulation
                  ``<out-dir>/sites/<site>``).
    max-epsilon   the site's sample-level budget at ``delta`` (0 or unset: none).
    delta         the delta of the site's budget and reported epsilon (default:
                  the run's ``dp.delta``).
    budget-scope  ``dataset`` (default): compose every release on the same
                  dataset fingerprint, across runs; ``site``: compose every
                  release on any of the site's data (an upper bound when the data
                  changes between runs).

Order of one round, all under the site's budget lock (:func:`privacy.budget.exclusive`):

0. verify the ledger (hashes, chain, signatures, signed head); a ledger that fails
   is not trusted to say what was spent, so nothing trains;
1. the release ``(sigma, q, steps)`` was planned before training
   (:func:`privacy.budget.plan_release`, at the budget's delta; with
   ``dp.target-epsilon``, from the ledger's history in scope,
   :meth:`SiteBudget.history`, read just before the lock);
2. compose the ledger's history in scope with it; refuse if epsilon would exceed
   ``max-epsilon`` (the update is never computed);
3. train; the accountant's recorded release must equal the plan, else nothing
   is sent;
4. append the signed ledger entry (committed to disk);
5. only then may the caller send the update.

A crash before 4 sends nothing (no release happened); a crash between 4 and 5
leaves an entry for an update that was never sent, which only overstates epsilon.
So the ledger never falls behind what left the site, and since every appended
entry passed step 2, it never shows epsilon above the budget.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedshield.common.config import ConfigError
from fedshield.common.layout import RunLayout
from fedshield.common.schema import TrainKey
from fedshield.privacy.budget import (
    BudgetCheck,
    Release,
    accountant_of,
    check_budget,
    compose_epsilon,
    exclusive,
)
from fedshield.privacy.dp import AccountantKind, accountant_to_json
from fedshield.privacy.ledger import (
    DB_NAME,
    LedgerEntry,
    LedgerError,
    LedgerReader,
    Mechanism,
    SiteLedger,
)

from .node import BudgetScope, NodeConfig
from .trainer import TrainResult

DEFAULT_SITE_DELTA = 1e-5  # a deployed site's delta unless its node config says

__all__ = [
    "Refused",
    "Released",
    "SiteBudget",
    "release_round",
    "site_state_dir",
]

logger = logging.getLogger(__name__)


def site_state_dir(node: NodeConfig, train_config: dict[str, Any], site: str) -> Path:
    """Where the site keeps its ledger, keys and scrub cache: node config
    ``state-dir``; in simulation ``<out-dir>/sites/<site>``; else
    ``~/.fedshield/sites/<name>``, named by the operator's ``site-name`` or by its
    ``data-path``.

    A deployed site's ledger never follows anything the coordinator chooses: not
    the run's ``out-dir`` and not the node id the SuperLink assigns (a new id, or
    another out-dir, would otherwise open an empty ledger: a fresh budget)."""
    if node.state_dir is not None:
        return node.state_dir
    if node.simulated and train_config.get(TrainKey.OUT_DIR):
        return RunLayout(Path(str(train_config[TrainKey.OUT_DIR]))).site(site)
    return Path.home() / ".fedshield" / "sites" / deployed_site_key(node)


def deployed_site_key(node: NodeConfig) -> str:
    """The state folder's name of a deployed site: its ``site-name``, else a hash of
    its resolved ``data-path`` (both set by its operator)."""
    if node.site_name:
        return node.site_name
    if node.data_path is None:
        return "default"
    resolved = str(node.data_path.expanduser().resolve())
    return "data-" + hashlib.sha256(resolved.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SiteBudget:
    """Where a site's ledger lives and how much it may spend."""

    state_dir: Path
    max_epsilon: float  # 0 = no budget
    delta: float
    scope: BudgetScope = BudgetScope.DATASET

    def __post_init__(self) -> None:
        if self.max_epsilon < 0:
            raise ConfigError(
                f"Node config `max-epsilon` must be >= 0 (0 = no budget). Found "
                f"{self.max_epsilon}."
            )
        if not 0 < self.delta < 1:
            raise ConfigError(
                f"Node config `delta` must be in (0, 1). Found {self.delta}."
            )

    def history(self, fingerprint: str) -> list[Release]:
        """The releases in this budget's scope on the data with ``fingerprint``
        (every run on the same records; every release of the site with
        ``budget-scope=site``), read-only and without the lock: what a round's plan
        calibrates ``dp.target-epsilon`` against. Empty for a site with no ledger
        yet; :func:`release_round` verifies the ledger before anything trains."""
        if not (self.state_dir / DB_NAME).is_file():
            return []
        with LedgerReader(self.state_dir) as ledger:
            return ledger.history(dataset_fingerprint=_scope(self, fingerprint))

    @classmethod
    def resolve(
        cls,
        *,
        node: NodeConfig,
        train_config: dict[str, Any],
        site: str,
        run_delta: float,
    ) -> SiteBudget:
        """The site's own settings from its node config. Its delta is its own
        (node config ``delta``, else 1e-5); the run's ``dp.delta`` may lower it,
        never raise it: a larger delta would report, and admit, a smaller epsilon
        for the same releases."""
        own = DEFAULT_SITE_DELTA if node.delta is None else node.delta
        if not 0 < own < 1:
            raise ConfigError(f"Node config `delta` must be in (0, 1). Found {own}.")
        return cls(
            state_dir=site_state_dir(node, train_config, site),
            max_epsilon=node.max_epsilon or 0.0,
            delta=min(own, run_delta),
            scope=node.budget_scope,
        )


@dataclass(frozen=True)
class Released:
    """The round trained and its release is on the ledger."""

    result: TrainResult
    epsilon: float  # cumulative over the budget scope, at the budget's delta
    run_epsilon: float  # this run only
    check: BudgetCheck


@dataclass(frozen=True)
class Refused:
    """The round would have exceeded the budget; nothing was trained or sent."""

    check: BudgetCheck

    @property
    def reason(self) -> str:
        return self.check.reason()


def release_round(
    *,
    budget: SiteBudget,
    run_id: str,
    server_round: int,
    fingerprint: str,
    planned: Release,
    accountant: AccountantKind,
    train: Callable[[], TrainResult],
) -> Released | Refused:
    """Check, train, record: see the module docstring for the order and why."""
    with exclusive(budget.state_dir), SiteLedger(budget.state_dir) as ledger:
        report = ledger.verify()
        if not report.ok:  # a deleted entry would hide spent budget
            raise LedgerError(
                f"The site's ledger in {budget.state_dir} fails verification: "
                f"{'; '.join(report.problems)}. No round trains until it is restored "
                "from a backup (check it with `fedshield ledger verify --site-dir "
                f"{budget.state_dir}`)."
            )
        scope_fp = _scope(budget, fingerprint)
        history = ledger.history(dataset_fingerprint=scope_fp)
        check = check_budget(
            history=history,
            planned=planned,
            max_epsilon=budget.max_epsilon,
            delta=budget.delta,
            accountant=accountant,
        )
        if not check.allowed:
            logger.warning("Round %d refused: %s", server_round, check.reason())
            return Refused(check)
        result = train()
        if result.release != planned:
            raise RuntimeError(
                f"Round {server_round}: training recorded {result.release} but "
                f"{planned} was checked against the budget. The update is not sent; "
                "report this as a bug."
            )
        run_history = [*ledger.history(dataset_fingerprint=scope_fp, run_id=run_id)]
        run_epsilon = compose_epsilon(
            [*run_history, planned], delta=budget.delta, accountant=accountant
        )
        composed = accountant_of(accountant, [*history, planned])
        ledger.append(
            LedgerEntry(
                run_id=run_id,
                server_round=server_round,
                dataset_fingerprint=fingerprint,
                mechanism=Mechanism.DP_SGD
                if planned.private
                else Mechanism.NON_PRIVATE,
                noise_multiplier=planned.noise_multiplier,
                sample_rate=planned.sample_rate,
                steps=planned.steps,
                delta=budget.delta,
                accountant=accountant.value,
                accountant_state=accountant_to_json(composed),
                epsilon=check.after,
                timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
                max_epsilon=budget.max_epsilon,
            )
        )
    return Released(
        result=result, epsilon=check.after, run_epsilon=run_epsilon, check=check
    )


def _scope(budget: SiteBudget, fingerprint: str) -> str | None:
    """The fingerprint the ledger's history is filtered on (None: the whole site)."""
    scope_fp = fingerprint if budget.scope is BudgetScope.DATASET else None
    return scope_fp
