"""Attacks on the accounting: budgets the run config could reset or loosen, a
target epsilon stretched by a resume, and client-level DP that the coordinator (or
whoever reads the model) could see through.

Budgets are judged on the site's own signed ledger after the attack (what was
really released), composed by the site's accountant at the budget's delta, never
on what a site said. Client-level DP is judged on the noise actually left between
the coordinator's view and a site's clipped update, against the noise the
reported epsilon assumes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from red_team_harness import (
    RUN_KEY,
    Env,
    Federation,
    Outcome,
    Result,
    UpdateTap,
    attack,
)
from red_team_secagg import new_round
from red_team_site import pii_rows
from scipy.stats import beta

import fedshield.client.secagg_mod as secagg_mod
from fedshield.models import state_to_arrays
from fedshield.privacy.budget import Release, compose_epsilon
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.privacy.dp import AccountantKind
from fedshield.privacy.ledger import LedgerReader
from fedshield.privacy.secagg import SecAggConfig
from fedshield.server.rounds import run_round
from tests.server.grid import InMemoryGrid

RDP = AccountantKind.RDP


def ledger(fed: Federation, node: int) -> list[Any]:
    """The site's ledger entries (its signed record of every release)."""
    state = Path(fed.node_configs[node]["state-dir"])
    if not (state / "ledger.sqlite").exists():
        return []
    with LedgerReader(state) as reader:
        return [r.entry for r in reader.entries()]


