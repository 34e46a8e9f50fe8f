"""The site's policy holds against the coordinator (issue 14): no run config, message
or parameter it sends weakens what the site pinned in its node config.

Each test plays the coordinator against the real site code: the policy checks, the
real secagg client mod in front of a train handler that records whether it ran.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedshield.client.node import NodeConfig
from fedshield.client.policy import PolicyRefused, SitePolicy
from fedshield.client.secagg_mod import secagg_mod
from fedshield.common.config import ConfigError
from fedshield.models import state_to_arrays
from fedshield.privacy.pii import PIIConfig, PIIMode
from fedshield.privacy.secagg import Quantizer, SecAggConfig, SecAggParams

pytestmark = pytest.mark.usefixtures("task_identity")

RUN_CONFIG = {
    "secagg.enabled": True,
    "secagg.num-shares": 1.0,
    "secagg.threshold": 0.5,
    "secagg.clip-range": 1.0,
    "secagg.quantization-bits": 24,
}
UPDATE = OrderedDict(w=torch.full((2, 3), 0.01))


# -- the policy itself -----------------------------------------------------------------


def test_the_default_policy_is_the_safe_one() -> None:
    policy = NodeConfig.parse({}).policy
    assert policy.require_secagg and policy.secagg_min_sites == 2
    assert policy.pii_mode is PIIMode.TAG
    assert "PERSON" in policy.pii_entities and policy.pii_score_threshold == 0.5
    # only the budget's settings leave in the clear by default: epsilon depends on
    # the number of records (through q and the steps), so it stays at the site
    assert policy.released(
        {
            "epsilon": 1.0,
            "delta": 1e-5,
            "train-loss": 0.3,
            "num-examples": 7,
            "pii-PERSON": 2,
        }
    ) == {"delta": 1e-5}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"require-secagg": "maybe"}, "true or false"),
        ({"secagg-min-sites": "1"}, ">= 2"),
        ({"secagg-min-threshold": "two"}, "integer"),
        ({"pii-mode": "none"}, "pii-mode"),
        ({"pii-score-threshold": "1.5"}, r"\[0, 1\]"),
        ({"release-metrics": "epsilon,gradients"}, "gradients"),
        ({"require-secagg-please": "true"}, "Did you mean `require-secagg`"),
    ],
)
def test_a_bad_policy_value_is_refused_with_what_to_write(
    raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        NodeConfig.parse(raw)


def _pii(**kw: Any) -> PIIConfig:
    return PIIConfig(**kw)


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        ({"secagg": SecAggConfig(enabled=False)}, "secagg.enabled=false"),
        ({"pii": _pii(mode=PIIMode.OFF)}, "pii.mode=off"),
        ({"pii": _pii(entities=("PERSON",))}, "leave out"),
        ({"pii": _pii(score_threshold=0.9)}, "scrubs less"),
        ({"pii": _pii(spacy_model="blank_en")}, "NER model"),
    ],
    ids=["secagg-off", "pii-off", "fewer-entities", "higher-threshold", "other-ner"],
)
def test_a_run_config_asking_for_less_is_refused(
    run: dict[str, Any], reason: str
) -> None:
    policy = SitePolicy()
    settings = {"secagg": SecAggConfig(), "pii": PIIConfig(), **run}
    with pytest.raises(PolicyRefused, match=reason):
        policy.check_run(**settings)


def test_a_run_config_may_tighten_the_policy() -> None:
    policy = SitePolicy()
    stricter = PIIConfig(
        mode=PIIMode.MASK,
        entities=(*sorted(policy.pii_entities), "NRP"),
        score_threshold=0.3,
    )
    policy.check_run(secagg=SecAggConfig(), pii=stricter)  # no refusal


def test_a_site_that_says_off_may_train_unscrubbed() -> None:
    policy = SitePolicy.parse({"pii-mode": "off", "require-secagg": "false"})
    policy.check_run(
        secagg=SecAggConfig(enabled=False), pii=PIIConfig(mode=PIIMode.OFF)
    )


def test_release_metrics_all_and_pii_counts() -> None:
    policy = SitePolicy.parse({"release-metrics": "pii,num-examples"})
    sent = policy.released({"pii-PERSON": 3, "num-examples": 9, "train-loss": 0.1})
    assert sent == {"pii-PERSON": 3, "num-examples": 9}
    everything = SitePolicy.parse({"release-metrics": "all"})
    assert everything.released({"train-loss": 0.1, "steps": 3}) == {
        "train-loss": 0.1,
        "steps": 3,
    }


# -- the coordinator against the real client mod ---------------------------------------


class Handler:
    """A train handler that records each call and returns a fixed update."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, msg: Message, context: Context) -> Message:
        self.calls += 1
        return Message(
            content=RecordDict(
                {
                    "arrays": state_to_arrays(UPDATE),
                    "metrics": MetricRecord({"epsilon": 1.0}),
                    "site": ConfigRecord({"name": "site"}),
                }
            ),
            reply_to=msg,
        )


