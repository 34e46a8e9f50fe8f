from collections import OrderedDict

import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from models import state_to_arrays
from server.rounds import screen_replies

GLOBAL = OrderedDict(w=torch.zeros(2, 3), b=torch.zeros(3))
METRICS = {
    "num-examples": 10,
    "train-loss": 0.5,
    "steps": 3,
    "epsilon": 1.2,
    "delta": 1e-5,
}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1, raising=False)


def _reply(site: str, delta=None, metrics=None) -> Message:
    delta = GLOBAL if delta is None else delta
    return Message(
        content=RecordDict(
            {
                "arrays": state_to_arrays(delta),
                "metrics": MetricRecord(dict(METRICS if metrics is None else metrics)),
                "site": ConfigRecord({"name": site}),
            }
        ),
        dst_node_id=0,
        message_type="train",
    )


def test_valid_replies_pass_with_their_metrics() -> None:
    valid, sites, failures = screen_replies([_reply("a"), _reply("b")], GLOBAL)
    assert len(valid) == 2 and not failures
    assert sites["a"]["epsilon"] == pytest.approx(1.2)


def test_nan_update_is_rejected_and_the_round_goes_on() -> None:
    bad = OrderedDict(w=torch.full((2, 3), float("nan")), b=torch.zeros(3))
    valid, sites, failures = screen_replies([_reply("a"), _reply("bad", bad)], GLOBAL)
    assert list(sites) == ["a"]
    assert failures[0]["site"] == "bad" and "non-finite" in failures[0]["reason"]


def test_wrong_shape_is_rejected() -> None:
    bad = OrderedDict(w=torch.zeros(3, 3), b=torch.zeros(3))
    _, _, failures = screen_replies([_reply("x", bad)], GLOBAL)
    assert "shape" in failures[0]["reason"]


def test_missing_metrics_are_rejected() -> None:
    _, _, failures = screen_replies([_reply("x", metrics={"num-examples": 3})], GLOBAL)
    assert "metrics lack" in failures[0]["reason"]


def test_error_reply_keeps_the_sites_reason() -> None:
    original = _reply("x")
    err = Message(Error(code=0, reason="SiteDataError: no rows"), reply_to=original)
    _, _, failures = screen_replies([err], GLOBAL)
    assert "no rows" in failures[0]["reason"]


def test_duplicate_site_counts_once() -> None:
    valid, _, failures = screen_replies([_reply("a"), _reply("a")], GLOBAL)
    assert len(valid) == 1 and failures[0]["reason"].startswith("duplicate")
