"""Round orchestration: sample sites, collect and screen their deltas, aggregate
with a Flower strategy, evaluate, checkpoint, and keep the run's history.

Flower's ``Strategy.start`` loop has no hooks for per-round checkpoints, resuming,
per-site metrics or screening malformed updates one by one, so the loop lives here;
node sampling and the weighted averaging stay Flower's (``configure_train`` /
``aggregate_train`` of any Message-API strategy, FedAvg by default).

Update rule: each site k sends ``delta_k = theta_k - theta``; the strategy returns
``sum_k (n_k / sum_j n_j) delta_k`` and the server sets ``theta <- theta + that``.
With client-level DP (:mod:`privacy.client_dp`) the sites' deltas are clipped to S
and the server applies ``(sum_k delta_k + N(0, z^2 S^2 I)) / m`` instead: uniform
weights, because example-count weights would break the sensitivity bound S.

A site whose budget would be exceeded replies with a ``refusal`` record instead of
an update; it is reported in the round's log and the round goes on without it.

With secure aggregation (:mod:`server.secagg`) the training replies carry metrics
and public keys only; the updates are summed under masks in three more exchanges,
and the server sees their sum, never one of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from fedshield.models import (
    StateMismatchError,
    add_delta,
    arrays_to_state,
    check_same_layout,
    state_to_arrays,
)
from fedshield.privacy.client_dp import (
    ClientDPConfig,
    l2_norm,
    noisy_mean,
    noisy_mean_of_sum,
)
from fedshield.privacy.secagg import SecAggAborted, SecAggConfig
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .secagg import prepare_setup, secure_sum

__all__ = [
    "RoundAborted",
    "RoundLog",
    "Screened",
    "collect_replies",
    "run_round",
    "screen_replies",
]

logger = logging.getLogger(__name__)

REQUIRED_METRICS = ("num-examples", "train-loss", "steps", "epsilon", "delta")

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
    accuracy: float = float("nan")
    loss: float = float("nan")
    train_loss: float = float("nan")
    seconds: float = 0.0
    client_epsilon: float | None = None  # run's client-level epsilon after the round
    saturated: int | None = None  # secagg: update values clipped to clip-range

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
            train_loss=d["train_loss"],
            seconds=d["seconds"],
            client_epsilon=d.get("client_epsilon"),
            saturated=d.get("saturated"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.server_round,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "train_loss": self.train_loss,
            "seconds": round(self.seconds, 2),
            "sampled": self.sampled,
            "available": self.available,
            "client_epsilon": self.client_epsilon,
            "saturated": self.saturated,
            "sites": self.sites,
            "failures": self.failures,
            "refusals": self.refusals,
        }


def collect_replies(
    grid: Grid, messages: list[Message], *, timeout: float, progress: Progress
) -> list[Message]:
    """Push ``messages`` and pull replies until all arrive or ``timeout`` passes."""
    ids = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    progress(0, len(ids))
    wait = 0.005  # poll fast at first (protocol stages are short), back off to 0.2 s
    while ids and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(ids)):
            ids.discard(reply.metadata.reply_to_message_id)
            replies.append(reply)
            progress(len(replies), len(messages))
        if ids:
            time.sleep(wait)
            wait = min(wait * 2, 0.2)
    if ids:
        logger.warning(
            "%d site(s) did not reply within round-timeout=%.0fs; the round goes on "
            "without them.",
            len(ids),
            timeout,
        )
    return replies


def _site_of(reply: Message) -> str:
    site = reply.content.config_records.get("site") if not reply.has_error() else None
    if site is not None and "name" in site:
        return str(site["name"])
    return f"node-{reply.metadata.src_node_id}"


@dataclass(frozen=True)
class Screened:
    """Replies sorted into updates to aggregate, failures and budget refusals."""

    valid: list[Message]
    sites: dict[str, dict[str, float]]  # per-site metrics of the valid replies
    failures: list[dict[str, str]]
    refusals: list[dict[str, Any]]


def _refusal(reply: Message, site: str) -> dict[str, Any] | None:
    if reply.has_error() or "refusal" not in reply.content.config_records:
        return None
    record = reply.content.config_records["refusal"]
    return {"site": site, **{k: record[k] for k in record}}


def _check_metrics(metrics: dict[str, float]) -> None:
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        raise ValueError(f"metrics lack {missing}")
    non_private = metrics.get("noise-multiplier", 1.0) == 0.0
    for key, value in metrics.items():
        # a non-private release has epsilon = inf; anything else must be finite
        if math.isinf(value) and value > 0 and non_private and "epsilon" in key:
            continue
        if not math.isfinite(value):
            raise ValueError(f"non-finite metric {key}={value}")
    if metrics["num-examples"] <= 0:
        raise ValueError("num-examples must be > 0")


def screen_replies(
    replies: list[Message],
    global_state: State,
    *,
    clip_norm: float | None = None,
    secure: bool = False,
) -> Screened:
    """Sort replies into valid updates, failures (with reasons) and refusals.

    A reply is valid when it carries no error, exactly one ArrayRecord that decodes
    to finite tensors with the global state's names and shapes (and, with
    ``clip_norm``, an L2 norm within it), and a MetricRecord with every required
    metric, all finite (epsilon may be inf for a non-private release). With
    ``secure``, the reply must carry no update at all (it stays masked at the site)
    and a ``secagg`` record instead.
    """
    out = Screened(valid=[], sites={}, failures=[], refusals=[])
    for reply in replies:
        site = _site_of(reply)
        refusal = _refusal(reply, site)
        if refusal is not None:
            logger.warning("%s refused the round: %s", site, refusal.get("reason"))
            out.refusals.append(refusal)
            continue
        try:
            if reply.has_error():
                raise ValueError(f"the site reported an error: {reply.error.reason}")
            arrays = list(reply.content.array_records.values())
            metrics = list(reply.content.metric_records.values())
            if len(arrays) != (0 if secure else 1) or len(metrics) != 1:
                raise ValueError(
                    f"expected {0 if secure else 1} ArrayRecord and one MetricRecord, "
                    f"found {len(arrays)} and {len(metrics)}"
                )
            if secure and "secagg" not in reply.content.config_records:
                raise ValueError(
                    "no secagg record: the site does not run the fedshield secagg mod"
                )
            if not secure:
                what = f"The update of {site}"
                delta = arrays_to_state(arrays[0], what=what)  # finite values
                check_same_layout(global_state, delta, what)  # names and shapes
                if clip_norm is not None and l2_norm(delta) > clip_norm * (1 + 1e-4):
                    raise ValueError(
                        f"its update has L2 norm {l2_norm(delta):.6g}, above "
                        f"client-dp.clip-norm={clip_norm}: the site did not clip it"
                    )
            values = {k: float(metrics[0][k]) for k in metrics[0]}  # type: ignore[arg-type]
            _check_metrics(values)
        except (ValueError, StateMismatchError) as err:
            logger.warning("Rejected the reply of %s: %s", site, err)
            out.failures.append({"site": site, "reason": str(err)})
            continue
        if site in out.sites:
            out.failures.append(
                {"site": site, "reason": "duplicate reply in this round"}
            )
            continue
        out.sites[site] = values
        out.valid.append(reply)
    return out


def _aggregate(
    strategy: Strategy,
    server_round: int,
    valid: list[Message],
    client_dp: ClientDPConfig,
) -> State:
    """The round's update: the strategy's weighted mean, or with client-level DP
    the noisy uniform mean of the clipped deltas."""
    if client_dp.enabled:
        deltas = [
            arrays_to_state(
                next(iter(r.content.array_records.values())), what="An update"
            )
            for r in valid
        ]
        return noisy_mean(
            deltas,
            clip_norm=client_dp.clip_norm,
            noise_multiplier=client_dp.noise_multiplier,
        )
    agg_arrays, _ = strategy.aggregate_train(server_round, valid)
    if agg_arrays is None:
        raise RoundAborted(f"Round {server_round}: the strategy returned no aggregate.")
    return arrays_to_state(agg_arrays, what="The aggregate")


def run_round(
    *,
    grid: Grid,
    strategy: Strategy,
    train_config: ConfigRecord,
    server_round: int,
    global_state: State,
    min_sites: int,
    timeout: float,
    progress: Progress,
    client_dp: ClientDPConfig,
    secagg: SecAggConfig,
) -> tuple[State, RoundLog]:
    """One training round; returns the new global state and the round's log.

    ``train_config`` is sent to every sampled site (the strategy adds the round).
    """
    start = time.monotonic()
    log = RoundLog(server_round=server_round)
    log.available = len(list(grid.get_node_ids()))
    messages = list(
        strategy.configure_train(
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
                messages, cfg=secagg, global_state=global_state
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
    )
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
    if params is None:
        update = _aggregate(strategy, server_round, screened.valid, client_dp)
    else:
        names = {r.metadata.src_node_id: _site_of(r) for r in screened.valid}
        weights = {
            r.metadata.src_node_id: 1.0
            if client_dp.enabled
            else log.sites[names[r.metadata.src_node_id]]["num-examples"]
            for r in screened.valid
        }
        try:
            result = secure_sum(
                setup_replies=screened.valid,
                params=params,
                node_ids=[m.metadata.dst_node_id for m in messages],
                weights=weights,
                collect=lambda msgs: collect_replies(
                    grid, msgs, timeout=timeout, progress=lambda done, total: None
                ),
                group=str(server_round),
                template=global_state,
            )
        except SecAggAborted as err:
            raise RoundAborted(
                f"Round {server_round}: {err} The global model is unchanged."
            ) from err
        in_sum = {names[n] for n in result.survivors}
        for node, reason in result.dropped:
            log.failures.append(
                {"site": names.get(node, f"node-{node}"), "reason": reason}
            )
        log.sites = {k: v for k, v in log.sites.items() if k in in_sum}
        log.saturated = result.saturated
        if len(in_sum) < min_sites:
            raise RoundAborted(
                f"Round {server_round}: {len(in_sum)} site(s) finished secure "
                f"aggregation, but min-train-sites is {min_sites}. The global model "
                "is unchanged."
            )
        if client_dp.enabled:  # noise on the sum the server never saw in parts
            update = noisy_mean_of_sum(
                result.total,
                len(in_sum),
                clip_norm=client_dp.clip_norm,
                noise_multiplier=client_dp.noise_multiplier,
            )
        else:
            update = {k: v / result.weight for k, v in result.total.items()}
    new_state = add_delta(global_state, update)
    total = sum(s["num-examples"] for s in log.sites.values())
    log.train_loss = sum(
        s["train-loss"] * s["num-examples"] / total for s in log.sites.values()
    )
    log.seconds = time.monotonic() - start
    return new_state, log
