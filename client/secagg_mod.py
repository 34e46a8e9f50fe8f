"""The site half of secure aggregation: a Flower client mod around ``@app.train``.

Every stage arrives as a ``train`` message carrying a ``secagg`` ConfigRecord whose
``stage`` says what to do (the server half is :mod:`server.secagg`; the protocol is
:mod:`privacy.secagg`):

``setup``
    The message is a normal train message (global model, config) plus the round's
    protocol parameters and this site's participant index. The site checks the
    parameters against its own policy (:mod:`client.policy`) *before* it trains:
    every site a holder of every other (the sparse SecAgg+ ring lets a server that
    controls dropouts isolate a site), a threshold above half of the holders and at
    least the policy's, at least its minimum number of sites, and one training per
    (run, round), rounds increasing. Then the mod lets the train handler run
    (budget check, DP-SGD, ledger entry, client-level clipping); a refusal or error
    goes back unchanged. Otherwise the mod keeps the update *on the site*
    (``context.state``), and replies with the metrics and two fresh public keys; the
    update itself is not sent.
``share-keys``
    Shamir shares of this site's self-mask seed and mask key, encrypted to each
    holder.
``masked-input``
    The update (unweighted), quantized, plus all masks mod 2^k; refused when fewer
    than t - 1 other sites' shares arrived (a site masked by its self mask alone
    would be unmasked by the server's t shares of it). With client-level DP on, the
    site first adds its share of integer Skellam noise
    (:mod:`privacy.distributed_dp`), calibrated so that ``min-survivors`` sites
    carry the accounted noise, so the server never unmasks a noise-free sum.
``unmask``
    Shares that let the server remove the masks from the *sum*, never when fewer
    survivors than the threshold or the policy's minimum; then the site forgets the
    round's secrets and update.

The site's policy, not the run config, decides whether secure aggregation is
required: a train-category message without a ``secagg`` record is then refused, so
the site never sends its update in the clear. Whatever ends a round (an error, a
refusal, an abort at any stage), the round's secrets and update are wiped from
``context.state``.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedshield.common.schema import Record, Refusal, SecAggKey, Stage, TrainKey
from fedshield.models import arrays_to_state, flatten_state
from fedshield.models.records import (
    read_bytes_list,
    read_int,
    read_int_list,
)
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.privacy.distributed_dp import (
    add_noise,
    honest_survivors,
    min_survivors,
    sample_skellam,
    site_noise,
)
from fedshield.privacy.secagg import (
    ClientSession,
    ProtocolError,
    SecAggAborted,
    SecAggParams,
)

from .errors import public_reason, refusal_reply
from .policy import SATURATED, PolicyRefused, SitePolicy
from .site import SiteFiles, SiteSource

__all__ = ["secagg_mod", "site_secagg_mod"]

logger = logging.getLogger(__name__)

_SESSION = "secagg-session"
_INPUT = "secagg-input"
_TRAINED = "secagg-trained"  # the last round this site trained in, per run
ERROR_CODE = 7301  # fedshield secure aggregation


def _error(msg: Message, reason: str) -> Message:
    return Message(Error(code=ERROR_CODE, reason=reason), reply_to=msg)


def _reply(msg: Message, **records: ConfigRecord | ArrayRecord) -> Message:
    return Message(content=RecordDict(dict(records)), reply_to=msg)


def _forget(context: Context) -> None:
    """Wipe the round's secrets and the site's update from the site's state."""
    context.state.config_records.pop(_SESSION, None)
    context.state.array_records.pop(_INPUT, None)


def _check_round(msg: Message, context: Context) -> int:
    """The message's round; refused unless above every round this site trained in
    during this run (a resent setup would make it train again on other sites'
    company, and the difference of two sums is its update)."""
    config = msg.content.config_records.get(Record.CONFIG)
    raw = config.get(TrainKey.SERVER_ROUND) if config is not None else None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ProtocolError(f"the train message's server-round is {raw!r}")
    stored = context.state.config_records.get(_TRAINED)
    last = int(str(stored["round"])) if stored is not None else None
    if last is not None and raw <= last:
        raise PolicyRefused(
            f"this site already trained in round {last} of this run; it "
            f"trains once per round, rounds increasing (asked for round {raw})"
        )
    return raw


def _check_params(params: SecAggParams, policy: SitePolicy) -> None:
    n = len(params.nodes)
    if params.holders_count < n:
        raise PolicyRefused(
            f"the round uses a sparse SecAgg+ graph ({params.holders_count} holders "
            f"of {n} sites): a server that controls dropouts can unmask a site's "
            "update in it, so this site only takes part when every site holds shares "
            "of every other (secagg.num-shares=1.0)"
        )
    policy.check_secagg(params)