def _context(node_config: dict[str, Any], run_config: dict[str, Any]) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )


def _params(n: int, *, threshold: int, num_shares: int | None = None) -> SecAggParams:
    return SecAggParams(
        session=os.urandom(16),
        nodes=tuple(range(n)),
        num_shares=num_shares or n,
        threshold=threshold,
        quantizer=Quantizer(1.0, 24),
        vector_length=6,
    )


def _setup(params: SecAggParams, server_round: int = 1, index: int = 0) -> Message:
    return Message(
        content=RecordDict(
            {
                "arrays": state_to_arrays(OrderedDict(w=torch.zeros(2, 3))),
                "config": ConfigRecord({"server-round": server_round}),
                "secagg": ConfigRecord(
                    {"stage": "setup", "params": params.to_json(), "index": index}
                ),
            }
        ),
        dst_node_id=7,
        message_type="train",
    )


def _refusal(reply: Message) -> str:
    assert not reply.has_error(), reply.error
    assert not reply.content.array_records  # no update, masked or not
    return str(reply.content.config_records["refusal"]["reason"])


@pytest.mark.parametrize("message_type", ["train", "train.default"])
def test_the_run_config_cannot_switch_secure_aggregation_off(
    message_type: str,
) -> None:
    """The coordinator submits the run with secagg.enabled=false and sends plain
    train messages: the site's policy, not the run config, decides."""
    handler = Handler()
    ctx = _context({}, {**RUN_CONFIG, "secagg.enabled": False})
    plain = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=7,
        message_type=message_type,
    )
    assert "in the clear" in _refusal(secagg_mod(plain, ctx, handler))
    assert handler.calls == 0


def test_a_site_that_does_not_require_secagg_may_train_in_the_clear() -> None:
    handler = Handler()
    ctx = _context({"require-secagg": "false"}, {**RUN_CONFIG, "secagg.enabled": False})
    plain = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=7,
        message_type="train",
    )
    reply = secagg_mod(plain, ctx, handler)
    assert handler.calls == 1 and "arrays" in reply.content.array_records


@pytest.mark.parametrize(
    ("node_config", "params", "reason"),
    [
        ({}, _params(7, threshold=2, num_shares=3), "sparse SecAgg"),
        ({"secagg-min-sites": "5"}, _params(4, threshold=3), "at least 5"),
        ({"secagg-min-threshold": "6"}, _params(7, threshold=5), "at least 6"),
        ({}, _params(5, threshold=3), "too low against 1 colluding"),
    ],
    ids=["sparse-ring", "too-few-sites", "threshold-below-policy", "colluders"],
)
def test_weaker_round_parameters_are_refused_before_the_site_trains(
    node_config: dict[str, Any], params: SecAggParams, reason: str
) -> None:
    handler = Handler()
    ctx = _context(node_config, RUN_CONFIG)
    assert reason in _refusal(secagg_mod(_setup(params), ctx, handler))
    assert handler.calls == 0
    assert "secagg-session" not in ctx.state.config_records


