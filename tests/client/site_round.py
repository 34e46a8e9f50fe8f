"""One round of the real ``@app.train`` handler at a deployed-style site, as the
server would send it: a CSV of short labelled reviews at ``data-path``, a state dir,
the global model's trainable state in the message. Shared by the client tests that
read what a site sends."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.app import train
from models import arrays_to_state, load_model, state_to_arrays, trainable_state
from models.config import ModelConfig


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
    torch.manual_seed(0)  # the same global model for every call
    loaded = load_model(ModelConfig.from_run_config(run_config))
    msg = Message(
        content=RecordDict(
            {
                "arrays": state_to_arrays(trainable_state(loaded.model)),
                "config": ConfigRecord({"server-round": 1, "run-key": "test"}),
            }
        ),
        dst_node_id=3,
        message_type="train",
    )
    context = Context(
        run_id=1,
        node_id=3,
        node_config={"data-path": str(data), "state-dir": str(site_dir / "state")},
        state=RecordDict(),
        run_config=run_config,
    )
    return train(msg, context)


def reply_update(reply: Message) -> dict[str, torch.Tensor]:
    """The update a (non-refusing, plain) reply carries."""
    assert reply.has_content() and "refusal" not in reply.content.config_records
    return arrays_to_state(reply.content.array_records["arrays"], what="update")
