"""The red team's coordinator: one secure-aggregation round played stage by stage
against real sites, with every message built by the coordinator itself, so that it
can lie (forged parameters, withheld or partial inboxes, a different unmask request
per site, participants it runs itself), and the arithmetic to strip masks with the
secrets it rebuilt."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from red_team_harness import Federation, refusal_of

from fedshield.privacy.secagg import (
    ClientSession,
    ProtocolError,
    Quantizer,
    SecAggAborted,
    SecAggParams,
)
from fedshield.privacy.secagg.client import _tag, _tag_key, view_digest
from fedshield.privacy.secagg.masks import mask_seed, unmask_sum
from fedshield.privacy.secagg.primitives import expand_mask
from fedshield.privacy.secagg.quantize import modulus_bits
from fedshield.privacy.secagg.shamir import combine

__all__ = ["SecureRound", "forge_params", "match_fraction"]

T = TypeVar("T")


def forge_params(
    *, nodes: int, num_shares: int, threshold: int, quantizer: Quantizer, length: int
) -> SecAggParams:
    """Round parameters as the coordinator chooses them, valid or not (a lying
    server does not run the protocol's own checks)."""
    fields: dict[str, Any] = {
        "session": os.urandom(16),
        "nodes": tuple(range(nodes)),
        "num_shares": num_shares,
        "threshold": threshold,
        "quantizer": quantizer,
        "vector_length": length,
        "modulus_bits": modulus_bits(quantizer.bits, nodes),
    }
    try:
        return SecAggParams(**fields)
    except ValueError:
        params = object.__new__(SecAggParams)
        for f in dataclasses.fields(SecAggParams):
            value = fields[f.name] if f.name in fields else f.default
            object.__setattr__(params, f.name, value)
        return params


def match_fraction(recovered: np.ndarray, x: np.ndarray, quantizer: Quantizer) -> float:
    """Share of coordinates where ``recovered`` (integers mod 2^k) is the site's
    quantized ``x``: within 1 of u = (clip(x) + c) / 2c * L (stochastic rounding
    gives floor(u) or floor(u) + 1). A masked value lands there with probability
    ~3 / 2^k."""
    c, levels = quantizer.clip_range, quantizer.levels
    u = (np.clip(x, -c, c) + c) / (2 * c) * levels
    return float(np.mean(np.abs(recovered.astype(np.float64) - u) <= 1 + 1e-6))


@dataclass
class SecureRound:
    """The coordinator's side of one secure round, stage by stage. Participant i is
    the real site ``nodes[i]``, or one the coordinator runs itself where
    ``nodes[i]`` is None (a colluding site; its input is zero)."""

    fed: Federation
    nodes: list[int | None]
    params: SecAggParams
    server_round: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    fakes: dict[int, ClientSession] = field(default_factory=dict)
    cts: dict[int, dict[int, bytes]] = field(default_factory=dict)  # src -> dest -> ct
    y: dict[int, np.ndarray] = field(default_factory=dict)
    b: dict[int, dict[int, bytes]] = field(default_factory=dict)  # owner -> x -> share
    s: dict[int, dict[int, bytes]] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    setup_replies: dict[int, Message] = field(default_factory=dict)
    masked_records: list[dict[str, Any]] = field(default_factory=list)  # in clear

    def _stage(
        self, i: int, record: dict[str, Any]
    ) -> tuple[ConfigRecord, Message] | None:
        node = self.nodes[i]
        assert node is not None
        if i in self.refused:  # out of the round: its first reason stands
            return None
        msg = Message(
            content=RecordDict({"secagg": ConfigRecord(record)}),
            dst_node_id=node,
            message_type="train",
        )
        reply = self.fed.send(node, msg)
        why = refusal_of(reply)
        got = None if why else reply.content.config_records.get("secagg")
        if got is None:
            self.refused[i] = why or "reply without a secagg record"
            return None
        return got, reply

    def _own(self, i: int, step: Callable[[], T]) -> T | None:
        """A step of a participant the coordinator runs (the protocol's own code);
        where the real sites' answers leave it unable to go on, it stops."""
        try:
            return step()
        except (ProtocolError, SecAggAborted) as err:
            self.refused[i] = f"the coordinator's own participant {i} stops: {err}"
            return None

    def setup(self, skip: Sequence[int] = ()) -> None:
        for i, node in enumerate(self.nodes):
            if i in skip:
                continue
            if node is None:
                self.fakes[i] = ClientSession(i, self.params)
                self.keys[i] = self.fakes[
                    i
                ].advertise()  # its own keys: nothing to check
                continue
            record = {"stage": "setup", "params": self.params.to_json(), "index": i}
            msg = self.fed.message(
                node, server_round=self.server_round, secagg=record, config=self.config
            )
            reply = self.fed.send(node, msg)
            self.setup_replies[i] = reply
            why = refusal_of(reply)
            sec = None if why else reply.content.config_records.get("secagg")
            if sec is None:
                self.refused[i] = why or "setup reply without public keys"
                continue
            self.keys[i] = (bytes(sec["c-pk"]), bytes(sec["s-pk"]))  # type: ignore[arg-type]

    def share_keys(self, skip: Sequence[int] = ()) -> None:
        order = sorted(self.keys)
        for i in order:
            if i in skip:
                continue
            if i in self.fakes:
                fake = self.fakes[i]
                cts = self._own(i, partial(fake.share_keys, dict(self.keys)))
                if cts is not None:
                    self.cts[i] = cts
                continue
            got = self._stage(
                i,
                {
                    "stage": "share-keys",
                    "session": self.params.session.hex(),
                    "nodes": order,
                    "c-pk": [self.keys[j][0] for j in order],
                    "s-pk": [self.keys[j][1] for j in order],
                },
            )
            if got is not None:
                dests = [int(d) for d in _list(got[0], "dest")]
                sent = [bytes(c) for c in _list(got[0], "ct")]
                self.cts[i] = dict(zip(dests, sent, strict=True))

    def inbox(self, i: int, senders: Sequence[int] | None = None) -> dict[int, bytes]:
        return {
            src: cts[i]
            for src, cts in self.cts.items()
            if i in cts and (senders is None or src in senders)
        }

    def masked_input(
        self,
        inboxes: dict[int, dict[int, bytes]],
        weight: Callable[[int], float] = lambda i: 1.0,
    ) -> None:
        """Each participant's inbox out (and the weight older sites read), its
        masked input back."""
        for i, inbox in inboxes.items():
            if i in self.fakes:
                zero = np.full(
                    self.params.vector_length,
                    self.params.quantizer.levels // 2,  # ~ the encoding of 0.0
                    dtype=self.params.dtype,
                )
                fake = self.fakes[i]
                y = self._own(i, partial(fake.masked_input, inbox, zero))
                if y is not None:
                    self.y[i] = y
                continue
            srcs = sorted(inbox)
            got = self._stage(
                i,
                {
                    "stage": "masked-input",
                    "session": self.params.session.hex(),
                    "src": srcs,
                    "ct": [inbox[s] for s in srcs],
                    "weight": weight(i),
                },
            )
            if got is None:
                continue
            self.masked_records.append(dict(got[0]))
            masked = got[1].content.array_records.get("masked")
            if masked is not None:
                self.y[i] = masked["y"].numpy()

    def unmask(self, requests: dict[int, tuple[set[int], set[int]]]) -> None:
        """Each participant's own view (survivors, dropped): the confirm stage (each
        real site tags its view for the others), the tags relayed, then the unmask
        stage. A colluding participant tags whatever view each real site was told
        (it holds its own keys), and hands over every share it holds."""
        session = self.params.session.hex()
        tags: dict[int, dict[int, bytes]] = {}  # signer -> receiver -> tag
        for i, (survivors, dropped) in requests.items():
            if i in self.fakes:
                continue
            got = self._stage(
                i,
                {
                    "stage": "confirm",
                    "session": session,
                    "survivors": sorted(survivors),
                    "dropped": sorted(dropped),
                },
            )
            if got is None:
                continue
            rec = got[0]
            tags[i] = {
                int(w): bytes(t)
                for w, t in zip(_list(rec, "tag-peer"), _list(rec, "tag"), strict=True)
            }
        for i, fake in self.fakes.items():  # colluders confirm every story told
            if i not in requests or fake.c_private == b"":
                continue
            tags[i] = {}
            for j, (survivors, dropped) in requests.items():
                if j == i or j in self.fakes or j not in fake.roster:
                    continue
                digest = view_digest(fake.round_digest, survivors, dropped)
                key = _tag_key(
                    fake.c_private, fake.roster[j][0], self.params.transcript
                )
                tags[i][j] = _tag(key, digest)
        for i in requests:
            if i in self.fakes:
                # a colluding site hands the coordinator every share it holds
                held = self.fakes[i].shares
                b_out = {o: pair[0] for o, pair in held.items()}
                s_out = {o: pair[1] for o, pair in held.items()}
            else:
                if i not in tags:
                    continue
                view = requests[i][0]  # relay only what fits i's own story
                to_me = {
                    w: t[i] for w, t in tags.items() if w != i and i in t and w in view
                }
                peers = sorted(to_me)
                got = self._stage(
                    i,
                    {
                        "stage": "unmask",
                        "session": session,
                        "tag-peer": peers,
                        "tag": [to_me[w] for w in peers],
                    },
                )
                if got is None:
                    continue
                rec = got[0]
                b_out = dict(
                    zip(_list(rec, "b-owner"), _list(rec, "b-share"), strict=True)
                )
                s_out = dict(
                    zip(_list(rec, "s-owner"), _list(rec, "s-share"), strict=True)
                )
            for kept, revealed in ((self.b, b_out), (self.s, s_out)):
                for owner, share in revealed.items():
                    x = self.params.share_index(int(owner), i)
                    kept.setdefault(int(owner), {})[x] = bytes(share)

    def secret(self, kind: str, owner: int) -> bytes | None:
        """b_u or s_u^sk rebuilt from the revealed shares, if there are t of them."""
        shares = (self.b if kind == "b" else self.s).get(owner, {})
        if len(shares) < self.params.threshold:
            return None
        return combine(list(shares.items()))

    def strip(
        self, u: int, peers: Sequence[int], known: dict[int, bytes]
    ) -> np.ndarray | None:
        """y_u less its self mask (rebuilt b_u) and its pairwise mask with each of
        ``peers``, each from a private mask key of either end that the coordinator
        holds (``known``: node -> s^sk, rebuilt from shares or a colluder's)."""
        p, b_u = self.params, self.secret("b", u)
        if u not in self.y or b_u is None:
            return None
        k = p.modulus_bits
        rest = self.y[u].astype(np.uint64) - expand_mask(b_u, p.vector_length, bits=k)
        for v in peers:
            if u in known:
                seed = mask_seed(known[u], self.keys[v][1], p.session)
            elif v in known:
                seed = mask_seed(known[v], self.keys[u][1], p.session)
            else:
                return None
            mask = expand_mask(seed, p.vector_length, bits=k).astype(np.uint64)
            rest = rest - mask if u < v else rest + mask
        out: np.ndarray = rest & np.uint64((1 << k) - 1)
        return out

    def honest_sum(
        self, survivors: Sequence[int], dropped: Sequence[int] = ()
    ) -> np.ndarray:
        """The decoded sum of the survivors' inputs, the masks of the ``dropped``
        (who shared keys but did not upload) removed with their rebuilt keys."""
        p = self.params
        total = unmask_sum(
            params=p,
            masked={u: self.y[u] for u in survivors},
            self_seeds={u: self.secret("b", u) or b"" for u in survivors},
            dropped_mask_keys={u: self.secret("s", u) or b"" for u in dropped},
            mask_keys={v: self.keys[v][1] for v in survivors},
        )
        return p.quantizer.decode_sum(total, count=len(survivors))


def _list(record: ConfigRecord, key: str) -> list[Any]:
    value = record[key]
    return list(value) if isinstance(value, list) else [value]
