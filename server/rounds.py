"""Round orchestration: sample sites, collect and screen their replies, sum and
aggregate their updates, and keep the round's log.

Flower's ``Strategy.start`` loop has no hooks for per-round checkpoints, resuming,
per-site metrics, screening malformed updates one by one or secure aggregation, so
the loop lives here; node sampling (``configure_train``) and the server step
(``aggregate_train``) stay the selected Flower strategy's (:mod:`server.strategy`).

One round: ``configure_train`` -> push and collect the replies
(:func:`collect_replies`) -> screen and decode them once (:mod:`server.replies`)
-> the sum of the valid updates, in the clear or, with secure aggregation
(:mod:`server.secagg`), by three more exchanges that reveal only the sum -> the
aggregation pipeline (:mod:`server.aggregation`: client-level noise, mean over the
fixed denominator, the strategy's server step; its docstring states the update
rule).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedshield.common.schema import Metric
from fedshield.models import state_to_arrays
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.privacy.secagg import SecAggAborted, SecAggConfig, SecAggParams

from .aggregation import (
    UpdateSum,
    aggregate,
    aggregation_weights,
    plain_sum,
    robust_step,
)
from .guard import RootGuard
from .replies import Screened, SiteNames, screen_replies, site_of
from .secagg import prepare_setup, secure_sum
from .strategy import is_robust, robust_minimum

__all__ = [
    "RoundAborted",
    "RoundLog",
    "collect_replies",
    "measured",
    "run_round",
]

logger = logging.getLogger(__name__)

State = dict[str, torch.Tensor]
Progress = Callable[[int, int], None]  # (replies so far, messages sent)


class RoundAborted(RuntimeError):
    """Too few valid updates arrived to aggregate a round."""


@dataclass
class RoundLog:
    server_round: int
    sites: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    sampled: int = 0  # sites asked to train
    available: int = 0  # sites connected when the round was configured
    accuracy: float = float("nan")  # causal LM: token accuracy
    loss: float = float("nan")
    perplexity: float | None = None  # causal LM only
    robust_accuracy: float | None = None  # eval.attacks: under embedding PGD
    char_attack_success: float | None = None  # eval.attacks
    macro_precision: float | None = None  # classifier only
    macro_recall: float | None = None
    macro_f1: float | None = None
    attack: dict[str, float] | None = None  # simulated poisoning: success shares
    train_loss: float = float("nan")
    seconds: float = 0.0
    client_epsilon: float | None = None  # run's client-level epsilon after the round
    saturated: int | None = None  # secagg: update values clipped to clip-range
    # distributed DP: the survivors' total Skellam variance, integer units
    noise_variance: float | None = None
    # strategy.root-guard: its test of the round's mean (server.guard.GuardDecision)
    guard: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundLog:
        return cls(
            server_round=int(d["round"]),
            sites=d["sites"],
            failures=d["failures"],
            refusals=d.get("refusals", []),
            sampled=d.get("sampled", 0),
            available=d.get("available", 0),
            accuracy=d["accuracy"],
            loss=d["loss"],
            perplexity=d.get("perplexity"),
            robust_accuracy=d.get("robust_accuracy"),
            char_attack_success=d.get("char_attack_success"),
            macro_precision=d.get("macro_precision"),
            macro_recall=d.get("macro_recall"),
            macro_f1=d.get("macro_f1"),
            attack=d.get("attack"),
            # withheld by every site: NaN in memory, null in summary.json
            train_loss=float("nan") if d["train_loss"] is None else d["train_loss"],
            seconds=d["seconds"],
            client_epsilon=d.get("client_epsilon"),
            saturated=d.get("saturated"),
            noise_variance=d.get("noise_variance"),
            guard=d.get("guard"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.server_round,
            "accuracy": self.accuracy,
            "loss": self.loss,
            **measured(
                perplexity=self.perplexity,
                robust_accuracy=self.robust_accuracy,
                char_attack_success=self.char_attack_success,
                macro_precision=self.macro_precision,
                macro_recall=self.macro_recall,
                macro_f1=self.macro_f1,
            ),
            **({} if self.attack is None else {"attack": self.attack}),
            "train_loss": self.train_loss,
            "seconds": round(self.seconds, 2),
            "sampled": self.sampled,
            "available": self.available,
            "client_epsilon": self.client_epsilon,
            "saturated": self.saturated,
            "noise_variance": self.noise_variance,
            **({} if self.guard is None else {"guard": self.guard}),
            "sites": self.sites,
            "failures": self.failures,
            "refusals": self.refusals,
        }


def measured(**values: float | None) -> dict[str, float]:
    """The values that were measured (not None): what a metric dict carries."""
    return {k: v for k, v in values.items() if v is not None}


def mean_train_loss(sites: dict[str, dict[str, float]]) -> float:
    """The example-weighted mean train loss, NaN unless every site released both
    its loss and its example count (``release-metrics``)."""
    needed = (Metric.TRAIN_LOSS, Metric.NUM_EXAMPLES)
    if not sites or any(k not in m for m in sites.values() for k in needed):
        return float("nan")
    total = sum(m[Metric.NUM_EXAMPLES] for m in sites.values())
    return sum(
        m[Metric.TRAIN_LOSS] * m[Metric.NUM_EXAMPLES] / total for m in sites.values()
    )


def _attributed(reply: Message, asked: Message | None) -> Message:
    """``reply`` as the reply of the node that ``asked`` went to. An error the
    SuperLink makes for a node it lost (offline, message expired: flwr 1.41
    ``linkstate/utils.py``) carries the SuperLink's own id (1) as its source,
    which would blame the SuperLink, or a wrong site, for the dead site's failure;
    it is re-made as the asked node's error. A reply that is not an error comes
    from the asked node (the SuperLink refuses any other source)."""
    if asked is None or not reply.has_error():
        return reply
    if reply.metadata.src_node_id == asked.metadata.dst_node_id:
        return reply
    return Message(reply.error, reply_to=asked)


def collect_replies(
    grid: Grid, messages: list[Message], *, timeout: float, progress: Progress
) -> list[Message]:
    """Push ``messages`` and pull replies until all arrive or ``timeout`` passes.
    Each reply is attributed to the node that was asked (:func:`_attributed`)."""
    pushed = list(grid.push_messages(messages))
    asked = {mid: m for mid, m in zip(pushed, messages, strict=True) if mid}
    ids = set(asked)
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    progress(0, len(ids))
    # poll fast at first, back off to 50 ms: a secure round has five stages, and
    # a longer back-off adds up to its length to each (a pull is one cheap call)
    wait = 0.005
    while ids and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(ids)):
            mid = reply.metadata.reply_to_message_id
            ids.discard(mid)
            replies.append(_attributed(reply, asked.get(mid)))
            progress(len(replies), len(messages))
        if ids:
            time.sleep(wait)
            wait = min(wait * 2, 0.05)
    if ids:
        logger.warning(
            "%d site(s) did not reply within round-timeout=%.0fs; the round goes on "
            "without them.",
            len(ids),
            timeout,
        )
    return replies


def _secure_sum(
    *,
    grid: Grid,
    screened: Screened,
    messages: list[Message],
    params: SecAggParams,
    log: RoundLog,
    server_round: int,
    global_state: State,
    timeout: float,
    min_sites: int,
    noised: bool,
    names: SiteNames,
) -> UpdateSum:
    """The unmasked sum of the survivors' updates (unweighted; with ``noised``, the
    sites' Skellam noise in it); drops go to the log. Survivors are counted by
    node id: a name is only what a site says of itself."""
    named = {r.metadata.src_node_id: site_of(r, names) for r in screened.valid}
    try:
        result = secure_sum(
            setup_replies=screened.valid,
            params=params,
            node_ids=[m.metadata.dst_node_id for m in messages],
            collect=lambda msgs: collect_replies(
                grid, msgs, timeout=timeout, progress=lambda done, total: None
            ),
            group=str(server_round),
            template=global_state,
            noised=noised,
        )
    except SecAggAborted as err:
        raise RoundAborted(
            f"Round {server_round}: {err} The global model is unchanged."
        ) from err
    survivors = len(result.survivors)
    in_sum = {named[n] for n in result.survivors}
    for node, reason in result.dropped:
        log.failures.append({"site": names.of(node), "reason": reason})
    log.sites = {k: v for k, v in log.sites.items() if k in in_sum}
    log.saturated = result.saturated
    if survivors < min_sites:
        raise RoundAborted(
            f"Round {server_round}: {survivors} site(s) finished secure "
            f"aggregation, but min-train-sites is {min_sites}. The global model "
            "is unchanged."
        )
    return UpdateSum(
        total=result.total,
        weight=float(survivors),
        count=survivors,
        noise_variance=result.noise_variance,
    )


def _guarded(
    guard: RootGuard, *, log: RoundLog, global_state: State
) -> Callable[[State], State | None]:
    """The guard's test of the mean, its decision kept in the round's log."""

    def test(mean: State) -> State | None:
        applied, decision = guard(
            mean, global_state=global_state, server_round=log.server_round
        )
        log.guard = decision.as_dict()
        if decision.action != "kept":
            logger.warning(
                "Round %d: the root guard %s the mean update (cosine %.3f with the "
                "root update, norm %.4g against the root's %.4g)",
                log.server_round,
                decision.action,
                decision.cosine,
                decision.mean_norm,
                decision.root_norm,
            )
        return applied

    return test


def _robust_step(
    strategy: FedAvg, screened: Screened, server_round: int, global_state: State
) -> State:
    """A robust strategy's model from the screened individual updates; the round
    aborts when there are fewer than its rule needs."""
    least = robust_minimum(strategy)
    if len(screened.deltas) < least:
        raise RoundAborted(
            f"Round {server_round}: {len(screened.deltas)} valid update(s), but "
            f"{type(strategy).__name__} needs at least {least} to hold against "
            "the attackers it is set for. The global model is unchanged."
        )
    return robust_step(
        strategy,
        server_round=server_round,
        global_state=global_state,
        deltas=list(screened.deltas.values()),
    )


def run_round(
    *,
    grid: Grid,
    strategy: FedAvg,
    train_config: ConfigRecord,
    server_round: int,
    global_state: State,
    min_sites: int,
    timeout: float,
    progress: Progress,
    client_dp: ClientDPConfig,
    secagg: SecAggConfig,
    names: SiteNames | None = None,
    guard: RootGuard | None = None,
) -> tuple[State, RoundLog]:
    """One training round; returns the new global state and the round's log.
    ``names``: the run's site names so far (failures of sites that no longer
    reply are named with them); it learns this round's.

    ``train_config`` is sent to every sampled site (the strategy adds the round).
    ``strategy`` samples the sites and takes the server step
    (:func:`server.aggregation.server_step`); ``guard`` (``strategy.root-guard``)
    tests the round's mean against the server's root update first.
    """
    start = time.monotonic()
    names = SiteNames() if names is None else names
    log = RoundLog(server_round=server_round)
    log.available = len(list(grid.get_node_ids()))
    messages = list(
        strategy.configure_train(  # FedOpt strategies remember global_state here
            server_round,
            state_to_arrays(global_state),
            ConfigRecord(dict(train_config)),
            grid,
        )
    )
    log.sampled = len(messages)
    params = None
    try:
        if secagg.enabled:
            messages, params = prepare_setup(
                messages, cfg=secagg, global_state=global_state, client_dp=client_dp
            )
    except SecAggAborted as err:
        raise RoundAborted(f"Round {server_round}: {err}") from err
    replies = collect_replies(grid, messages, timeout=timeout, progress=progress)
    screened = screen_replies(
        replies,
        global_state,
        clip_norm=client_dp.clip_norm
        if client_dp.enabled and not secagg.enabled
        else None,
        secure=secagg.enabled,
        names=names,
    )
    for reply in screened.valid:  # screened: one reply per name, a valid update
        names.learn(reply)
    log.sites, log.failures, log.refusals = (
        screened.sites,
        screened.failures,
        screened.refusals,
    )
    if len(screened.valid) < min_sites:
        reasons = "; ".join(
            f"{f['site']}: {f['reason']}" for f in [*log.failures, *log.refusals]
        )
        raise RoundAborted(
            f"Round {server_round}: {len(screened.valid)} valid update(s) from "
            f"{len(messages)} sampled site(s), but min-train-sites is {min_sites}. "
            f"The global model is unchanged. Failures and refusals: "
            f"{reasons or 'none (timeouts)'}"
        )
    if is_robust(strategy):  # checked at run start: no secagg, no client-level DP
        new_state = _robust_step(strategy, screened, server_round, global_state)
    else:
        # uniform under client-level DP (the sum's sensitivity must stay S) and under
        # secure aggregation (sites mask unweighted updates: no server-chosen weight)
        weights = aggregation_weights(
            screened.sites, uniform=client_dp.enabled or secagg.enabled
        )
        if params is None:
            summed = plain_sum(
                deltas=list(screened.deltas.values()),
                weights=[weights[site] for site in screened.deltas],
            )
        else:
            summed = _secure_sum(
                grid=grid,
                screened=screened,
                messages=messages,
                params=params,
                log=log,
                server_round=server_round,
                global_state=global_state,
                timeout=timeout,
                min_sites=min_sites,
                noised=client_dp.enabled,
                names=names,
            )
            log.noise_variance = summed.noise_variance
        new_state = aggregate(
            summed,
            client_dp=client_dp,
            strategy=strategy,
            server_round=server_round,
            global_state=global_state,
            sampled=log.sampled,
            guard=None
            if guard is None
            else _guarded(guard, log=log, global_state=global_state),
        )
    log.train_loss = mean_train_loss(log.sites)
    log.seconds = time.monotonic() - start
    return new_state, log
