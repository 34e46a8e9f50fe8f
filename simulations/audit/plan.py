"""Before a simulation with ``--audit``: could its canary test catch an over-claim?

An audit's power is capped by its ceiling, the bound all guesses right would give
(:func:`fedshield.privacy.audit.one_run.ceiling`). If the ceiling of the pooled test
is not above the epsilon the sites will claim, the audit can at best come out
"inconclusive", and the user should know that before spending the run's time.

The claim is known in advance with ``dp.target-epsilon`` (each site ends the
planned rounds at it); with a fixed ``dp.noise-multiplier`` it is the planned
rounds' epsilon at each simulated site's share size (:func:`planned_claims`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedshield.client.config import ClientConfig
from fedshield.common.run_config import RunConfig
from fedshield.privacy.audit import AuditConfig
from fedshield.privacy.audit.one_run import ceiling, guesses_needed
from fedshield.privacy.budget import compose_epsilon, plan_release

from ..scenario import Scenario
from .driver import confidence_levels

__all__ = ["AuditPlan", "plan_audit", "planned_claims"]


@dataclass(frozen=True)
class AuditPlan:
    """The pooled canary test a run will get: its size, ceiling and the claim it
    faces (None without sample-level DP), and how many pooled guesses would
    put the ceiling above the claim (None: none up to 2^17 would)."""

    sites: int
    canaries: int
    guesses: int
    guess_fraction: float
    ceiling: float
    claimed: float | None
    delta: float
    confidence: float
    needed: int | None
    data_canaries: bool

    @property
    def can_refute(self) -> bool:
        return self.claimed is not None and self.ceiling > self.claimed

    def warning(self) -> str | None:
        """What to tell the user before the run, or None when the test can refute
        the claim."""
        if self.claimed is None:
            return (
                "The run claims no sample-level DP: the audit will show what its "
                "canaries prove leaks, with the verdict 'not tested' (exit code 5)."
            )
        if self.can_refute:
            return None
        text = (
            f"The pooled canary test can show at most epsilon = {self.ceiling:.2f} "
            f"({self.guesses} guesses on {self.canaries} canaries, delta = "
            f"{self.delta:g}, confidence {self.confidence:.3g}), and the sites will "
            f"claim up to epsilon = {self.claimed:.2f} if each trains every round: "
            "the audit can only come out 'inconclusive'. "
        )
        if self.needed is None:
            text += (
                f"No number of guesses reaches it at delta = {self.delta:g} (each "
                "canary adds 2 delta to the test's p-value); audit a run with a "
                "smaller claim (dp.target-epsilon)."
            )
        else:
            per_site = math.ceil(self.needed / self.guess_fraction / self.sites)
            text += (
                f"It takes at least {self.needed} pooled guesses, e.g. "
                f"audit.canaries={per_site} per site at audit.guess-fraction="
                f"{self.guess_fraction:g}."
            )
        if self.data_canaries:
            text += (
                " Record canaries rarely get every guess right; audit.canary-kind="
                '"gradient" comes closest to the ceiling.'
            )
        return text


def planned_claims(run_config: RunConfig, num_sites: int) -> list[float]:
    """Each simulated site's planned sample-level epsilon for the run ([] without
    DP): ``dp.target-epsilon`` when set, else the planned rounds composed at the
    site's share size, at ``dp.delta``."""
    cfg = ClientConfig.from_run_config(run_config)
    if not cfg.dp.enabled:
        return []
    if cfg.dp.target_epsilon > 0:
        return [cfg.dp.target_epsilon] * num_sites
    scenario = Scenario.from_run_config(run_config)
    claims = []
    for k in range(num_sites):
        train, _ = scenario.site(k, num_sites)
        release = plan_release(
            cfg.dp,
            num_examples=len(train),
            batch_size=cfg.train.batch_size,
            local_epochs=cfg.train.local_epochs,
            planned_rounds=cfg.num_rounds,
            server_round=1,
            delta=cfg.dp.delta,
            history=[],
        )
        claims.append(
            compose_epsilon(
                [release] * cfg.num_rounds,
                delta=cfg.dp.delta,
                accountant=cfg.dp.accountant,
            )
        )
    return claims


def plan_audit(run_config: RunConfig, num_sites: int) -> AuditPlan:
    """The pooled canary test of a simulation of ``num_sites`` sites."""
    audit = AuditConfig.from_run_config(run_config)
    delta = float(run_config["dp.delta"])
    confidence, _ = confidence_levels(audit.confidence, num_sites)
    canaries = audit.canaries * num_sites
    k_plus, k_minus = audit.guesses_for(canaries) if canaries else (0, 0)
    claims = planned_claims(run_config, num_sites)
    claimed = max(claims) if claims else None
    top = (
        ceiling(m=canaries, r=k_plus + k_minus, delta=delta, confidence=confidence)
        if canaries
        else 0.0
    )
    needed = None
    if claimed is not None and top <= claimed:
        needed = guesses_needed(
            claimed,
            guess_fraction=audit.guess_fraction,
            delta=delta,
            confidence=confidence,
        )
    return AuditPlan(
        sites=num_sites,
        canaries=canaries,
        guesses=k_plus + k_minus,
        guess_fraction=audit.guess_fraction,
        ceiling=top,
        claimed=claimed,
        delta=delta,
        confidence=confidence,
        needed=needed,
        data_canaries=audit.canary_kind.is_data,
    )
