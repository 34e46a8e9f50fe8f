"""The server half of secure aggregation: runs the SecAgg+ stages of
:mod:`privacy.secagg` (the protocol) over the Flower Grid (Message API) and returns only
the *sum* of the surviving sites' updates.

Stages (each a round trip of ``train`` messages with a ``secagg`` ConfigRecord; the
site half is :mod:`client.secagg_mod`):

1. ``setup``: the train message itself (global model + config) with the round's
   protocol parameters; sites train and reply with metrics and public keys, not
   their update. Refusals and failures are screened as in a plain round.
2. ``share-keys``: the roster of public keys out, encrypted shares back.
3. ``masked-input``: each site's encrypted shares out, masked quantized updates
   back.
4. ``confirm``: survivors and dropouts out, a tag of that view per other survivor
   back (pairwise HMACs under keys the server cannot derive).
5. ``unmask``: the tags addressed to each site out; a site that finds at least t
   survivors agreeing with its view sends its shares back; the server removes the
   masks from the sum.

A site that fails, times out or sends a malformed message at any stage is dropped
from the round with its reason; the round finishes while the threshold holds and
otherwise raises :class:`server.rounds.RoundAborted` having unmasked nothing.

Weights. Every site masks its *unweighted* update and the mean divides by the
number of survivors. A per-site weight chosen by the server (FedAvg's n_k / n) would
let it send weight 1 to one site and 1e-9 to the others and read that site's update
off the "sum"; a site cannot check such a weight, since it does not know the others'
example counts. The per-site numbers the server sees in plaintext are only those the
site's policy releases (``release-metrics``, :mod:`client.policy`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from fedshield.common.config import ConfigError
from fedshield.common.schema import Record, SecAggKey, Stage
from fedshield.models import unflatten_state
from fedshield.models.records import (
    read_bytes,
    read_bytes_list,
    read_float,
    read_int,
    read_int_list,
)
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.privacy.distributed_dp import calibrate, lift_sum, plan_modulus
from fedshield.privacy.secagg import (
    ProtocolError,
    SecAggAborted,
    SecAggConfig,
    SecAggParams,
    ServerSession,
)

__all__ = ["SecureSum", "prepare_setup", "secure_sum"]

logger = logging.getLogger(__name__)

State = dict[str, torch.Tensor]
Collect = Callable[[list[Message]], list[Message]]


@dataclass
class SecureSum:
    """The unmasked sum of the surviving sites' updates."""

    total: State  # sum_k delta_k over U2 (float32, per parameter)
    survivors: list[int]  # node ids in the sum
    # values clipped to secagg.clip-range over the survivors that release the count
    # (release-metrics); None when none does
    saturated: int | None
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (node, reason)
    # distributed DP: the survivors' total Skellam variance (integer units)
    noise_variance: float | None = None


def prepare_setup(
    messages: list[Message],
    *,
    cfg: SecAggConfig,
    global_state: State,
    client_dp: ClientDPConfig | None = None,
) -> tuple[list[Message], SecAggParams]:
    """The train messages with the round's protocol parameters and each site's
    participant index added (new messages: strategies may share one content).

    With client-level DP the sites add Skellam noise before masking: the modulus
    gets the headroom that keeps the noised sum from wrapping (probability logged).
    """
    n = len(messages)
    if n < 2:
        raise SecAggAborted(
            f"Secure aggregation needs at least 2 sampled sites; this round sampled "
            f"{n}. Connect more sites or set secagg.enabled=false."
        )
    try:
        num_shares, threshold = cfg.counts(n)
    except ConfigError as err:  # the round cannot run as configured: abort it
        raise SecAggAborted(str(err)) from None
    d = sum(t.numel() for t in global_state.values())
    bits = 0  # the noise-free modulus
    if client_dp is not None and client_dp.enabled:
        q = cfg.quantizer
        try:  # the most noise a site adds: calibrated for 1 honest survivor
            noise = calibrate(client_dp, q, dimension=d, survivors=1)
            bound = plan_modulus(
                quantization_bits=q.bits,
                participants=n,
                site_variance=noise.site_variance,
                dimension=d,
            )
        except ValueError as err:
            raise SecAggAborted(f"Distributed client-level DP: {err}") from None
        bits = bound.modulus_bits
        logger.info(
            "distributed DP: %d-bit modulus (%d bits of headroom), wrap-around "
            "probability <= %.3g per round",
            bound.modulus_bits,
            bound.headroom_bits,
            bound.wrap_probability,
        )
    params = SecAggParams(
        session=os.urandom(16),
        nodes=tuple(range(n)),
        num_shares=num_shares,
        threshold=threshold,
        quantizer=cfg.quantizer,
        vector_length=d,
        modulus_bits=bits,
    )
    out = []
    for index, msg in enumerate(messages):
        content = RecordDict(dict(msg.content.items()))
        content[Record.SECAGG] = ConfigRecord(
            {
                SecAggKey.STAGE: Stage.SETUP,
                SecAggKey.PARAMS: params.to_json(),
                SecAggKey.INDEX: index,
            }
        )
        out.append(
            Message(
                content=content,
                dst_node_id=msg.metadata.dst_node_id,
                message_type=msg.metadata.message_type,
                group_id=msg.metadata.group_id,
            )
        )
    return out, params


