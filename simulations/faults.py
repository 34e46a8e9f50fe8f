"""Realistic failures of simulated sites: dropouts and stragglers.

``simulation.dropout`` = p: each round, each simulated site drops out with
probability p, at a stage drawn uniformly among the messages it gets in a round
(one ``train`` message; under secure aggregation the five stages setup,
share-keys, masked-input, confirm, unmask), and stays silent for the rest of
that round: from that stage on it answers with an error, as a crashed site's
SuperLink does. Dropping after masked-input exercises secure aggregation's
dropout path (the survivors reveal the dropped site's mask shares).

``simulation.straggler-fraction`` = f and ``simulation.straggler-delay`` = d:
each round, each simulated site is slow with probability f, and waits d seconds
before answering the round's first message. Against ``round-timeout`` a
straggler arrives late (the round goes on without it) or in time.

Draws are a hash of (seed, site, round, purpose): repeatable, independent across
sites and rounds. A Flower client mod (``ClientApp(mods=...)``) that acts only on
nodes of Flower's simulation engine (``partition-id`` in the node config): a
deployed site never drops or waits because of a run config.
"""

from __future__ import annotations

import hashlib
import logging
import time

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedshield.common.run_config import RunConfig
from fedshield.common.schema import Record, SecAggKey, Stage

__all__ = ["SimulatedDropout", "simulated_faults_mod"]

logger = logging.getLogger(__name__)

SECURE_STAGES = tuple(Stage)  # in order
_PLAIN = ("train",)


class SimulatedDropout(RuntimeError):
    """A simulated site dropping out of a round (``simulation.dropout``)."""


def _uniform(seed: int, site: int, server_round: int, purpose: str) -> float:
    digest = hashlib.sha256(f"{seed}/{site}/{server_round}/{purpose}".encode())
    return int.from_bytes(digest.digest()[:8], "big") / 2**64


def _round_of(msg: Message) -> int | None:
    """The round of a train-category message: Flower's strategy and the secure
    rounds set the message group to the round number."""
    try:
        return int(msg.metadata.group_id)
    except (TypeError, ValueError):
        return None


def simulated_faults_mod(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    node = context.node_config
    if "partition-id" not in node or "data-path" in node or "eval-data-path" in node:
        return call_next(msg, context)  # a deployed site: never
    if msg.metadata.message_type.split(".", 1)[0] != "train":
        return call_next(msg, context)
    run = RunConfig.parse(dict(context.run_config))
    dropout = float(run["simulation.dropout"])
    slow = float(run["simulation.straggler-fraction"])
    server_round = _round_of(msg)
    if (dropout == 0 and slow == 0) or server_round is None:
        return call_next(msg, context)
    site = int(str(context.node_config["partition-id"]))
    seed = int(run["seed"])
    record = msg.content.config_records.get(Record.SECAGG)
    stages = SECURE_STAGES if record is not None else _PLAIN
    stage = str(record.get(SecAggKey.STAGE, "")) if record is not None else "train"
    position = stages.index(stage) if stage in stages else 0
    if _uniform(seed, site, server_round, "dropout") < dropout:
        at = int(_uniform(seed, site, server_round, "stage") * len(stages))
        if position >= at:
            raise SimulatedDropout(
                f"simulated dropout (simulation.dropout={dropout}) at stage "
                f"{stages[at]!r} of round {server_round}"
            )
    if position == 0 and _uniform(seed, site, server_round, "straggler") < slow:
        delay = float(run["simulation.straggler-delay"])
        logger.info(
            "simulated straggler: waiting %.1f s in round %d", delay, server_round
        )
        time.sleep(delay)
    return call_next(msg, context)
