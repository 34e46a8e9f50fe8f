from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedshield.models import state_to_arrays
from fedshield.privacy.secagg import SecAggConfig
from fedshield.server.replies import screen_replies

GLOBAL = OrderedDict(w=torch.zeros(2, 3), b=torch.zeros(3))
METRICS = {
    "num-examples": 10,
    "train-loss": 0.5,
    "steps": 3,
    "epsilon": 1.2,
    "delta": 1e-5,
}


pytestmark = pytest.mark.usefixtures("task_identity")


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
    out = screen_replies([_reply("a"), _reply("b")], GLOBAL)
    assert len(out.valid) == 2 and not out.failures and not out.refusals
    assert out.sites["a"]["epsilon"] == pytest.approx(1.2)


def test_nan_update_is_rejected_and_the_round_goes_on() -> None:
    bad = OrderedDict(w=torch.full((2, 3), float("nan")), b=torch.zeros(3))
    out = screen_replies([_reply("a"), _reply("bad", bad)], GLOBAL)
    assert list(out.sites) == ["a"]
    assert out.failures[0]["site"] == "bad"
    assert "non-finite" in out.failures[0]["reason"]


def test_wrong_shape_is_rejected() -> None:
    bad = OrderedDict(w=torch.zeros(3, 3), b=torch.zeros(3))
    failures = screen_replies([_reply("x", bad)], GLOBAL).failures
    assert "shape" in failures[0]["reason"]


def test_metrics_a_site_withholds_are_not_required() -> None:
    """Which metrics leave a site is its policy's choice (release-metrics): a reply
    with none of them is valid, and the round's mean train loss is then unknown."""
    from fedshield.server.rounds import mean_train_loss

    out = screen_replies([_reply("x", metrics={}), _reply("y")], GLOBAL)
    assert list(out.sites) == ["x", "y"] and not out.failures
    assert np.isnan(mean_train_loss(out.sites))
    assert mean_train_loss({"y": out.sites["y"]}) == out.sites["y"]["train-loss"]


def test_error_reply_keeps_the_sites_reason() -> None:
    original = _reply("x")
    err = Message(Error(code=0, reason="SiteDataError: no rows"), reply_to=original)
    failures = screen_replies([err], GLOBAL).failures
    assert "no rows" in failures[0]["reason"]


def test_duplicate_site_counts_once() -> None:
    out = screen_replies([_reply("a"), _reply("a")], GLOBAL)
    assert len(out.valid) == 1 and out.failures[0]["reason"].startswith("duplicate")


def _refusal(site: str) -> Message:
    record = ConfigRecord(
        {
            "reason": "the round would raise epsilon from 7.9 to 8.4",
            "epsilon-spent": 7.9,
            "epsilon-after": 8.4,
            "max-epsilon": 8.0,
            "delta": 1e-5,
        }
    )
    return Message(
        content=RecordDict({"refusal": record, "site": ConfigRecord({"name": site})}),
        dst_node_id=0,
        message_type="train",
    )


def test_refusal_is_reported_apart_from_failures() -> None:
    out = screen_replies([_reply("a"), _refusal("b")], GLOBAL)
    assert list(out.sites) == ["a"] and not out.failures
    assert out.refusals == [
        {
            "site": "b",
            "reason": "the round would raise epsilon from 7.9 to 8.4",
            "epsilon-spent": 7.9,
            "epsilon-after": 8.4,
            "max-epsilon": 8.0,
            "delta": 1e-5,
        }
    ]


def test_non_private_release_may_report_infinite_epsilon_only() -> None:
    nodp = dict(METRICS, epsilon=float("inf"), **{"noise-multiplier": 0.0})
    assert list(screen_replies([_reply("a", metrics=nodp)], GLOBAL).sites) == ["a"]
    lying = dict(METRICS, epsilon=float("inf"), **{"noise-multiplier": 0.8})
    failures = screen_replies([_reply("a", metrics=lying)], GLOBAL).failures
    assert "non-finite metric epsilon" in failures[0]["reason"]


