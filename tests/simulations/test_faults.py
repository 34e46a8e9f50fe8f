"""Simulated dropouts and stragglers (``simulation.*``): who drops, where, how
often; a deployed site is never touched; and a secure round with a site
dropping mid-protocol still gives the survivors' mean."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedshield.client.errors import site_errors_mod
from fedshield.client.secagg_mod import secagg_mod
from fedshield.common.schema import Record, SecAggKey, Stage
from fedshield.simulations.faults import SimulatedDropout, simulated_faults_mod
from tests.server.test_secagg_round import (
    GLOBAL,
    NODES,
    RUN_CONFIG,
    SiteGrid,
    _fedavg,
    _round,
    _train,
)

pytestmark = pytest.mark.usefixtures("task_identity")


def _context(partition: int | None, **run: object) -> Context:
    node = {} if partition is None else {"partition-id": partition, "num-partitions": 9}
    return Context(
        run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config=run
    )


def _message(server_round: int, stage: str | None) -> Message:
    content = RecordDict()
    if stage is not None:
        content[Record.SECAGG] = ConfigRecord({SecAggKey.STAGE: stage})
    msg = Message(content, dst_node_id=5, message_type="train")
    msg.metadata.__dict__["_group_id"] = str(server_round)
    return msg


def _answer(msg: Message, context: Context) -> Message:
    return Message(RecordDict(), reply_to=msg)


def _dropped_at(site: int, server_round: int, stages: list[str | None], **run) -> int:
    """The first stage index at which ``site`` fails (len(stages): never)."""
    for i, stage in enumerate(stages):
        try:
            simulated_faults_mod(
                _message(server_round, stage), _context(site, **run), _answer
            )
        except SimulatedDropout:
            return i
    return len(stages)


SECURE = list(Stage)


def test_a_deployed_site_never_drops_whatever_the_run_config_says() -> None:
    for stage in [None, *SECURE]:
        reply = simulated_faults_mod(
            _message(1, stage), _context(None, **{"simulation.dropout": 1.0}), _answer
        )
        assert not reply.has_error()


def test_a_dropped_site_stays_silent_for_the_rest_of_its_round() -> None:
    run = {"simulation.dropout": 1.0}
    seen = Counter()
    for site in range(40):
        for rnd in range(1, 6):
            first = _dropped_at(site, rnd, SECURE, **run)
            assert first < len(SECURE)  # p = 1: every site drops somewhere
            for later in SECURE[first:]:
                with pytest.raises(SimulatedDropout, match="simulation.dropout=1.0"):
                    simulated_faults_mod(
                        _message(rnd, later), _context(site, **run), _answer
                    )
            seen[SECURE[first]] += 1
        assert _dropped_at(site, 1, [None], **run) == 0  # a plain round: at train
    # the stage is drawn uniformly: each of the 5 about 40 of 200 times
    assert set(seen) == set(SECURE) and min(seen.values()) >= 20, seen


def test_dropout_probability_is_p_and_repeatable() -> None:
    run = {"simulation.dropout": 0.3, "seed": 7}
    drops = [
        _dropped_at(site, rnd, [None], **run) == 0
        for site in range(100)
        for rnd in range(1, 21)
    ]
    assert 0.26 < sum(drops) / len(drops) < 0.34
    again = [
        _dropped_at(site, rnd, [None], **run) == 0
        for site in range(100)
        for rnd in range(1, 21)
    ]
    assert drops == again
    other_seed = [
        _dropped_at(site, rnd, [None], **{**run, "seed": 8}) == 0
        for site in range(100)
        for rnd in range(1, 21)
    ]
    assert drops != other_seed


def test_a_straggler_waits_before_its_rounds_first_message_only() -> None:
    run = {"simulation.straggler-fraction": 1.0, "simulation.straggler-delay": 0.3}
    for stage, waits in ((Stage.SETUP, True), (Stage.UNMASK, False), (None, True)):
        start = time.monotonic()
        simulated_faults_mod(_message(1, stage), _context(0, **run), _answer)
        assert (time.monotonic() - start >= 0.3) is waits, stage
    start = time.monotonic()
    simulated_faults_mod(
        _message(1, None),
        _context(0, **{**run, "simulation.straggler-fraction": 0.0}),
        _answer,
    )
    assert time.monotonic() - start < 0.3


class DroppingSites(SiteGrid):
    """SiteGrid's sites behind the real error and fault mods, as simulated sites
    (partition ids) with ``simulation.dropout``."""

    def __init__(self, run_config: dict[str, object]) -> None:
        super().__init__(NODES, run_config=run_config)
        for i, node in enumerate(NODES):
            self.contexts[node].node_config.update(
                {"partition-id": i, "num-partitions": len(NODES)}
            )

    def reply(self, msg: Message, node: int) -> Message:
        def inner(m: Message, ctx: Context) -> Message:
            return simulated_faults_mod(
                m, ctx, lambda m2, c2: secagg_mod(m2, c2, _train)
            )

        return site_errors_mod(msg, self.contexts[node], inner)


def test_a_site_dropping_mid_secure_aggregation_leaves_the_survivors_mean() -> None:
    # a seed where exactly one site drops, after the setup stage
    for seed in range(200):
        run = {**RUN_CONFIG, "simulation.dropout": 0.25, "seed": seed}
        at = {n: _dropped_at(i, 1, SECURE, **run) for i, n in enumerate(NODES)}
        dropped = [n for n, i in at.items() if i < len(SECURE)]
        if len(dropped) == 1 and 1 <= at[dropped[0]] <= 2:  # share-keys / masked
            break
    else:
        pytest.fail("no seed drops exactly one site mid-protocol")
    state, log = _round(DroppingSites(run))
    (lost,) = dropped
    survivors = [n for n in NODES if n != lost]
    assert torch.allclose(state["w"], _fedavg(survivors), atol=1e-6)
    assert sorted(log.sites) == [f"site-{n}" for n in survivors]
    assert any("SimulatedDropout" in f["reason"] for f in log.failures), log.failures
    assert GLOBAL["w"].abs().sum() == 0  # the global state itself is untouched


def test_the_fedshield_clientapp_carries_the_fault_mod() -> None:
    """The wiring: the ClientApp every simulation (and every deployed site) runs
    drops a simulated site when told, and answers a deployed one."""
    from fedshield.simulations.apps import clientapp

    run = {"simulation.dropout": 1.0, "secagg.enabled": False}
    reply = clientapp(_message(1, None), _context(0, **run))
    assert reply.has_error() and "SimulatedDropout" in reply.error.reason
