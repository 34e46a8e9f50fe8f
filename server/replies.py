"""Screening the sites' training replies: each reply is sorted into a valid update,
a failure (with its reason) or a budget refusal, and each valid update is decoded
here, once, into the delta state the aggregation sums (:mod:`server.aggregation`).

A reply is valid when it carries no error, exactly one ArrayRecord that decodes to
finite tensors with the global state's names and shapes (and, under client-level DP,
an L2 norm within ``client-dp.clip-norm``), and a MetricRecord whose values are all
finite (epsilon may be inf: a non-private release). Which metrics a site sends is
its own policy's choice (``release-metrics``, :mod:`client.policy`): none is
required, and a withheld one is reported as such. Under secure
aggregation the reply must carry no update at all (it stays masked at the site) and
a ``secagg`` record instead.

A site whose budget would be exceeded replies with a ``refusal`` record instead of
an update; it is reported apart from failures and the round goes on without it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Message

from fedshield.common.schema import Metric, Record, Refusal, SiteKey
from fedshield.models import StateMismatchError, arrays_to_state, check_same_layout
from fedshield.privacy.client_dp import l2_norm

__all__ = ["Screened", "SiteNames", "screen_replies", "site_of"]

logger = logging.getLogger(__name__)

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Screened:
    """Replies sorted into updates to aggregate, failures and budget refusals."""

    valid: list[Message]
    sites: dict[str, dict[str, float]]  # per-site metrics of the valid replies
    failures: list[dict[str, str]]
    refusals: list[dict[str, Any]]
    # the decoded update (delta) of each valid reply, by site, in reply order;
    # empty under secure aggregation (the updates stay masked at the sites)
    deltas: dict[str, State]


def _carried_name(reply: Message) -> str | None:
    records = reply.content.config_records if not reply.has_error() else {}
    site = records.get(Record.SITE)
    if site is not None and SiteKey.NAME in site:
        return str(site[SiteKey.NAME])
    return None


class SiteNames:
    """The site name each node's replies carried, kept for the whole run (and in
    its checkpoint, since node ids outlive a SuperLink restart). A site whose
    machine dies mid-round sends nothing more, and the SuperLink's error for it
    carries no name: without this, its failure would read ``node-<id>``. The
    names are what the sites say of themselves: labels for the operator, not an
    identity the server checks."""

    def __init__(self, known: dict[str, str] | None = None) -> None:
        self._by_node = {int(node): str(name) for node, name in (known or {}).items()}

    def learn(self, reply: Message) -> None:
        """Remember the name ``reply`` carries for its node; a name another node
        already holds is not taken over (the first to use it keeps it)."""
        name = _carried_name(reply)
        node = reply.metadata.src_node_id
        if name is None:
            return
        holder = next((n for n, known in self._by_node.items() if known == name), None)
        if holder is not None and holder != node:
            logger.warning(
                "node %d calls itself %r, the name of node %d; not taken over",
                node,
                name,
                holder,
            )
            return
        self._by_node[node] = name

    def of(self, node_id: int) -> str:
        return self._by_node.get(node_id, f"node-{node_id}")

    def as_dict(self) -> dict[str, str]:
        return {str(node): name for node, name in sorted(self._by_node.items())}


def site_of(reply: Message, names: SiteNames | None = None) -> str:
    """The site name a reply carries; else the name its node gave earlier in the
    run (``names``); else ``node-<id>``."""
    name = _carried_name(reply)
    if name is not None:
        return name
    node = reply.metadata.src_node_id
    return names.of(node) if names is not None else f"node-{node}"


def _refusal(reply: Message, site: str) -> dict[str, Any] | None:
    if reply.has_error() or Record.REFUSAL not in reply.content.config_records:
        return None
    record = dict(reply.content.config_records[Record.REFUSAL])
    return {"site": site, **Refusal.from_record(record).to_record()}


def _metric_values(record: Any) -> dict[str, float]:
    """A reply's metrics as ``{str: float}``; a list or any other value a site
    could put in a MetricRecord is a malformed reply, not a crash of the run."""
    values = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"metric {str(key)!r} is not a number: {value!r}")
        values[str(key)] = float(value)
    return values


def _check_metrics(metrics: dict[str, float]) -> None:
    # a non-private release has epsilon = inf (a site that releases its noise
    # multiplier must then say 0); anything else must be finite
    non_private = metrics.get(Metric.NOISE_MULTIPLIER, 0.0) == 0.0
    for key, value in metrics.items():
        infinite_ok = key in (Metric.EPSILON, Metric.RUN_EPSILON) and non_private
        if math.isinf(value) and value > 0 and infinite_ok:
            continue
        if not math.isfinite(value):
            raise ValueError(f"non-finite metric {key}={value}")
    if metrics.get(Metric.NUM_EXAMPLES, 1.0) <= 0:
        raise ValueError("num-examples must be > 0")


def _decode_update(
    reply: Message, site: str, global_state: State, clip_norm: float | None
) -> State:
    """The reply's delta: finite, the global state's layout, within ``clip_norm``."""
    what = f"The update of {site}"
    (record,) = reply.content.array_records.values()
    delta = arrays_to_state(record, what=what)  # finite values
    check_same_layout(global_state, delta, what)  # names and shapes
    if clip_norm is not None and l2_norm(delta) > clip_norm * (1 + 1e-4):
        raise ValueError(
            f"its update has L2 norm {l2_norm(delta):.6g}, above "
            f"client-dp.clip-norm={clip_norm}: the site did not clip it"
        )
    return delta


def screen_replies(
    replies: list[Message],
    global_state: State,
    *,
    clip_norm: float | None = None,
    secure: bool = False,
    names: SiteNames | None = None,
) -> Screened:
    """Sort replies into valid updates (decoded), failures and refusals.

    ``clip_norm``: reject an update whose L2 norm exceeds it (client-level DP without
    secure aggregation). ``secure``: the replies carry metrics and a ``secagg``
    record, no update. ``names``: the run's site names, for replies that carry
    none (an error the SuperLink made for a lost site).
    """
    out = Screened(valid=[], sites={}, failures=[], refusals=[], deltas={})
    for reply in replies:
        site = site_of(reply, names)
        refusal = _refusal(reply, site)
        if refusal is not None:
            logger.warning("%s refused the round: %s", site, refusal.get("reason"))
            out.refusals.append(refusal)
            continue
        delta = None
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
            if secure and Record.SECAGG not in reply.content.config_records:
                raise ValueError(
                    "no secagg record: the site does not run the fedshield secagg mod"
                )
            if not secure:
                delta = _decode_update(reply, site, global_state, clip_norm)
            values = _metric_values(metrics[0])
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
        if delta is not None:
            out.deltas[site] = delta
    return out
