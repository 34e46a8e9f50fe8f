"""A round with secure aggregation through the real client mod and server half,
over an in-memory grid (no Flower runtime)."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedshield.client.secagg_mod import secagg_mod
from fedshield.models import add_delta, flatten_state, state_to_arrays
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.privacy.secagg import SecAggConfig
from fedshield.server.replies import SiteNames
from fedshield.server.rounds import RoundAborted, run_round
from fedshield.server.secagg import secure_sum

from .fedadam import fedadam_reference
from .grid import InMemoryGrid

GLOBAL = OrderedDict(w=torch.zeros(2, 3), b=torch.zeros(3))
RUN_CONFIG = {
    "secagg.enabled": True,
    "secagg.num-shares": 1.0,
    "secagg.threshold": 0.5,
    "secagg.clip-range": 1.0,
    "secagg.quantization-bits": 24,
}
SECAGG = SecAggConfig.from_run_config(RUN_CONFIG)
NODES = [11, 22, 33, 44]


pytestmark = pytest.mark.usefixtures("task_identity")


def _delta(node: int) -> OrderedDict:
    return OrderedDict(w=torch.full((2, 3), 0.01 * node), b=torch.full((3,), -0.5))


def _train(msg: Message, context: Context) -> Message:
    node = context.node_id
    metrics = MetricRecord(
        {
            "num-examples": node,  # weights 11, 22, 33, 44
            "train-loss": 0.5,
            "steps": 3,
            "epsilon": 1.0,
            "delta": 1e-5,
        }
    )
    return Message(
        content=RecordDict(
            {
                "arrays": state_to_arrays(_delta(node)),
                "metrics": metrics,
                "site": ConfigRecord({"name": f"site-{node}"}),
            }
        ),
        reply_to=msg,
    )


def _update_views(node: int) -> list[tuple[np.ndarray, float]]:
    """What ``node``'s update looks like in any form a leak could take, each with
    its tolerance: the float delta times its aggregation weight (FedAvg's
    n_k / max n, or 1 under client-level DP), and the quantized value u the site
    masks (it encodes floor(u) or floor(u) + 1)."""
    q = SECAGG.quantizer
    delta = flatten_state(_delta(node)).double().numpy()
    views = []
    for weight in (node / max(NODES), 1.0):
        x = delta * weight
        u = (np.clip(x, -q.clip_range, q.clip_range) / q.clip_range + 1) / 2 * q.levels
        views += [(x, 1e-6), (u, 1.0)]
    return views


def _assert_no_update_in(reply: Message) -> None:
    """No array in ``reply`` is, even in part, a site's update. A masked value is
    uniform mod 2^27 and lands within 1 of a given u with probability 3 / 2^27, so
    3 matches among the 9 values never happen by chance."""
    for record in reply.content.array_records.values():
        y = np.concatenate([record[k].numpy().ravel() for k in sorted(record)])
        for node in NODES:
            for view, tol in _update_views(node):
                n = min(len(y), len(view))
                near = np.abs(y[:n].astype(np.float64) - view[:n]) <= tol
                assert np.count_nonzero(near) <= 2, (node, y)


class SiteGrid(InMemoryGrid):
    """Delivers each message to its site's real secagg mod; ``fail[stage]`` lists
    nodes that error at that stage, ``tamper`` may rewrite a reply. Every reply the
    server gets passes :func:`_assert_no_update_in` first, whatever then happens to
    the round."""

    def __init__(self, nodes, fail=None, tamper=None, run_config=None) -> None:
        super().__init__(nodes, {**RUN_CONFIG, **(run_config or {})})
        self.fail = fail or {}
        self.tamper = tamper
        self.seen_updates: list[ArrayRecord] = []  # every array the server received

    def reply(self, msg: Message, node: int) -> Message:
        stage = str(msg.content.config_records["secagg"]["stage"])
        if node in self.fail.get(stage, ()):
            return Message(Error(code=1, reason="site went away"), reply_to=msg)
        reply = secagg_mod(msg, self.contexts[node], _train)
        if self.tamper is not None:
            reply = self.tamper(stage, node, reply, msg)
        if reply.has_content():
            _assert_no_update_in(reply)
            self.seen_updates.extend(reply.content.array_records.values())
        return reply


def _round(grid, client_dp=None, min_sites=2):
    return run_round(
        grid=grid,
        strategy=FedAvg(min_train_nodes=1, min_available_nodes=1),
        train_config=ConfigRecord({"run-key": "k"}),
        server_round=1,
        global_state=GLOBAL,
        min_sites=min_sites,
        timeout=5.0,
        progress=lambda done, total: None,
        client_dp=client_dp or ClientDPConfig(),
        secagg=SECAGG,
    )


def _fedavg(nodes) -> torch.Tensor:
    """The mean of a secure round: uniform (sites mask unweighted updates)."""
    return sum(_delta(n)["w"] for n in nodes) / len(nodes)


def test_the_leak_check_catches_a_plain_or_a_quantized_update() -> None:
    delta = _delta(22)
    plain = Message(
        content=RecordDict({"arrays": state_to_arrays(delta)}),
        dst_node_id=22,
        message_type="train",
    )
    weighted = flatten_state(delta).double().numpy() * 22 / max(NODES)
    encoded = SECAGG.quantizer.encode(weighted, modulus=27).values
    quantized = Message(
        content=RecordDict({"masked": ArrayRecord({"y": Array(encoded)})}),
        dst_node_id=22,
        message_type="train",
    )
    for reply in (plain, quantized):
        with pytest.raises(AssertionError):
            _assert_no_update_in(reply)


def test_secure_round_gives_fedavg_of_the_sites_and_never_sees_an_update() -> None:
    grid = SiteGrid(NODES)
    state, log = _round(grid)
    assert torch.allclose(state["w"], _fedavg(NODES), atol=1e-6)
    assert torch.allclose(state["b"], torch.full((3,), -0.5), atol=1e-6)
    assert sorted(log.sites) == [f"site-{n}" for n in NODES]
    assert log.saturated is None and not log.failures  # withheld by the policy
    # the only arrays the server received are the masked vectors, and none of them
    # is, even in part, a site's update (SiteGrid checks every reply)
    assert [list(r) for r in grid.seen_updates] == [["y"]] * len(NODES)
    for ctx in grid.contexts.values():  # the sites forgot the round's secrets
        assert "secagg-session" not in ctx.state.config_records


@pytest.mark.parametrize("stage", ["share-keys", "masked-input", "unmask"])
def test_a_site_dropping_at_any_stage_is_left_out_and_the_round_goes_on(stage) -> None:
    state, log = _round(SiteGrid(NODES, fail={stage: {33}}))
    expected = NODES if stage == "unmask" else [11, 22, 44]
    assert torch.allclose(state["w"], _fedavg(expected), atol=1e-6)
    assert any(f["site"] == "site-33" and stage in f["reason"] for f in log.failures), (
        log.failures
    )


def test_a_site_taking_anothers_name_changes_neither_the_mean_nor_the_names() -> None:
    """The attack: after screening, node 44 names itself site-11 in its
    secure-aggregation replies. Survivors are counted by node, and names are
    learned only from screened updates: the mean is still over 4 sites, site-44
    stays in the log, and a later failure of node 44 is not blamed on site-11."""

    def tamper(stage, node, reply, msg):
        if stage in ("share-keys", "masked-input") and node == 44:
            content = RecordDict(
                {
                    **reply.content.config_records,
                    **reply.content.array_records,
                    "site": ConfigRecord({"name": "site-11"}),
                }
            )
            return Message(content=content, reply_to=msg)
        return reply

    names = SiteNames()
    state, log = run_round(
        grid=SiteGrid(NODES, tamper=tamper),
        strategy=FedAvg(min_train_nodes=1, min_available_nodes=1),
        train_config=ConfigRecord({"run-key": "k"}),
        server_round=1,
        global_state=GLOBAL,
        min_sites=4,  # all four finished: the round must not abort
        timeout=5.0,
        progress=lambda done, total: None,
        client_dp=ClientDPConfig(),
        secagg=SECAGG,
        names=names,
    )
    assert torch.allclose(state["w"], _fedavg(NODES), atol=1e-6)
    assert sorted(log.sites) == [f"site-{n}" for n in NODES]
    assert names.as_dict() == {str(n): f"site-{n}" for n in NODES}


def test_too_few_sites_abort_without_unmasking() -> None:
    grid = SiteGrid(NODES, fail={"masked-input": {11, 22, 33}})
    with pytest.raises(RoundAborted, match="below the threshold"):
        _round(grid)


def test_wrong_vector_length_drops_that_site_only() -> None:
    def tamper(stage, node, reply, msg):
        if stage == "masked-input" and node == 22:
            y = reply.content.array_records["masked"]["y"].numpy()[:-1]
            content = RecordDict(
                {
                    "masked": ArrayRecord({"y": Array(y)}),
                    "secagg": reply.content.config_records["secagg"],
                }
            )
            return Message(content=content, reply_to=msg)
        return reply

    state, log = _round(SiteGrid(NODES, tamper=tamper))
    assert torch.allclose(state["w"], _fedavg([11, 33, 44]), atol=1e-6)
    assert any(
        "site-22" == f["site"] and "expected" in f["reason"] for f in log.failures
    )


def test_secure_round_with_client_level_dp_uses_uniform_weights() -> None:
    """Weights only: noise z = 1e-7 makes the uniform mean visible. The noise itself
    is measured at realistic z in tests/server/test_client_level_noise.py."""
    tiny_noise = ClientDPConfig(enabled=True, clip_norm=10.0, noise_multiplier=1e-7)
    sites = SiteGrid(
        NODES,
        run_config={
            "client-dp.enabled": True,
            "client-dp.clip-norm": 10.0,
            "client-dp.noise-multiplier": 1e-7,
        },
    )
    state, _ = _round(sites, client_dp=tiny_noise)
    uniform = sum(_delta(n)["w"] for n in NODES) / len(NODES)
    assert torch.allclose(state["w"], uniform, atol=1e-5)


@pytest.mark.parametrize("message_type", ["train", "train.default", "train.fetch"])
def test_site_refuses_to_send_its_update_in_the_clear(message_type: str) -> None:
    # Flower routes train and train.<action> to the same train handler
    ctx = SiteGrid([11]).contexts[11]
    plain = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=11,
        message_type=message_type,
    )
    reply = secagg_mod(plain, ctx, _train)
    assert not reply.has_error() and not reply.content.array_records
    assert "in the clear" in str(reply.content.config_records["refusal"]["reason"])


def test_replayed_stage_message_is_rejected_by_the_site() -> None:
    grid = SiteGrid(NODES)
    sent: list[Message] = []
    original = grid.push_messages

    def remember(messages):
        sent.extend(messages)
        return original(messages)

    grid.push_messages = remember
    _round(grid)

    def first(stage: str) -> Message:
        return next(
            m for m in sent if m.content.config_records["secagg"]["stage"] == stage
        )

    # the classic attack: the view again, now calling a site that uploaded dropped,
    # for the shares of its mask key on top of those of its self mask
    record = first("confirm").content.config_records["secagg"]
    survivors = list(record["survivors"])
    forged = ConfigRecord(
        {
            "stage": "confirm",
            "session": record["session"],
            "survivors": survivors[:-1],
            "dropped": survivors[-1:],
        }
    )
    second = Message(
        content=RecordDict({"secagg": forged}), dst_node_id=11, message_type="train"
    )
    reply = secagg_mod(second, grid.contexts[11], _train)
    assert reply.has_error() and not reply.has_content()
    assert "no secure-aggregation round is open" in reply.error.reason
    # an earlier stage's message, replayed
    replay = Message(
        content=first("share-keys").content, dst_node_id=11, message_type="train"
    )
    reply = secagg_mod(replay, grid.contexts[11], _train)
    assert (
        reply.has_error()
        and "no secure-aggregation round is open" in reply.error.reason
    )


def test_fedadam_takes_its_step_from_the_secure_mean() -> None:
    """FedAdam with secure aggregation on: two real secure rounds, and the model is
    FedAdam's update (written out in tests/server/fedadam.py) applied
    to the (uniform) mean of the sites' deltas, which the server only ever
    saw summed under masks. 24-bit quantization moves the mean by ~1e-7."""
    start = OrderedDict(w=torch.full((2, 3), 0.3), b=torch.full((3,), -0.2))
    strategy = FedAdam(min_train_nodes=1, min_available_nodes=1)
    grid, state = SiteGrid(NODES), start
    for server_round in (1, 2):
        state, log = run_round(
            grid=grid,
            strategy=strategy,
            train_config=ConfigRecord({"run-key": "k"}),
            server_round=server_round,
            global_state=state,
            min_sites=2,
            timeout=5.0,
            progress=lambda done, total: None,
            client_dp=ClientDPConfig(),
            secagg=SECAGG,
        )
        assert sorted(log.sites) == [f"site-{n}" for n in NODES] and not log.failures
    mean = {"w": _fedavg(NODES), "b": torch.full((3,), -0.5)}
    for k in start:
        expected = fedadam_reference(
            start[k].double().numpy(), [mean[k].double().numpy()] * 2
        )
        np.testing.assert_allclose(state[k].double().numpy(), expected, atol=1e-5)
    fedavg = start["w"] + 2 * mean["w"]
    assert not torch.allclose(state["w"], fedavg, atol=1e-2)  # a different step
    assert [list(r) for r in grid.seen_updates] == [["y"]] * (2 * len(NODES))


def test_fedavg_of_a_secure_round_is_the_unmasked_sum_over_its_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bit for bit the update before the pipeline: theta + T / m of the secure sum
    over its m survivors."""
    import fedshield.server.rounds as rounds

    sums = []

    def spy(**kwargs):
        sums.append(secure_sum(**kwargs))
        return sums[-1]

    monkeypatch.setattr(rounds, "secure_sum", spy)
    start = OrderedDict(w=torch.full((2, 3), 0.3), b=torch.full((3,), -0.2))
    state, _ = run_round(
        grid=SiteGrid(NODES),
        strategy=FedAvg(min_train_nodes=1, min_available_nodes=1),
        train_config=ConfigRecord({"run-key": "k"}),
        server_round=1,
        global_state=start,
        min_sites=2,
        timeout=5.0,
        progress=lambda done, total: None,
        client_dp=ClientDPConfig(),
        secagg=SECAGG,
    )
    (result,) = sums
    m = float(len(result.survivors))
    old = add_delta(start, {k: v / m for k, v in result.total.items()})
    assert all(torch.equal(state[k], old[k]) for k in start)


def test_client_level_mean_divides_by_the_sites_sampled() -> None:
    """Under client-level DP the mean divides by the sites sampled, a number public
    before any reply: a site that drops counts as a zero update. Dividing by the
    survivors would let the update's scale tell how many made it into the sum.
    (Noise z = 1e-7: the denominator is visible.)"""
    sites = SiteGrid(
        NODES,
        fail={"masked-input": {33}},
        run_config={
            "client-dp.enabled": True,
            "client-dp.clip-norm": 10.0,
            "client-dp.noise-multiplier": 1e-7,
        },
    )
    tiny_noise = ClientDPConfig(enabled=True, clip_norm=10.0, noise_multiplier=1e-7)
    state, log = _round(sites, client_dp=tiny_noise)
    survivors = [11, 22, 44]
    expected = sum(_delta(n)["w"] for n in survivors) / len(NODES)
    assert torch.allclose(state["w"], expected, atol=1e-5)
    assert log.noise_variance is not None and log.noise_variance > 0