def _session(context: Context, record: ConfigRecord) -> ClientSession:
    stored = context.state.config_records.get(_SESSION)
    if stored is None:
        raise ProtocolError(
            "no secure-aggregation round is open at this site (the setup message "
            "never arrived, or the site restarted mid-round)"
        )
    session = ClientSession.from_json(str(stored["json"]))
    if bytes.fromhex(str(record.get(SecAggKey.SESSION, ""))) != session.params.session:
        raise ProtocolError(
            "the message belongs to another secure-aggregation round (replayed?)"
        )
    return session


def _save(context: Context, session: ClientSession) -> None:
    context.state.config_records[_SESSION] = ConfigRecord({"json": session.to_json()})


def _setup(
    msg: Message, context: Context, call_next: ClientAppCallable, policy: SitePolicy
) -> Message:
    record = msg.content.config_records[Record.SECAGG]
    _forget(context)  # a new round replaces any half-finished one
    params = SecAggParams.from_json(str(record[SecAggKey.PARAMS]))
    index = read_int(record, SecAggKey.INDEX)
    params.check_node(index, "setup")
    _check_params(params, policy)
    server_round = _check_round(msg, context)
    reply = call_next(msg, context)
    if reply.has_error() or Record.REFUSAL in reply.content.config_records:
        return reply  # not taking part: nothing to mask
    context.state.config_records[_TRAINED] = ConfigRecord({"round": server_round})
    arrays = list(reply.content.array_records.values())
    if len(arrays) != 1:
        return _error(msg, f"the train handler returned {len(arrays)} ArrayRecords")
    vector = flatten_state(arrays_to_state(arrays[0], what="This site's update"))
    if vector.numel() != params.vector_length:
        return _error(
            msg,
            f"this site's update has {vector.numel()} values, the round expects "
            f"{params.vector_length}: site and server run different models",
        )
    session = ClientSession(index, params)
    c_pk, s_pk = session.advertise()
    _save(context, session)
    context.state.array_records[_INPUT] = ArrayRecord(
        {"x": Array(vector.numpy().astype(np.float32))}
    )
    content = {
        k: v for k, v in reply.content.items() if k not in reply.content.array_records
    }
    content[Record.SECAGG] = ConfigRecord(
        {SecAggKey.STAGE: Stage.SETUP, SecAggKey.C_PK: c_pk, SecAggKey.S_PK: s_pk}
    )
    return Message(content=RecordDict(content), reply_to=msg)


def _share_keys(msg: Message, context: Context) -> Message:
    record = msg.content.config_records[Record.SECAGG]
    session = _session(context, record)
    nodes = read_int_list(record, SecAggKey.NODES)
    c_keys = read_bytes_list(record, SecAggKey.C_PK)
    s_keys = read_bytes_list(record, SecAggKey.S_PK)
    if not len(nodes) == len(c_keys) == len(s_keys):
        raise ProtocolError("the roster's node and key lists differ in length")
    roster = {
        n: (bytes(c), bytes(s)) for n, c, s in zip(nodes, c_keys, s_keys, strict=True)
    }
    ciphertexts = session.share_keys(roster)
    _save(context, session)
    dests = sorted(ciphertexts)
    return _reply(
        msg,
        secagg=ConfigRecord(
            {
                SecAggKey.STAGE: Stage.SHARE_KEYS,
                SecAggKey.DEST: dests,
                SecAggKey.CIPHERTEXTS: [ciphertexts[d] for d in dests],
            }
        ),
    )


def _masked_input(msg: Message, context: Context, policy: SitePolicy) -> Message:
    record = msg.content.config_records[Record.SECAGG]
    session = _session(context, record)
    sources = read_int_list(record, SecAggKey.SOURCES)
    cts = read_bytes_list(record, SecAggKey.CIPHERTEXTS)
    if len(sources) != len(cts) or len(set(sources)) != len(sources):
        raise ProtocolError("the inbox's sender and ciphertext lists do not pair")
    stored = context.state.array_records.get(_INPUT)
    if stored is None:
        raise ProtocolError("this site's update for the round is missing")
    x = stored["x"].numpy().astype(np.float64)
    del context.state.array_records[_INPUT]  # masked below: no later stage needs it
    p = session.params
    encoded = p.quantizer.encode(x, modulus=p.modulus_bits)
    values = encoded.values
    status = ConfigRecord({SecAggKey.STAGE: Stage.MASKED_INPUT})
    client_dp = ClientDPConfig.from_run_config(dict(context.run_config))
    if client_dp.enabled:  # distributed DP: noise before masking, never after
        noise = site_noise(client_dp, p, honest_survivors(client_dp, policy))
        values = add_noise(
            values,
            sample_skellam(p.vector_length, variance=noise.site_variance),
            modulus_bits=p.modulus_bits,
        )
        status[SecAggKey.NOISE_VARIANCE] = noise.site_variance
    masked = session.masked_input(dict(zip(sources, cts, strict=True)), values)
    _save(context, session)
    if encoded.saturated:
        logger.warning(
            "%d of %d update values exceeded secagg.clip-range=%g and were clipped",
            encoded.saturated,
            x.size,
            p.quantizer.clip_range,
        )
    if policy.releases(SATURATED):  # how many values the clipping touched
        status[SecAggKey.SATURATED] = encoded.saturated
    return _reply(
        msg,
        masked=ArrayRecord({SecAggKey.MASKED_VECTOR: Array(masked)}),
        secagg=status,
    )


