"""A site's federated evaluation follows the run config (``eval.batch-size``), not a
constant of the app."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from flwr.app import Message

from fedshield.client import app as client_app
from fedshield.common.config import ConfigError
from fedshield.models.evaluate import EvalResult

from .site_round import accepting, server_message, site_context

pytestmark = pytest.mark.usefixtures("task_identity")


def _evaluate(tmp_path: Path, run_config: dict) -> Message:
    data = tmp_path / "eval.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(
            [("text", "label"), *((f"r {i}", i % 2) for i in range(6))]
        )
    msg = server_message(
        run_config, message_type="evaluate", config={"server-round": 1}, node_id=5
    )
    node_config = {
        "data-path": str(data),
        "eval-data-path": str(data),
        "state-dir": str(tmp_path / "state"),
        **accepting(run_config),
    }
    context = site_context(run_config, node_config, node_id=5)
    return client_app.evaluate(msg, context)


def test_site_evaluation_uses_the_configured_batch_size(
    tmp_path: Path, tiny_run_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []

    def record(model, dataset, cfg, *, batch_size, device):
        sizes.append(batch_size)
        return EvalResult(accuracy=0.5, loss=0.7, num_examples=len(dataset))

    monkeypatch.setattr(client_app.tasks, "evaluate", record)
    cfg = {**tiny_run_config, "pii.mode": "off", "eval.batch-size": 3}
    reply = _evaluate(tmp_path, cfg)
    assert sizes == [3]
    assert reply.content.metric_records["metrics"]["num-examples"] == 6


def test_a_bad_eval_batch_size_is_explained(tmp_path: Path, tiny_run_config) -> None:
    cfg = {**tiny_run_config, "pii.mode": "off", "eval.batch-size": 0}
    with pytest.raises(ConfigError, match="eval.batch-size"):
        _evaluate(tmp_path, cfg)