def _stage_message(node: int, record: dict[str, Any], group: str) -> Message:
    return Message(
        content=RecordDict({Record.SECAGG: ConfigRecord(record)}),
        dst_node_id=node,
        message_type="train",
        group_id=group,
    )


def _record(reply: Message, stage: str) -> ConfigRecord:
    if reply.has_error():
        raise ProtocolError(f"the site reported an error: {reply.error.reason}")
    record = reply.content.config_records.get(Record.SECAGG)
    if record is None or record.get(SecAggKey.STAGE) != stage:
        raise ProtocolError(f"the reply carries no {stage!r} secagg record")
    return record


def secure_sum(
    *,
    setup_replies: list[Message],
    params: SecAggParams,
    node_ids: list[int],
    collect: Collect,
    group: str,
    template: State,
    noised: bool = False,
) -> SecureSum:
    """Stages 2-4 after the screened ``setup_replies``; ``node_ids[i]`` is the node
    with participant index i. ``noised``: the sites add Skellam noise (distributed
    DP); each must report its variance, and the sum is read as a signed one."""
    server = ServerSession(params)
    index = {node: i for i, node in enumerate(node_ids)}
    dropped: list[tuple[int, str]] = []

    def exchange(
        stage: str, payloads: dict[int, dict[str, Any]], receive: Callable[..., None]
    ) -> None:
        messages = [
            _stage_message(node, {SecAggKey.STAGE: stage, **payload}, group)
            for node, payload in payloads.items()
        ]
        answered = set()
        for reply in collect(messages):
            node = reply.metadata.src_node_id
            answered.add(node)
            try:
                if node not in payloads:
                    raise ProtocolError(
                        f"a reply from node {node}, which was not asked"
                    )
                receive(node, _record(reply, stage), reply)
            except (ProtocolError, KeyError, TypeError, ValueError) as err:
                logger.warning("secagg %s: dropping node %d: %s", stage, node, err)
                dropped.append((node, f"secure aggregation {stage}: {err}"))
        for node in set(payloads) - answered:
            dropped.append((node, f"secure aggregation {stage}: no reply in time"))

    session_hex = params.session.hex()
    for reply in setup_replies:  # stage 1 answers arrived with the training replies
        node = reply.metadata.src_node_id
        try:
            record = _record(reply, Stage.SETUP)
            c_pk = read_bytes(record, SecAggKey.C_PK)
            s_pk = read_bytes(record, SecAggKey.S_PK)
            server.receive_keys(index[node], c_pk, s_pk)
        except (ProtocolError, KeyError, TypeError, ValueError) as err:
            dropped.append((node, f"secure aggregation setup: {err}"))

    roster = server.roster()
    order = sorted(roster)
    roster_payload = {
        SecAggKey.SESSION: session_hex,
        SecAggKey.NODES: order,
        SecAggKey.C_PK: [roster[i][0] for i in order],
        SecAggKey.S_PK: [roster[i][1] for i in order],
    }

    def on_shares(node: int, record: ConfigRecord, _reply: Message) -> None:
        dests = read_int_list(record, SecAggKey.DEST)
        cts = read_bytes_list(record, SecAggKey.CIPHERTEXTS)
        if len(dests) != len(cts):
            raise ProtocolError("destination and ciphertext lists differ in length")
        server.receive_shares(index[node], dict(zip(dests, cts, strict=True)))

    exchange(Stage.SHARE_KEYS, {node_ids[i]: roster_payload for i in order}, on_shares)

    u1 = sorted(server.ciphertexts)
    saturated: int | None = None
    variances: dict[int, float] = {}

    def on_masked(node: int, record: ConfigRecord, reply: Message) -> None:
        nonlocal saturated
        arrays = reply.content.array_records.get(Record.MASKED)
        if arrays is None or SecAggKey.MASKED_VECTOR not in arrays:
            raise ProtocolError("the reply carries no masked vector")
        if noised:  # a site whose noise is unknown cannot be in the accounted sum
            variance = read_float(record, SecAggKey.NOISE_VARIANCE)
            if not (variance > 0 and np.isfinite(variance)):
                raise ProtocolError(f"noise variance {variance} is not > 0")
            variances[index[node]] = variance
        server.receive_masked(index[node], arrays[SecAggKey.MASKED_VECTOR].numpy())
        if SecAggKey.SATURATED in record:  # only if the site's policy releases it
            saturated = (saturated or 0) + read_int(record, SecAggKey.SATURATED)

    inbox_payloads = {}
    for i in u1:
        inbox = server.inbox(i)
        senders = sorted(inbox)
        inbox_payloads[node_ids[i]] = {
            SecAggKey.SESSION: session_hex,
            SecAggKey.SOURCES: senders,
            SecAggKey.CIPHERTEXTS: [inbox[s] for s in senders],
        }
    exchange(Stage.MASKED_INPUT, inbox_payloads, on_masked)

    survivors, lost = server.unmask_request()

    def on_confirm(node: int, record: ConfigRecord, _reply: Message) -> None:
        peers = read_int_list(record, SecAggKey.TAG_PEERS)
        tags = read_bytes_list(record, SecAggKey.TAGS)
        if len(peers) != len(tags):
            raise ProtocolError("tag peer and tag lists differ in length")
        server.receive_tags(index[node], dict(zip(peers, tags, strict=True)))

    view = {
        SecAggKey.SESSION: session_hex,
        SecAggKey.SURVIVORS: sorted(survivors),
        SecAggKey.DROPPED: sorted(lost),
    }
    exchange(Stage.CONFIRM, {node_ids[i]: view for i in sorted(survivors)}, on_confirm)

    def on_unmask(node: int, record: ConfigRecord, _reply: Message) -> None:
        shares = []
        for owner_key, share_key in (
            (SecAggKey.B_OWNERS, SecAggKey.B_SHARES),
            (SecAggKey.S_OWNERS, SecAggKey.S_SHARES),
        ):
            owners = read_int_list(record, owner_key)
            values = read_bytes_list(record, share_key)
            if len(owners) != len(values):
                raise ProtocolError(f"{owner_key} and {share_key} differ in length")
            shares.append(dict(zip(owners, values, strict=True)))
        server.receive_unmask(index[node], shares[0], shares[1])

    def relay(i: int) -> dict[str, Any]:
        tags = server.tags_for(i)
        peers = sorted(tags)
        return {
            SecAggKey.SESSION: session_hex,
            SecAggKey.TAG_PEERS: peers,
            SecAggKey.TAGS: [tags[w] for w in peers],
        }

    exchange(
        Stage.UNMASK, {node_ids[i]: relay(i) for i in sorted(server.tags)}, on_unmask
    )

    total, in_sum = server.aggregate()
    q = params.quantizer
    if noised:  # noise may take the sum below 0 or above m L: read it signed
        total = lift_sum(
            total, modulus_bits=params.modulus_bits, count=len(in_sum), levels=q.levels
        )
    decoded = q.decode_sum(total, count=len(in_sum))
    return SecureSum(
        total=unflatten_state(torch.from_numpy(decoded.astype(np.float32)), template),
        noise_variance=sum(variances[i] for i in in_sum) if noised else None,
        survivors=[node_ids[i] for i in sorted(in_sum)],
        saturated=saturated,
        dropped=dropped,
    )