def test_a_threshold_of_half_the_holders_is_refused_by_the_protocol() -> None:
    """A hand-written parameter JSON with t = 2 of 4 (split holders would get both
    secrets): the site refuses it as malformed, before training."""
    good = _params(4, threshold=3)
    lying = good.to_json().replace('"threshold": 3', '"threshold": 2')
    msg = _setup(good)
    msg.content.config_records["secagg"]["params"] = lying
    handler = Handler()
    reply = secagg_mod(msg, _context({}, RUN_CONFIG), handler)
    assert reply.has_error() and "more than half" in reply.error.reason
    assert handler.calls == 0


def test_a_site_trains_once_per_round_whatever_the_server_resends() -> None:
    """A resent setup (same round, or an earlier one) would make the site train
    again in other company; two sums over different subsets give its update."""
    handler = Handler()
    ctx = _context({}, RUN_CONFIG)
    first = secagg_mod(_setup(_params(3, threshold=3)), ctx, handler)
    assert "secagg" in first.content.config_records and handler.calls == 1
    for again in (1, 0):
        reply = secagg_mod(_setup(_params(3, threshold=3), again), ctx, handler)
        assert "already trained in round 1" in _refusal(reply)
    assert handler.calls == 1
    later = secagg_mod(_setup(_params(3, threshold=3), server_round=2), ctx, handler)
    assert "secagg" in later.content.config_records and handler.calls == 2


def test_unmasking_with_fewer_survivors_than_the_policy_is_refused() -> None:
    """The sum of 3 sites, two of them colluding with the server, is the third's
    update: a site whose policy says 4 reveals no share for a 3-site sum, and
    forgets the round's secrets."""
    params = _params(5, threshold=3)
    ctx = _context({"secagg-min-sites": "4"}, RUN_CONFIG)
    _masked_session(ctx, params)
    msg = _unmask_request(params, [0, 1, 2])
    assert "requires at least 4" in _refusal(secagg_mod(msg, ctx, Handler()))
    assert "secagg-session" not in ctx.state.config_records


def _deployed_site(
    tmp_path: Path, tiny_run_config: dict[str, Any], rows: str
) -> tuple[Message, Context]:
    """A round-1 train message and the context of a deployed-style site whose file
    holds ``rows`` (CSV lines after the header), called without its secagg mod."""
    from .site_round import server_message, site_context

    data = tmp_path / "site.csv"
    data.write_text("text,label\n" + rows)
    run_config = {**tiny_run_config, "secagg.enabled": False}
    msg = server_message(
        run_config,
        message_type="train",
        config={"server-round": 1, "run-key": "k"},
        node_id=7,
    )
    node_config = {
        "data-path": str(data),
        "state-dir": str(tmp_path / "state"),
        "require-secagg": "false",  # the handler is called without its mod here
    }
    return msg, site_context(run_config, node_config, node_id=7)


