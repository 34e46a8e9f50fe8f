"""The message schema: every record, metric and key that crosses between a site and
the coordinator, each named once (as Flower names its SecAgg+ protocol's in
``flwr.common.secure_aggregation.secaggplus_constants``). Names are plain ``str``
constants, so that what a record, a summary or a checkpoint holds is a ``str``, never
an object of ours.

A **train** message from the server carries ``arrays`` (the global trainable state)
and the ``config`` record (:class:`TrainKey`). A site replies with one of:

- an update: ``arrays`` (its delta; absent under secure aggregation), ``metrics``
  (:class:`Metric`) and ``site`` (:class:`SiteKey`);
- a refusal: ``refusal`` (:class:`Refusal`, why the site will not train) and
  ``site``, no update.

Under secure aggregation every stage is a train message with a ``secagg`` record
(:class:`SecAggKey`) whose ``stage`` is a :class:`Stage`.

What the coordinator may read is exactly what is listed here: the metrics are
aggregate counts and the site's own privacy accounting, never a record's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "PII_METRIC_PREFIX",
    "Metric",
    "Record",
    "Refusal",
    "SecAggKey",
    "SiteKey",
    "Stage",
    "TrainKey",
    "epsilon_from_json",
    "epsilon_to_json",
    "pii_metric",
]


class Record:
    """Names of the records in a message's ``RecordDict``."""

    ARRAYS = "arrays"  # ArrayRecord: global state (to sites) or a delta (to server)
    CONFIG = "config"  # ConfigRecord: the server's TrainKey values
    METRICS = "metrics"  # MetricRecord: a site's Metric values
    SITE = "site"  # ConfigRecord: the site's SiteKey values
    REFUSAL = "refusal"  # ConfigRecord: a Refusal
    SECAGG = "secagg"  # ConfigRecord: a secure-aggregation stage (SecAggKey)
    MASKED = "masked"  # ArrayRecord: a site's masked input (SecAggKey.MASKED_VECTOR)


class TrainKey:
    """Keys of the server's ``config`` record."""

    SERVER_ROUND = "server-round"  # set by the Flower strategy
    RUN_KEY = "run-key"  # the run's random id (ledger entries name it)
    OUT_DIR = "out-dir"  # the run folder (simulated sites keep their state there)


class SiteKey:
    """Keys of a reply's ``site`` record."""

    NAME = "name"
    DP = "dp"  # whether the site trained with DP-SGD


class Metric:
    """Keys of a reply's ``metrics`` record."""

    NUM_EXAMPLES = "num-examples"
    TRAIN_LOSS = "train-loss"
    STEPS = "steps"
    EPSILON = "epsilon"  # cumulative over the site's budget scope, at DELTA
    RUN_EPSILON = "run-epsilon"  # this run's releases only
    DELTA = "delta"
    MAX_EPSILON = "max-epsilon"  # the site's budget (0 = none)
    NOISE_MULTIPLIER = "noise-multiplier"
    SAMPLE_RATE = "sample-rate"
    ACCURACY = "accuracy"  # federated evaluation
    LOSS = "loss"  # federated evaluation


PII_METRIC_PREFIX = "pii-"


def pii_metric(entity: str) -> str:
    """The metric counting a site's scrubbed findings of ``entity`` (never values)."""
    return f"{PII_METRIC_PREFIX}{entity}"


class Stage(StrEnum):
    """The stages of one secure-aggregation round, in order."""

    SETUP = "setup"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONFIRM = "confirm"
    UNMASK = "unmask"


class SecAggKey:
    """Keys of the ``secagg`` record, by stage."""

    STAGE = "stage"
    SESSION = "session"  # every stage after setup: the round's session id (hex)
    # setup (server -> site)
    PARAMS = "params"
    INDEX = "index"
    # setup (site -> server) and share-keys (server -> site): public keys
    C_PK = "c-pk"
    S_PK = "s-pk"
    NODES = "nodes"
    # share-keys (site -> server) and masked-input (server -> site)
    DEST = "dest"
    CIPHERTEXTS = "ct"
    SOURCES = "src"
    # masked-input (site -> server)
    SATURATED = "saturated"
    NOISE_VARIANCE = "noise-variance"  # a site's Skellam variance (distributed DP)
    MASKED_VECTOR = "y"
    # confirm (server -> site: the view; site -> server: a tag per other survivor)
    # and unmask (server -> site: the tags addressed to it)
    SURVIVORS = "survivors"
    DROPPED = "dropped"
    TAG_PEERS = "tag-peer"
    TAGS = "tag"
    B_OWNERS = "b-owner"
    B_SHARES = "b-share"
    S_OWNERS = "s-owner"
    S_SHARES = "s-share"


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """A site's reply when it will not train a round: why, and its budget."""

    reason: str
    # the budget check's numbers; NaN (left out of the record) for a refusal by
    # the site's policy, which has none
    epsilon_spent: float = math.nan
    epsilon_after: float = math.nan  # had it trained
    max_epsilon: float = math.nan
    delta: float = math.nan

    def to_record(self) -> dict[str, Any]:
        numbers = {
            "epsilon-spent": self.epsilon_spent,
            "epsilon-after": self.epsilon_after,
            "max-epsilon": self.max_epsilon,
            "delta": self.delta,
        }
        return {
            "reason": self.reason,
            **{k: v for k, v in numbers.items() if not math.isnan(v)},
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Refusal:
        """A refusal as a site sent it; missing or malformed fields are reported
        as such, never trusted."""

        def number(key: str) -> float:
            value = record.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return math.nan
            return float(value)

        return cls(
            reason=str(record.get("reason", "no reason given")),
            epsilon_spent=number("epsilon-spent"),
            epsilon_after=number("epsilon-after"),
            max_epsilon=number("max-epsilon"),
            delta=number("delta"),
        )


INFINITE = "inf"


def epsilon_to_json(epsilon: float) -> float | str:
    """An epsilon as stored in JSON files (summary, ledger, audit report): a
    non-private release has epsilon = inf, written as the string ``"inf"``."""
    if math.isinf(epsilon) and epsilon > 0:
        return INFINITE
    return float(epsilon)


def epsilon_from_json(value: Any) -> float:
    """The inverse of :func:`epsilon_to_json`."""
    if value == INFINITE:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f'An epsilon must be a number or "inf". Found {value!r}.')
    return float(value)