def composed(entries: Iterable[Any], delta: float) -> float:
    releases = [Release(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]
    return compose_epsilon(releases, delta=delta, accountant=RDP)


def train_round(env: Env, fed: Federation, server_round: int = 1) -> str | None:
    """One secure round's setup (the site trains there); the refusal, if any."""
    rnd = new_round(
        env, fed, [fed.nodes[0], None], threshold=2, server_round=server_round
    )
    rnd.setup()
    return next(iter(rnd.refused.values()), None)


@attack(
    "budget-reset-by-settings",
    "Other pii.* settings on the same raw records never open a fresh budget: a "
    "site whose budget one round spent refuses the next, however it is scrubbed.",
)
def budget_reset(env: Env) -> Result:
    # a 2-participant round: the site accepts it (no colluders assumed), so that
    # the budget, not the round size, is what the attack meets
    trusting = {"secagg-max-colluders": 0}
    fed = Federation(env, "budget-reset", 1, rows=pii_rows, node_config=trusting)
    node = fed.nodes[0]
    if (why := train_round(env, fed)) is not None:
        raise RuntimeError(f"the first round did not train: {why}")
    spent = ledger(fed, node)[-1].epsilon
    fed.node_configs[node]["max-epsilon"] = spent * 1.001  # no room for a round
    admitted: list[dict[str, Any]] = []
    refusals: list[str] = []
    variants: tuple[dict[str, Any], ...] = (
        {"pii.mode": "mask"},
        {"pii.score-threshold": 0.4},
        {"pii.mode": "pseudonym"},
    )
    for run_id, variant in enumerate(variants, start=2):
        fed.new_run({**env.run_config, **variant}, run_id=run_id)
        why = train_round(env, fed)
        if why is None:
            admitted.append(variant)
        else:
            refusals.append(why)
    if admitted:
        total = composed(ledger(fed, node), env.run_config["dp.delta"])
        return Result(
            Outcome.SUCCEEDED,
            f"admitted {admitted} past max-epsilon={spent * 1.001:.3f}; the ledger's "
            f"releases compose to {total:.3f}",
        )
    return Result(Outcome.REFUSED, f"{len(refusals)} refusals: {refusals[0][:200]}")


@attack(
    "delta-inflation",
    "A run config's dp.delta does not loosen a site's budget: a site with "
    "max-epsilon=8 releases nothing whose epsilon at the app's delta (1e-5) "
    "exceeds 8, whatever delta the run asks for (here 0.04 < 1/n).",
)
def delta_inflation(env: Env) -> Result:
    run = env.config(dp__delta=0.04, dp__noise_multiplier=0.5)
    fed = Federation(env, "delta", 1, run_config=run, node_config={"max-epsilon": 8})
    why = train_round(env, fed)
    entries = ledger(fed, fed.nodes[0])
    reference = float(env.run_config["dp.delta"])
    at_reference = composed(entries, reference)
    if entries and at_reference > 8:
        return Result(
            Outcome.SUCCEEDED,
            f"released at delta={entries[-1].delta:g} (epsilon "
            f"{entries[-1].epsilon:.2f} there): epsilon {at_reference:.2f} at "
            f"delta={reference:g}, above the site's 8",
        )
    if why is not None:
        return Result(Outcome.REFUSED, why[:300])
    return Result(
        Outcome.LEARNED_NOTHING, f"epsilon at {reference:g}: {at_reference:.2f}"
    )


@attack(
    "target-epsilon-resume",
    "A run at dp.target-epsilon=4 ends at or below 4 at each site even when the "
    "coordinator resumes it with more rounds (num-server-rounds 2 -> 4).",
)
def target_epsilon_resume(env: Env) -> Result:
    fed = Federation(env, "target-resume", 1, node_config={"secagg-max-colluders": 0})
    node, target = fed.nodes[0], 4.0
    for run_id, planned, rounds in ((1, 2, (1, 2)), (2, 4, (3, 4))):
        run = env.config(dp__target_epsilon=target, num_server_rounds=planned)
        fed.new_run(run, run_id=run_id)  # a resume: a new Flower run, same run-key
        for r in rounds:
            if (why := train_round(env, fed, server_round=r)) is not None:
                if r <= 2:
                    raise RuntimeError(f"round {r} of the first part refused: {why}")
                return Result(Outcome.REFUSED, f"round {r}: {why[:250]}")
    entries = [e for e in ledger(fed, node) if e.run_id == RUN_KEY]
    epsilon = composed(entries, entries[-1].delta)
    if epsilon > target * 1.001:
        sigmas = ", ".join(f"{e.noise_multiplier:.3f}" for e in entries)
        return Result(
            Outcome.SUCCEEDED,
            f"the run's epsilon is {epsilon:.2f} > target {target} (sigma per round "
            f"{sigmas})",
        )
    return Result(Outcome.LEARNED_NOTHING, f"run epsilon {epsilon:.3f} <= {target}")


# client-level DP: S and z small enough that the noise fits secagg.clip-range=1
CLIP, Z = 0.01, 1.0


def noise_left(env: Env, name: str, *, colluder: bool) -> Result:
    """The coordinator's view of the sum minus what it knows (the colluder's zero
    input): the per-coordinate noise left on the honest sites' clipped updates."""
    run = env.config(
        client_dp__enabled=True,
        client_dp__clip_norm=CLIP,
        client_dp__noise_multiplier=Z,
    )
    fed = Federation(
        env,
        name,
        1 if colluder else 2,
        run_config=run,
        node_config={"secagg-max-colluders": 1} if colluder else None,
    )
    nodes: list[int | None] = [fed.nodes[0], None] if colluder else list(fed.nodes)
    rnd = new_round(env, fed, nodes, threshold=2)
    with UpdateTap().installed() as tap:
        rnd.setup()
        rnd.share_keys()
        rnd.masked_input({i: rnd.inbox(i) for i in rnd.cts})
        survivors = sorted(rnd.y)
        rnd.unmask({i: (set(survivors), set[int]()) for i in survivors})
    if survivors != [0, 1]:
        return Result(Outcome.REFUSED, f"{rnd.refused}")
    # the honest sites' clipped updates
    truth = np.sum([tap.updates[n][-1] for n in fed.nodes], axis=0)
    left = float(np.std(rnd.honest_sum(survivors) - truth))
    accounted = (
        Z * CLIP
    )  # the noise std on the sum that the client-level epsilon assumes
    needed = 0.9 if colluder else 0.5
    verdict = (
        Outcome.SUCCEEDED if left < needed * accounted else Outcome.LEARNED_NOTHING
    )
    return Result(
        verdict,
        f"noise left on the honest update(s): std {left:.2e} per coordinate; the "
        f"reported client-level epsilon assumes {accounted:.2e}",
    )


@attack(
    "exact-sum-under-client-dp",
    "With client-level DP and secure aggregation, the coordinator never unmasks a "
    "sum without the accounted noise (issue 14: noise added after unmasking).",
)
def exact_sum(env: Env) -> Result:
    return noise_left(env, "exact-sum", colluder=False)


@attack(
    "colluder-strips-noise",
    "With t - 1 = 1 colluding site (it adds no noise and its input is known), the "
    "coordinator still sees the honest site's update under (at least 90 % of) the "
    "noise its client-level epsilon assumes.",
)
def colluder_strips_noise(env: Env) -> Result:
    return noise_left(env, "colluder", colluder=True)


class StubGrid(InMemoryGrid):
    """Sites that return a zero update (a valid clipped update) behind the real
    secagg client mod, except the last one, which returns ``target`` when given;
    an in-memory Flower Grid for the server's real round."""

    def __init__(
        self,
        nodes: int,
        env: Env,
        run_config: dict[str, Any],
        target: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(range(201, 201 + nodes), run_config)
        self.env = env
        self.target_node, self.target = 200 + nodes, target

    def _train(self, msg: Message, context: Context) -> Message:
        zero = {k: torch.zeros_like(v) for k, v in self.env.global_state().items()}
        update = self.target if context.node_id == self.target_node else None
        metrics = {"num-examples": 24, "train-loss": 0.5, "steps": 3, "epsilon": 1.0}
        content = RecordDict(
            {
                "arrays": state_to_arrays(update if update is not None else zero),
                "metrics": MetricRecord({**metrics, "delta": 1e-5}),
                "site": ConfigRecord({"name": f"site-{context.node_id}"}),
            }
        )
        return Message(content=content, reply_to=msg)

    def reply(self, msg: Message, node: int) -> Message:
        return secagg_mod.secagg_mod(msg, self.contexts[node], self._train)


def _round_change(
    env: Env,
    sites: int,
    dp: ClientDPConfig,
    target: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], float | None]:
    """The global model's change after one real server round, and the Skellam
    variance the round's survivors reported (distributed DP)."""
    start = env.global_state()
    run = env.config(
        client_dp__enabled=dp.enabled,
        client_dp__clip_norm=dp.clip_norm,
        client_dp__noise_multiplier=dp.noise_multiplier,
    )
    state, log = run_round(
        grid=StubGrid(sites, env, run, target),  # type: ignore[arg-type]
        strategy=FedAvg(min_train_nodes=1, min_available_nodes=1),
        train_config=ConfigRecord({"run-key": RUN_KEY}),
        server_round=1,
        global_state=start,
        min_sites=2,
        timeout=5.0,
        progress=lambda done, total: None,
        client_dp=dp,
        secagg=SecAggConfig.from_run_config(env.run_config),
    )
    return {k: state[k] - start[k] for k in start}, log.noise_variance


def update_norm(env: Env, sites: int, dp: ClientDPConfig) -> float:
    """The norm of the global model's change after one real server round."""
    change, _ = _round_change(env, sites, dp)
    squares = torch.stack([(v**2).sum() for v in change.values()])
    return float(squares.sum().sqrt())


@attack(
    "m-from-update-norm",
    "Whoever reads the global model (or the coordinator, from the unmasked sum) "
    "cannot tell a site's clipped update from the zero update beyond the claimed "
    "client-level epsilon: 5 sites, one round at z=4, zero-out neighbours (who "
    "took part is public under secure aggregation; the update's norm reveals the "
    "number of sites by design, so the test reads the target's own direction).",
)
def m_from_update_norm(env: Env, trials: int = 30) -> Result:
    from fedshield.privacy.distributed_dp import (
        DistributedRound,
        distributed_epsilon,
        site_noise,
    )
    from fedshield.privacy.secagg import SecAggParams

    dp = ClientDPConfig(enabled=True, clip_norm=CLIP, noise_multiplier=4.0)
    q = SecAggConfig.from_run_config(env.run_config).quantizer
    params = SecAggParams(
        session=bytes(16),
        nodes=(0, 1),
        num_shares=2,
        threshold=2,
        quantizer=q,
        vector_length=env.vector_length(),
    )
    cal = site_noise(dp, params, 1)
    g = torch.Generator().manual_seed(7)
    direction = {
        k: torch.randn(v.shape, generator=g) for k, v in env.global_state().items()
    }
    norm = float(torch.stack([(v**2).sum() for v in direction.values()]).sum().sqrt())
    scale = 0.9 * cal.site_clip_norm / norm  # inside the site's clip bound
    target = {k: v * scale for k, v in direction.items()}

    def score(real: bool) -> tuple[float, float | None]:
        change, variance = _round_change(env, 5, dp, target if real else None)
        dot = sum(float((change[k] * target[k]).sum()) for k in target)
        return dot, variance

    calibrate = [np.mean([score(real)[0] for _ in range(5)]) for real in (True, False)]
    cut = float(np.mean(calibrate))  # a threshold on the projection, fixed beforehand
    said_real = {real: 0 for real in (True, False)}
    variances = []
    for real in (True, False):
        for _ in range(trials):
            value, variance = score(real)
            said_real[real] += value > cut
            if variance is not None:
                variances.append(variance)
    hits, misses = said_real[True], said_real[False]
    tpr = float(beta.ppf(0.025, hits, trials - hits + 1)) if hits else 0.0
    fpr = (
        float(beta.ppf(0.975, misses + 1, trials - misses)) if misses < trials else 1.0
    )
    delta = dp.delta
    lower = math.log(max(tpr - delta, 1e-12) / fpr) if fpr > 0 else math.inf
    if variances:  # the claim: the survivors' reported noise, one Skellam round
        claimed = distributed_epsilon(
            [
                DistributedRound(
                    l2_sensitivity=cal.l2_sensitivity,
                    l1_sensitivity=cal.l1_sensitivity,
                    variance=min(variances),
                )
            ],
            delta=delta,
        )
    else:  # central noise
        claimed = compose_epsilon([Release(4.0, 1.0, 1)], delta=delta, accountant=RDP)
    detail = (
        f"projection on the target's update: {hits}/{trials} right with it, "
        f"{misses}/{trials} wrong without; epsilon >= {lower:.2f} (95 %) against the "
        f"claimed {claimed:.2f}"
    )
    verdict = Outcome.SUCCEEDED if lower > claimed else Outcome.LEARNED_NOTHING
    return Result(verdict, detail)