def test_the_train_handler_releases_only_what_the_policy_allows(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    """The real ``@app.train`` at a deployed-style site with the default
    ``release-metrics``: the reply's metrics are the site's own accounting only; no
    epsilon (it depends on the number of records), train loss, example count, step
    count or PII count leaves in the clear."""
    from fedshield.client.app import train

    rows = "".join(f"note {i} by Anna Smith,{i % 2}\n" for i in range(16))
    msg, context = _deployed_site(tmp_path, tiny_run_config, rows)
    reply = train(msg, context)
    assert "arrays" in reply.content.array_records
    sent = set(reply.content.metric_records["metrics"])
    assert sent == {"delta", "max-epsilon"}


def test_a_site_reveals_no_share_below_the_survivors_its_noise_assumes() -> None:
    """Distributed DP: the run asks each site to calibrate its noise share for 4
    survivors (client-dp.min-survivors=4). A sum over 3 would carry 3/4 of the
    accounted noise, so the site refuses to unmask it, though its own policy
    (secagg-min-sites=2) and the threshold (3 of 5) would allow it."""
    params = _params(5, threshold=3)
    run_config = {
        **RUN_CONFIG,
        "client-dp.enabled": True,
        "client-dp.min-survivors": 4,
    }
    ctx = _context({}, run_config)
    _masked_session(ctx, params)
    msg = _unmask_request(params, [0, 1, 2])
    assert "at least 4" in _refusal(secagg_mod(msg, ctx, Handler()))


def test_an_error_that_could_quote_the_sites_data_reaches_the_server_redacted(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    """A row's label that is not a class: the site's error message quotes it (for
    its operator). Through the real ClientApp the server gets the error's type and
    nothing of the row; a settings error keeps its message."""
    from fedshield.client.app import client_app

    from .site_round import server_message, site_context

    msg, context = _deployed_site(
        tmp_path, tiny_run_config, "fine film,0\nsecret diagnosis,Xylophone-42\n"
    )
    app = client_app()
    reply = app(msg, context)
    assert reply.has_error()
    assert "SiteDataError" in reply.error.reason
    assert "Xylophone" not in reply.error.reason
    data = str(tmp_path / "site.csv")
    assert "diagnosis" not in reply.error.reason and data not in reply.error.reason
    bad_run = {**context.run_config, "secagg.threshold": 0.2}
    msg = server_message(
        bad_run, message_type="train", config={"server-round": 1}, node_id=7
    )
    reply = app(msg, site_context(bad_run, dict(context.node_config), node_id=7))
    assert reply.has_error() and "secagg.threshold" in reply.error.reason


def test_a_deployed_sites_ledger_does_not_follow_the_coordinator(
    tmp_path: Path,
) -> None:
    """Without a state-dir, a deployed site's ledger folder is named by what its
    operator set (site-name, else data-path), never by the node id the SuperLink
    assigns or the out-dir a run names: either would open an empty ledger, a
    fresh budget."""
    from fedshield.client.release import site_state_dir

    node = NodeConfig.parse({"data-path": str(tmp_path / "notes.csv")})
    dirs = {
        site_state_dir(node, {"out-dir": out}, node.name(node_id))
        for node_id in (1, 2, 99)
        for out in ("/tmp/a", "/tmp/b", "")
    }
    assert len(dirs) == 1
    other = NodeConfig.parse({"data-path": str(tmp_path / "other.csv")})
    assert site_state_dir(other, {}, "node-1") not in dirs
    named = NodeConfig.parse({"site-name": "ward-7"})
    assert site_state_dir(named, {}, "node-3").name == "ward-7"


def test_evaluate_is_refused_unless_the_site_allows_it(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    """Federated evaluation answers with accuracy on the site's held-out records,
    without DP noise, for any model the coordinator sends (a crafted model makes it
    an oracle on single records). By default the site refuses, before reading a
    record; with allow-evaluate=true it answers."""
    from fedshield.client.app import evaluate

    from .site_round import server_message, site_context

    data = tmp_path / "eval.csv"
    data.write_text("text,label\n" + "".join(f"r {i},{i % 2}\n" for i in range(6)))
    run_config = {**tiny_run_config, "pii.mode": "off"}
    msg = server_message(
        run_config, message_type="evaluate", config={"server-round": 1}, node_id=7
    )
    node_config = {
        "data-path": str(tmp_path / "missing.csv"),  # never read when refused
        "eval-data-path": str(data),
        "state-dir": str(tmp_path / "state"),
        "pii-mode": "off",
    }
    reply = evaluate(msg, site_context(run_config, node_config, node_id=7))
    assert "allow-evaluate" in _refusal(reply)
    assert not reply.content.metric_records
    allowed = {**node_config, "data-path": str(data), "allow-evaluate": "true"}
    reply = evaluate(msg, site_context(run_config, allowed, node_id=7))
    assert reply.content.metric_records["metrics"]["num-examples"] == 6


def test_the_run_may_lower_the_sites_delta_never_raise_it(tmp_path: Path) -> None:
    """A site with max-epsilon=8 and no delta of its own: a run with dp.delta=0.04
    would report (and admit) a much smaller epsilon for the same releases."""
    from fedshield.client.release import DEFAULT_SITE_DELTA, SiteBudget

    node = NodeConfig.parse({"state-dir": str(tmp_path), "max-epsilon": "8"})

    def delta(run_delta: float, node: NodeConfig = node) -> float:
        budget = SiteBudget.resolve(
            node=node, train_config={}, site="s", run_delta=run_delta
        )
        return budget.delta

    assert delta(0.04) == DEFAULT_SITE_DELTA == 1e-5
    assert delta(1e-7) == 1e-7
    own = NodeConfig.parse({"state-dir": str(tmp_path), "delta": "1e-6"})
    assert delta(0.04, own) == 1e-6 and delta(1e-8, own) == 1e-8


def _unmask_request(params: SecAggParams, survivors: list[int]) -> Message:
    return Message(
        content=RecordDict(
            {
                "secagg": ConfigRecord(
                    {
                        "stage": "confirm",
                        "session": params.session.hex(),
                        "survivors": survivors,
                        "dropped": sorted(set(params.nodes) - set(survivors)),
                    }
                )
            }
        ),
        dst_node_id=7,
        message_type="train",
    )


def _masked_session(ctx: Context, params: SecAggParams) -> None:
    from fedshield.privacy.secagg import ClientSession
    from fedshield.privacy.secagg.primitives import new_keypair

    session = ClientSession(0, params)
    mine = session.advertise()
    session.roster = {
        v: mine if v == 0 else (new_keypair().public, new_keypair().public)
        for v in params.nodes
    }
    session.stage = "masked"
    session.masked_with = [v for v in params.nodes if v != 0]
    ctx.state.config_records["secagg-session"] = ConfigRecord(
        {"json": session.to_json()}
    )


def test_a_sum_needs_two_honest_sites_beyond_the_colluders() -> None:
    """3 sites, t = 2, one of them colluding with the coordinator, which calls the
    third honest site dropped after it uploaded: the 'sum' of the target and the
    colluder, minus the colluder's input, is the target's update. By default a
    site guards against one colluder and joins only sums of 3 or more; a site that
    says secagg-max-colluders=0 accepts the 2-site sum (a 2-site federation)."""
    params = _params(3, threshold=2)
    ctx = _context({}, RUN_CONFIG)
    _masked_session(ctx, params)
    reply = secagg_mod(_unmask_request(params, [0, 1]), ctx, Handler())
    assert "at least 3" in _refusal(reply)
    trusting = _context({"secagg-max-colluders": "0"}, RUN_CONFIG)
    _masked_session(trusting, params)
    reply = secagg_mod(_unmask_request(params, [0, 1]), trusting, Handler())
    assert "secagg" in reply.content.config_records  # its shares, for a 2-site sum
    two = _params(2, threshold=2)
    refused = secagg_mod(_setup(two), _context({}, RUN_CONFIG), Handler())
    assert "secagg-max-colluders=1" in _refusal(refused)


def test_noise_shares_are_calibrated_for_the_honest_survivors_only() -> None:
    """A colluding site adds no noise: a site guarding against c colluders adds the
    share of m - c honest sites, m the fewest survivors it reveals shares for."""
    from fedshield.privacy.client_dp import ClientDPConfig
    from fedshield.privacy.distributed_dp import honest_survivors, min_survivors

    cdp = ClientDPConfig(enabled=True, min_survivors=5)
    default = SitePolicy()
    assert (min_survivors(cdp, default), honest_survivors(cdp, default)) == (5, 4)
    wary = SitePolicy.parse({"secagg-max-colluders": "3"})
    assert (min_survivors(cdp, wary), honest_survivors(cdp, wary)) == (5, 2)
    low = ClientDPConfig(enabled=True, min_survivors=2)
    assert (min_survivors(low, wary), honest_survivors(low, wary)) == (5, 2)