def test_unclipped_update_is_rejected_under_client_level_dp() -> None:
    big = OrderedDict(w=torch.ones(2, 3), b=torch.zeros(3))  # norm sqrt(6)
    out = screen_replies([_reply("a", big)], GLOBAL, clip_norm=1.0)
    assert "did not clip" in out.failures[0]["reason"]
    assert screen_replies([_reply("a", big)], GLOBAL, clip_norm=2.5).valid


class FakeGrid:
    """Answers each pushed message with ``answer(node_id, message)``."""

    def __init__(self, nodes, answer) -> None:
        self.nodes, self.answer, self.pending = list(nodes), answer, {}

    def get_node_ids(self):
        return self.nodes

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"
            self.pending[f"m{i}"] = msg
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, ids):
        out = []
        for mid in ids:
            msg = self.pending.pop(mid)
            reply = self.answer(msg.metadata.dst_node_id, msg)
            reply.metadata.__dict__["_reply_to_message_id"] = mid
            out.append(reply)
        return out


def _run(grid, client_dp, strategy=None) -> tuple:
    """One plain round on ``grid`` (``strategy``: FedAvg unless given)."""
    from flwr.serverapp.strategy import FedAvg

    from fedshield.server.rounds import run_round

    return run_round(
        grid=grid,
        strategy=strategy or FedAvg(min_train_nodes=1, min_available_nodes=1),
        train_config=ConfigRecord({"run-key": "k"}),
        server_round=1,
        global_state=GLOBAL,
        min_sites=2,
        timeout=5.0,
        progress=lambda done, total: None,
        client_dp=client_dp,
        secagg=SecAggConfig(enabled=False),
    )


def test_round_goes_on_without_the_site_that_refused() -> None:
    from fedshield.privacy.client_dp import ClientDPConfig

    def answer(node: int, msg: Message) -> Message:
        if node == 3:
            return _refusal("site-3")
        delta = OrderedDict(w=torch.full((2, 3), float(node)), b=torch.zeros(3))
        return _reply(f"site-{node}", delta)

    state, log = _run(FakeGrid([1, 2, 3], answer), ClientDPConfig())
    assert log.sampled == 3 and log.available == 3
    assert sorted(log.sites) == ["site-1", "site-2"]
    assert [r["site"] for r in log.refusals] == ["site-3"]
    assert torch.allclose(state["w"], torch.full((2, 3), 1.5))  # mean of 1 and 2


def test_all_refusals_abort_the_round_with_every_reason() -> None:
    from fedshield.privacy.client_dp import ClientDPConfig
    from fedshield.server.rounds import RoundAborted

    grid = FakeGrid([1, 2], lambda node, msg: _refusal(f"site-{node}"))
    with pytest.raises(RoundAborted, match="site-1: the round would raise"):
        _run(grid, ClientDPConfig())


def test_client_level_dp_adds_noise_to_the_uniform_mean() -> None:
    from fedshield.privacy.client_dp import ClientDPConfig

    def answer(node: int, msg: Message) -> Message:
        delta = OrderedDict(w=torch.full((2, 3), 0.1 * node), b=torch.zeros(3))
        metrics = dict(METRICS, **{"num-examples": 10 * node})  # ignored: uniform
        return _reply(f"site-{node}", delta, metrics)

    cdp = ClientDPConfig(enabled=True, clip_norm=1.0, noise_multiplier=1e-6)
    state, log = _run(FakeGrid([1, 2], answer), cdp)
    assert torch.allclose(state["w"], torch.full((2, 3), 0.15), atol=1e-4)
    noisy = ClientDPConfig(enabled=True, clip_norm=1.0, noise_multiplier=1.0)
    state, _ = _run(FakeGrid([1, 2], answer), noisy)
    assert not torch.allclose(state["b"], torch.zeros(3), atol=1e-3)