def _confirm(msg: Message, context: Context, policy: SitePolicy) -> Message:
    record = msg.content.config_records[Record.SECAGG]
    session = _session(context, record)
    survivors = set(read_int_list(record, SecAggKey.SURVIVORS))
    dropped = set(read_int_list(record, SecAggKey.DROPPED))
    client_dp = ClientDPConfig.from_run_config(dict(context.run_config))
    policy.check_survivors(
        len(survivors),
        needed=min_survivors(client_dp, policy) if client_dp.enabled else 0,
    )
    tags = session.confirm(survivors, dropped)
    _save(context, session)
    peers = sorted(tags)
    return _reply(
        msg,
        secagg=ConfigRecord(
            {
                SecAggKey.STAGE: Stage.CONFIRM,
                SecAggKey.TAG_PEERS: peers,
                SecAggKey.TAGS: [tags[w] for w in peers],
            }
        ),
    )


def _unmask(msg: Message, context: Context) -> Message:
    record = msg.content.config_records[Record.SECAGG]
    session = _session(context, record)
    peers = read_int_list(record, SecAggKey.TAG_PEERS)
    tags = read_bytes_list(record, SecAggKey.TAGS)
    if len(peers) != len(tags) or len(set(peers)) != len(peers):
        raise ProtocolError("the tags' sender and value lists do not pair")
    try:
        b_shares, s_shares = session.unmask(dict(zip(peers, tags, strict=True)))
    finally:
        _forget(context)  # the round ends here for this site, whatever happens
    return _reply(
        msg,
        secagg=ConfigRecord(
            {
                SecAggKey.STAGE: Stage.UNMASK,
                SecAggKey.B_OWNERS: sorted(b_shares),
                SecAggKey.B_SHARES: [b_shares[u] for u in sorted(b_shares)],
                SecAggKey.S_OWNERS: sorted(s_shares),
                SecAggKey.S_SHARES: [s_shares[u] for u in sorted(s_shares)],
            }
        ),
    )


def site_secagg_mod(sites: SiteSource) -> Mod:
    """The secure-aggregation mod of a ClientApp whose sites' settings come from
    ``sites`` (their policy decides, not the run config)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        # Flower routes ``train`` and ``train.<action>`` (``train.default``
        # included) to the train handler: every train-category message is guarded
        if msg.metadata.message_type.split(".", 1)[0] != MessageType.TRAIN:
            return call_next(msg, context)
        stage = ""
        try:
            node = sites.node_config(
                dict(context.node_config), dict(context.run_config)
            )
            policy = node.policy
            record = msg.content.config_records.get(Record.SECAGG)
            if record is None:
                if policy.require_secagg:
                    raise PolicyRefused(
                        "this site requires secure aggregation (node config "
                        "require-secagg=true) and the server sent a plain train "
                        "message; the site does not send its update in the clear. "
                        "Run the fedshield ServerApp with secagg.enabled=true."
                    )
                return call_next(msg, context)
            stage = str(record.get(SecAggKey.STAGE, ""))
            if stage == Stage.SETUP:
                return _setup(msg, context, call_next, policy)
            if stage == Stage.SHARE_KEYS:
                return _share_keys(msg, context)
            if stage == Stage.MASKED_INPUT:
                return _masked_input(msg, context, policy)
            if stage == Stage.CONFIRM:
                return _confirm(msg, context, policy)
            if stage == Stage.UNMASK:
                return _unmask(msg, context)
            raise ProtocolError(f"unknown secure-aggregation stage {stage!r}")
        except PolicyRefused as refused:
            _forget(context)
            site = f"node-{context.node_id}"
            return refusal_reply(msg, site, Refusal(reason=str(refused)))
        except (ProtocolError, SecAggAborted, KeyError, TypeError, ValueError) as err:
            logger.warning("Secure aggregation stage %r failed: %s", stage, err)
            _forget(context)
            # the train handler runs inside (setup): its errors may quote data
            return _error(
                msg, f"secure aggregation stage {stage!r}: {public_reason(err)}"
            )

    return mod


# the mod of a deployed site: its node config as its operator wrote it
secagg_mod = site_secagg_mod(SiteFiles())
