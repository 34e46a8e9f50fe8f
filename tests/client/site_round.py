"""What the server sends a deployed-style site, and one round of the real
``@app.train`` handler there: a CSV of short labelled reviews at ``data-path``, a
state dir, the global model's trainable state in the message. Shared by the client
tests that read what a site sends."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedshield.client.app import train
from fedshield.models import (
    arrays_to_state,
    load_model,
    state_to_arrays,
    trainable_state,
)
from fedshield.models.config import ModelConfig


def server_message(
    run_config: dict[str, Any],
    *,
    message_type: str,
    config: dict[str, Any],
    node_id: int,
) -> Message:
    """A ``train``/``evaluate`` message as the server builds it: the trainable state
    of the run config's model (the same tiny model on every call) and ``config``."""
    torch.manual_seed(0)
    loaded = load_model(ModelConfig.from_run_config(run_config))
    return Message(
        content=RecordDict(
            {
                "arrays": state_to_arrays(trainable_state(loaded.model)),
                "config": ConfigRecord(config),
            }
        ),
        dst_node_id=node_id,
        message_type=message_type,
    )


# a site that calls ``train`` without its secagg mod must not require secure
# aggregation; it releases every metric so that the tests can read them
PLAIN_SITE = {
    "require-secagg": "false",
    "release-metrics": "all",
    "allow-evaluate": "true",
}


def accepting(run_config: dict[str, Any]) -> dict[str, Any]:
    """Node-config policy keys of a site that accepts exactly what ``run_config``
    asks (secure aggregation, scrubbing) and releases every metric: for tests about
    something other than the site's policy."""
    return {
        "require-secagg": str(bool(run_config["secagg.enabled"])).lower(),
        "pii-mode": run_config["pii.mode"],
        "pii-entities": run_config["pii.entities"],
        "pii-score-threshold": run_config["pii.score-threshold"],
        "pii-spacy-model": run_config["pii.spacy-model"],
        "allow-evaluate": "true",
        "release-metrics": "all",
    }


def site_context(
    run_config: dict[str, Any], node_config: dict[str, Any], *, node_id: int
) -> Context:
    """The site's Flower context: its own node config, the run's config."""
    return Context(
        run_id=1,
        node_id=node_id,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )


def train_reply(
    site_dir: Path, run_config: dict[str, Any], *, records: int = 24
) -> Message:
    """Round 1 at a fresh site in ``site_dir``; the handler's reply."""
    site_dir.mkdir(parents=True, exist_ok=True)
    data = site_dir / "site.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(
            (f"review {i}: {'fine' if i % 2 else 'dull'}", i % 2)
            for i in range(records)
        )
    msg = server_message(
        run_config,
        message_type="train",
        config={"server-round": 1, "run-key": "test"},
        node_id=3,
    )
    node_config = {
        "data-path": str(data),
        "state-dir": str(site_dir / "state"),
        **accepting(run_config),
    }
    return train(msg, site_context(run_config, node_config, node_id=3))


def reply_update(reply: Message) -> dict[str, torch.Tensor]:
    """The update a (non-refusing, plain) reply carries."""
    assert reply.has_content() and "refusal" not in reply.content.config_records
    return arrays_to_state(reply.content.array_records["arrays"], what="update")