def test_screening_decodes_each_update_once_and_the_strategy_sees_only_the_mean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the pipeline, screening decoded every update and FedAvg decoded it
    again. Now screening hands its decoded deltas on, and the strategy's
    aggregate_train gets one reply: the mean model."""
    from flwr.serverapp.strategy import FedAvg

    import fedshield.server.aggregation as aggregation
    import fedshield.server.replies as replies
    from fedshield.privacy.client_dp import ClientDPConfig
    from fedshield.server.rounds import run_round

    sent: list = []
    decoded: list[int] = []

    def answer(node: int, msg: Message) -> Message:
        delta = OrderedDict(w=torch.full((2, 3), float(node)), b=torch.zeros(3))
        reply = _reply(f"site-{node}", delta)
        sent.append(reply.content.array_records["arrays"])
        return reply

    for module in (replies, aggregation):
        real = module.arrays_to_state

        def counting(record, *, what="The update", real=real):
            decoded.append(id(record))
            return real(record, what=what)

        monkeypatch.setattr(module, "arrays_to_state", counting)
    strategy = FedAvg(min_train_nodes=1, min_available_nodes=1)
    seen: list[list[Message]] = []
    aggregate_train = strategy.aggregate_train

    def spy(server_round, replies_):
        seen.append(list(replies_))
        return aggregate_train(server_round, seen[-1])

    monkeypatch.setattr(strategy, "aggregate_train", spy)
    state, _ = run_round(
        grid=FakeGrid([1, 2, 3], answer),
        strategy=strategy,
        train_config=ConfigRecord({"run-key": "k"}),
        server_round=1,
        global_state=GLOBAL,
        min_sites=2,
        timeout=5.0,
        progress=lambda done, total: None,
        client_dp=ClientDPConfig(),
        secagg=SecAggConfig(enabled=False),
    )
    assert len(sent) == 3
    assert all(decoded.count(id(record)) == 1 for record in sent)
    assert len(decoded) == 4  # the three updates, and the strategy's new model
    ((mean_model,),) = seen  # one call, one reply: theta + the weighted mean
    assert "site" not in mean_model.content.config_records
    assert torch.allclose(state["w"], torch.full((2, 3), 2.0))  # examples equal


def test_screening_hands_on_the_decoded_deltas_by_site() -> None:
    delta = OrderedDict(w=torch.full((2, 3), 0.5), b=torch.ones(3))
    out = screen_replies([_reply("a", delta), _refusal("b")], GLOBAL)
    assert list(out.deltas) == ["a"]
    assert all(torch.equal(out.deltas["a"][k], delta[k]) for k in delta)


def test_fedadam_with_client_level_dp_steps_from_the_noisy_uniform_mean() -> None:
    """The noise (z = 1e-7 here, so the step is checkable) goes on the sum; FedAdam
    steps from the uniform mean, not the example-weighted one."""
    from flwr.serverapp.strategy import FedAdam

    from fedshield.privacy.client_dp import ClientDPConfig
    from fedshield.server.rounds import run_round

    from .fedadam import fedadam_reference

    def delta(node: int) -> OrderedDict:
        return OrderedDict(
            w=torch.full((2, 3), 0.1 * node), b=torch.full((3,), -0.05 * node)
        )

    def answer(node: int, msg: Message) -> Message:
        metrics = dict(METRICS, **{"num-examples": 10 * node})  # ignored: uniform
        return _reply(f"site-{node}", delta(node), metrics)

    start = OrderedDict(w=torch.full((2, 3), 0.4), b=torch.full((3,), 0.1))
    cdp = ClientDPConfig(enabled=True, clip_norm=1.0, noise_multiplier=1e-7)
    state, _ = run_round(
        grid=FakeGrid([1, 2], answer),
        strategy=FedAdam(min_train_nodes=1, min_available_nodes=1),
        train_config=ConfigRecord({"run-key": "k"}),
        server_round=1,
        global_state=start,
        min_sites=2,
        timeout=5.0,
        progress=lambda done, total: None,
        client_dp=cdp,
        secagg=SecAggConfig(enabled=False),
    )
    for k in start:
        uniform = ((delta(1)[k] + delta(2)[k]) / 2).double().numpy()
        expected = fedadam_reference(start[k].double().numpy(), [uniform])
        assert np.allclose(state[k].double().numpy(), expected, atol=1e-5)
    weighted = ((delta(1)["w"] + 2 * delta(2)["w"]) / 3).double().numpy()
    if_weighted = fedadam_reference(start["w"].double().numpy(), [weighted])
    assert not np.allclose(state["w"].double().numpy(), if_weighted, atol=1e-4)


def test_metric_names_are_kept_as_plain_strings() -> None:
    """A site may key its metrics with a StrEnum; the server keeps plain strings, so
    the round's log stays loadable from a checkpoint (torch.load weights_only)."""
    from enum import StrEnum

    Key = StrEnum("Key", {k.upper(): k for k in METRICS})
    out = screen_replies(
        [_reply("a", metrics={Key(k): v for k, v in METRICS.items()})], GLOBAL
    )
    assert all(type(k) is str for k in out.sites["a"])


