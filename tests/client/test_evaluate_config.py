"""A site's federated evaluation follows the run config (``eval.batch-size``), not a
constant of the app."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

import client.app
from client.evaluate import EvalResult
from models import load_model, state_to_arrays, trainable_state
from models.config import ConfigError, ModelConfig

pytestmark = pytest.mark.usefixtures("task_identity")


def _evaluate(tmp_path: Path, run_config: dict) -> Message:
    data = tmp_path / "eval.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(
            [("text", "label"), *((f"r {i}", i % 2) for i in range(6))]
        )
    loaded = load_model(ModelConfig.from_run_config(run_config))
    msg = Message(
        content=RecordDict(
            {
                "arrays": state_to_arrays(trainable_state(loaded.model)),
                "config": ConfigRecord({"server-round": 1}),
            }
        ),
        dst_node_id=5,
        message_type="evaluate",
    )
    node_config = {
        "data-path": str(data),
        "eval-data-path": str(data),
        "state-dir": str(tmp_path / "state"),
    }
    context = Context(
        run_id=1,
        node_id=5,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )
    return client.app.evaluate(msg, context)


def test_site_evaluation_uses_the_configured_batch_size(
    tmp_path: Path, tiny_run_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []

    def record(model, dataset, *, batch_size, device):
        sizes.append(batch_size)
        return EvalResult(accuracy=0.5, loss=0.7, num_examples=len(dataset))

    monkeypatch.setattr(client.app, "evaluate_model", record)
    cfg = {**tiny_run_config, "pii.mode": "off", "eval.batch-size": 3}
    reply = _evaluate(tmp_path, cfg)
    assert sizes == [3]
    assert reply.content.metric_records["metrics"]["num-examples"] == 6


def test_a_bad_eval_batch_size_is_explained(tmp_path: Path, tiny_run_config) -> None:
    cfg = {**tiny_run_config, "pii.mode": "off", "eval.batch-size": 0}
    with pytest.raises(ConfigError, match="eval.batch-size"):
        _evaluate(tmp_path, cfg)
