"""Round orchestration: sample sites, collect and screen their deltas, aggregate
with a Flower strategy, evaluate, checkpoint, and keep the run's history.

Flower's ``Strategy.start`` loop has no hooks for per-round checkpoints, resuming,
per-site metrics or screening malformed updates one by one, so the loop lives here;
node sampling and the weighted averaging stay Flower's (``configure_train`` /
``aggregate_train`` of any Message-API strategy, FedAvg by default).

Update rule: each site k sends ``delta_k = theta_k - theta``; the strategy returns
``sum_k (n_k / sum_j n_j) delta_k`` and the server sets ``theta <- theta + that``.
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
from flwr.serverapp.strategy import Strategy

from models import (
    StateMismatchError,
    add_delta,
    arrays_to_state,
    check_same_layout,
    state_to_arrays,
)

__all__ = ["RoundAborted", "RoundLog", "collect_replies", "run_round", "screen_replies"]

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
    accuracy: float = float("nan")
    loss: float = float("nan")
    train_loss: float = float("nan")
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundLog:
        return cls(
            server_round=int(d["round"]),
            sites=d["sites"],
            failures=d["failures"],
            accuracy=d["accuracy"],
            loss=d["loss"],
            train_loss=d["train_loss"],
            seconds=d["seconds"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.server_round,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "train_loss": self.train_loss,
            "seconds": round(self.seconds, 2),
            "sites": self.sites,
            "failures": self.failures,
        }


def collect_replies(
    grid: Grid, messages: list[Message], *, timeout: float, progress: Progress
) -> list[Message]:
    """Push ``messages`` and pull replies until all arrive or ``timeout`` passes."""
    ids = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    progress(0, len(ids))
    while ids and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(ids)):
            ids.discard(reply.metadata.reply_to_message_id)
            replies.append(reply)
            progress(len(replies), len(messages))
        if ids:
            time.sleep(0.2)
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


def screen_replies(
    replies: list[Message], global_state: State
) -> tuple[list[Message], dict[str, dict[str, float]], list[dict[str, str]]]:
    """Split replies into valid ones (with per-site metrics) and failures (reasons).

    A reply is valid when it carries no error, exactly one ArrayRecord that decodes
    to finite tensors with the global state's names and shapes, and a MetricRecord
    with every required metric, all finite.
    """
    valid: list[Message] = []
    sites: dict[str, dict[str, float]] = {}
    failures: list[dict[str, str]] = []
    for reply in replies:
        site = _site_of(reply)
        try:
            if reply.has_error():
                raise ValueError(f"the site reported an error: {reply.error.reason}")
            arrays = list(reply.content.array_records.values())
            metrics = list(reply.content.metric_records.values())
            if len(arrays) != 1 or len(metrics) != 1:
                raise ValueError(
                    f"expected one ArrayRecord and one MetricRecord, found "
                    f"{len(arrays)} and {len(metrics)}"
                )
            what = f"The update of {site}"
            delta = arrays_to_state(arrays[0], what=what)  # finite values
            check_same_layout(global_state, delta, what)  # names and shapes
            missing = [k for k in REQUIRED_METRICS if k not in metrics[0]]
            if missing:
                raise ValueError(f"metrics lack {missing}")
            values = {k: float(metrics[0][k]) for k in metrics[0]}  # type: ignore[arg-type]
            if not all(v == v and abs(v) != float("inf") for v in values.values()):
                raise ValueError(f"non-finite metrics {values}")
            if values["num-examples"] <= 0:
                raise ValueError("num-examples must be > 0")
        except (ValueError, StateMismatchError) as err:
            logger.warning("Rejected the reply of %s: %s", site, err)
            failures.append({"site": site, "reason": str(err)})
            continue
        if site in sites:
            failures.append({"site": site, "reason": "duplicate reply in this round"})
            continue
        sites[site] = values
        valid.append(reply)
    return valid, sites, failures


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
) -> tuple[State, RoundLog]:
    """One training round; returns the new global state and the round's log.

    ``train_config`` is sent to every sampled site (the strategy adds the round).
    """
    start = time.monotonic()
    log = RoundLog(server_round=server_round)
    messages = list(
        strategy.configure_train(
            server_round,
            state_to_arrays(global_state),
            ConfigRecord(dict(train_config)),
            grid,
        )
    )
    replies = collect_replies(grid, messages, timeout=timeout, progress=progress)
    valid, log.sites, log.failures = screen_replies(replies, global_state)
    if len(valid) < min_sites:
        reasons = "; ".join(f"{f['site']}: {f['reason']}" for f in log.failures)
        raise RoundAborted(
            f"Round {server_round}: {len(valid)} valid update(s) from "
            f"{len(messages)} sampled site(s), but min-train-sites is {min_sites}. "
            f"The global model is unchanged. Failures: {reasons or 'none (timeouts)'}"
        )
    agg_arrays, _ = strategy.aggregate_train(server_round, valid)
    if agg_arrays is None:
        raise RoundAborted(f"Round {server_round}: the strategy returned no aggregate.")
    new_state = add_delta(
        global_state, arrays_to_state(agg_arrays, what="The aggregate")
    )
    total = sum(s["num-examples"] for s in log.sites.values())
    log.train_loss = sum(
        s["train-loss"] * s["num-examples"] / total for s in log.sites.values()
    )
    log.seconds = time.monotonic() - start
    return new_state, log