def test_a_hostile_reply_is_a_failure_of_that_site_not_a_crash_of_the_run() -> None:
    listed = _reply("a", metrics=dict(METRICS, **{"train-loss": [1.0, 2.0]}))
    out = screen_replies([listed, _reply("b")], GLOBAL)
    assert list(out.sites) == ["b"]
    assert (
        out.failures[0]["site"] == "a" and "not a number" in out.failures[0]["reason"]
    )


def test_a_refusal_carries_only_the_schemas_fields() -> None:
    record = {"reason": "no", "epsilon-spent": "lots", "injected": "x" * 100}
    reply = Message(
        content=RecordDict(
            {"refusal": ConfigRecord(record), "site": ConfigRecord({"name": "b"})}
        ),
        dst_node_id=0,
        message_type="train",
    )
    (refusal,) = screen_replies([reply], GLOBAL).refusals
    assert "injected" not in refusal and refusal["reason"] == "no"
    assert "epsilon-spent" not in refusal  # malformed: left out, never trusted


def test_site_names_are_printed_as_text_never_as_markup() -> None:
    from rich.console import Console

    from fedshield.server.report import round_table
    from fedshield.server.rounds import RoundLog

    log = RoundLog(server_round=1)
    log.failures = [{"site": "[/]", "reason": "[bold]x[/]"}]
    console = Console(record=True, width=200)
    console.print(round_table(log, 3))  # a MarkupError would end the run here
    assert "[/]" in console.export_text()


def test_a_round_of_sites_that_withhold_their_metrics_is_reported_and_summarised(
    tmp_path,
) -> None:
    """Deployed sites release only what their policy lists: the round table, the
    summary and the final report show 'withheld' (null), never a crash or a 0."""
    from rich.console import Console

    from fedshield.server.report import round_table
    from fedshield.server.rounds import RoundLog, mean_train_loss
    from fedshield.server.summary import build_summary

    sites = {"a": {"epsilon": 1.5, "delta": 1e-5}, "b": {}}
    log = RoundLog(server_round=1, sites=sites, accuracy=0.6, loss=0.7)
    log.train_loss = mean_train_loss(sites)
    console = Console(record=True, width=200)
    console.print(round_table(log, 3))
    text = console.export_text()
    assert "withheld" in text and "1.500" in text
    summary = build_summary(
        run_config={},
        run_key="k",
        initial={"accuracy": 0.5, "loss": 0.7},
        rounds=[log.as_dict()],
        status="running",
        dp_enabled=True,
        accountant="rdp",
    )
    assert summary["sites"]["a"]["epsilon"] == 1.5
    assert summary["sites"]["b"]["epsilon"] is None
    # the CLI reads the rounds back from summary.json (NaN written as null)
    import json

    from fedshield.common.storage import json_safe

    again = RoundLog.from_dict(json.loads(json.dumps(json_safe(log.as_dict()))))
    console.print(round_table(again, 3))
    assert "withheld" in console.export_text()
    assert summary["sites"]["b"]["examples"] is None
