"""SecAgg+ (Bell, Bonawitz, Gascon, Lepoint, Raykova, CCS 2020): the server learns the
sum of the sites' inputs and nothing else about any one of them. SecAgg (Bonawitz et
al., CCS 2017) is the special case where every site shares with every other.

Pure protocol state machines, no Flower imports; ``server/secagg.py`` and
``client/secagg_mod.py`` carry their messages over the Flower Grid.

Parameters: n participants U0 (sorted node ids), each with a set of *holders*
H(u): u and its ``num_shares - 1`` nearest ring neighbours (a Harary graph,
symmetric; the complete graph when ``num_shares >= n``), and a threshold t.

1. **Advertise keys.** Each u sends two X25519 public keys: c_u (encrypting shares)
   and s_u (mask agreement). U1' = sites that did.
2. **Share keys.** The server sends each site the keys of U1'. Site u draws a
   self-mask seed b_u (32 bytes, CSPRNG), Shamir-shares b_u and its mask private
   key s_u^sk t-out-of-|H(u)| among H(u) ∩ U1', and encrypts each holder's pair with
   ChaCha20-Poly1305 under HKDF(X25519(c_u^sk, c_v)), bound to (session, u, v).
   U1 = sites whose shares arrived.
3. **Masked input.** Site u receives the shares addressed to it (from H(u) ∩ U1)
   and uploads, mod 2^k::

       y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U1} sign(u, v) PRG(s_uv),
       s_uv = HKDF(X25519(s_u^sk, s_v)),  sign = +1 if u < v else -1

   U2 = sites whose masked input arrived.
4. **Unmask.** The server announces U2 and D = U1 \\ U2. Each surviving holder v
   reveals, for each u whose shares it holds, the share of b_u if u is in U2 or the
   share of s_u^sk if u is in D, never both, and nothing at all if |U2| < t. With t
   shares per secret the server computes::

       sum_{u in U2} x_u = sum_{u in U2} (y_u - PRG(b_u))
                           - sum_{u in D} sum_{v in N(u) ∩ U2} sign(v, u) PRG(s_uv)

Dropouts: any site may drop after step 1; the round completes while at least t
holders of every needed secret reply, and in particular while |U2| >= t. Otherwise
:class:`SecAggAborted` is raised and nothing is unmasked.

Threat model (docs/secure-aggregation.md): honest-but-curious server; up to t - 1
sites colluding with it learn nothing beyond the sum; a malicious server that lies
about dropouts, and Sybil sites, are out of scope.

Why our own code: Flower 1.41's SecAgg+ runs only on its legacy API, and its masks
expand 32-bit seeds with ``np.random.RandomState``; here all seeds are 256 bits and
expanded by ChaCha20 (see :mod:`.primitives`).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field

import numpy as np

from .primitives import (
    DecryptionError,
    agree,
    decrypt,
    encrypt,
    expand_mask,
    new_keypair,
    private_from_bytes,
)
from .quantize import Quantizer, modulus_bits
from .shamir import SHARE_BYTES, combine, split

__all__ = [
    "ClientSession",
    "ProtocolError",
    "SecAggAborted",
    "SecAggParams",
    "ServerSession",
    "resolve_count",
]

SEED_BYTES = 32


class ProtocolError(ValueError):
    """A protocol message is malformed, replayed, misaddressed or out of order."""


class SecAggAborted(RuntimeError):
    """Too few sites remain to finish the round; nothing was unmasked."""


def resolve_count(value: float, *, of: int, key: str, minimum: int) -> int:
    """An absolute count from ``value``: an int is absolute, a float in (0, 1] is a
    fraction of ``of`` (rounded up)."""
    if isinstance(value, bool):
        raise ValueError(f"`{key}` must be a number. Found {value!r}.")
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise ValueError(
                f"`{key}` as a fraction must be in (0, 1]. Found {value}; give an "
                "integer for an absolute count."
            )
        count = math.ceil(value * of)
    else:
        count = int(value)
    if not minimum <= count <= of:
        raise ValueError(
            f"`{key}` resolves to {count}, outside [{minimum}, {of}] for {of} "
            f"{'sites' if key.endswith('num-shares') else 'holders'}."
        )
    return count


@dataclass(frozen=True)
class SecAggParams:
    """One round's protocol settings, identical at the server and every site."""

    session: bytes  # 16 random bytes, fresh per round: binds every message to it
    nodes: tuple[int, ...]  # U0, sorted
    num_shares: int  # holders per site, itself included (odd, or n)
    threshold: int
    quantizer: Quantizer
    vector_length: int
    modulus_bits: int = 0  # 0: derived from the quantizer and n

    def __post_init__(self) -> None:
        n = len(self.nodes)
        if len(self.session) != 16:
            raise ProtocolError("The secagg session id must be 16 bytes.")
        if n < 2 or tuple(sorted(set(self.nodes))) != self.nodes:
            raise ProtocolError(
                f"Secure aggregation needs >= 2 distinct sorted node ids; got "
                f"{self.nodes}."
            )
        if not 2 <= self.threshold <= self.holders_count:
            raise ProtocolError(
                f"The threshold must be in [2, {self.holders_count}] (holders per "
                f"site). Found {self.threshold}."
            )
        if self.vector_length < 1:
            raise ProtocolError(f"vector_length must be >= 1: {self.vector_length}.")
        needed = modulus_bits(self.quantizer.bits, n)
        if self.modulus_bits == 0:
            object.__setattr__(self, "modulus_bits", needed)
        elif self.modulus_bits < needed:
            raise ProtocolError(
                f"A {self.modulus_bits}-bit modulus lets the sum of {n} inputs wrap; "
                f"need >= {needed}."
            )

    @property
    def holders_count(self) -> int:
        n = len(self.nodes)
        if self.num_shares >= n:
            return n
        return 2 * (self.num_shares // 2) + 1  # ring neighbours on both sides

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32 if self.modulus_bits <= 32 else np.uint64

    def holders(self, node: int) -> tuple[int, ...]:
        """H(node): node and its ring neighbours, sorted."""
        n = len(self.nodes)
        if self.holders_count == n:
            return self.nodes
        i = self.nodes.index(node)
        half = self.holders_count // 2
        return tuple(sorted(self.nodes[(i + j) % n] for j in range(-half, half + 1)))

    def share_index(self, owner: int, holder: int) -> int:
        return self.holders(owner).index(holder) + 1

    def check_node(self, node: int, what: str) -> None:
        if node not in self.nodes:
            raise ProtocolError(f"{what}: node {node} is not in this round.")

    def to_json(self) -> str:
        return json.dumps(
            {
                "session": self.session.hex(),
                "nodes": list(self.nodes),
                "num_shares": self.num_shares,
                "threshold": self.threshold,
                "clip_range": self.quantizer.clip_range,
                "bits": self.quantizer.bits,
                "vector_length": self.vector_length,
                "modulus_bits": self.modulus_bits,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SecAggParams:
        try:
            d = json.loads(text)
            return cls(
                session=bytes.fromhex(d["session"]),
                nodes=tuple(int(n) for n in d["nodes"]),
                num_shares=int(d["num_shares"]),
                threshold=int(d["threshold"]),
                quantizer=Quantizer(float(d["clip_range"]), int(d["bits"])),
                vector_length=int(d["vector_length"]),
                modulus_bits=int(d["modulus_bits"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError(f"Malformed secagg parameters: {err}") from err


def _mask_seed(private: bytes, peer_public: bytes, session: bytes) -> bytes:
    return agree(private, peer_public, label=b"fedshield-secagg/mask/" + session)


def _share_key(private: bytes, peer_public: bytes, session: bytes) -> bytes:
    return agree(private, peer_public, label=b"fedshield-secagg/share/" + session)


def _aad(session: bytes, sender: int, receiver: int) -> bytes:
    return session + sender.to_bytes(8, "big") + receiver.to_bytes(8, "big")


Keys = dict[int, tuple[bytes, bytes]]  # node -> (c_pk, s_pk)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@dataclass
class ClientSession:
    """One site's side of one round (serialisable between Flower messages)."""

    node: int
    params: SecAggParams
    c_private: bytes = b""
    s_private: bytes = b""
    self_seed: bytes = b""
    stage: str = "new"
    roster: Keys = field(default_factory=dict)
    shares: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # owner->(b,s)

    def advertise(self) -> tuple[bytes, bytes]:
        """Stage 1: fresh key pairs; returns the public keys (c_pk, s_pk)."""
        self._expect("new")
        self.params.check_node(self.node, "advertise")
        c, s = new_keypair(), new_keypair()
        self.c_private, self.s_private = c.private, s.private
        self.stage = "advertised"
        return c.public, s.public

    def share_keys(self, roster: Keys) -> dict[int, bytes]:
        """Stage 2: Shamir-share b_u and s_u^sk among the holders in ``roster``;
        returns a ciphertext per other holder."""
        self._expect("advertised")
        for node, (c_pk, s_pk) in roster.items():
            self.params.check_node(node, "roster")
            if len(c_pk) != 32 or len(s_pk) != 32:
                raise ProtocolError(f"roster: node {node} has malformed public keys.")
        mine = roster.get(self.node)
        if mine is None or mine[0] != private_from_bytes(self.c_private).public:
            raise ProtocolError("roster: this site's own keys are missing or altered.")
        holders = [h for h in self.params.holders(self.node) if h in roster]
        if len(holders) < self.params.threshold:
            raise SecAggAborted(
                f"Only {len(holders)} of this site's holders advertised keys; the "
                f"threshold is {self.params.threshold}."
            )
        self.roster = dict(roster)
        self.self_seed = new_keypair().private  # 32 CSPRNG bytes
        total = self.params.holders_count
        t = self.params.threshold
        b_shares = dict(split(self.self_seed, num_shares=total, threshold=t))
        s_shares = dict(split(self.s_private, num_shares=total, threshold=t))
        out: dict[int, bytes] = {}
        for holder in holders:
            x = self.params.share_index(self.node, holder)
            pair = (b_shares[x], s_shares[x])
            if holder == self.node:
                self.shares[self.node] = pair
                continue
            key = _share_key(self.c_private, roster[holder][0], self.params.session)
            plaintext = self.node.to_bytes(8, "big") + holder.to_bytes(8, "big")
            out[holder] = encrypt(
                key,
                plaintext + pair[0] + pair[1],
                aad=_aad(self.params.session, self.node, holder),
            )
        self.stage = "shared"
        return out

    def masked_input(self, inbox: dict[int, bytes], x: np.ndarray) -> np.ndarray:
        """Stage 3: decrypt the shares addressed here, return y_u = x + masks."""
        self._expect("shared")
        x = np.asarray(x)
        if x.shape != (self.params.vector_length,) or x.dtype != self.params.dtype:
            raise ProtocolError(
                f"input must be {self.params.vector_length} values of "
                f"{np.dtype(self.params.dtype).name}; got {x.shape} {x.dtype}."
            )
        neighbours = set(self.params.holders(self.node)) - {self.node}
        for src, ciphertext in inbox.items():
            if src not in neighbours or src not in self.roster:
                raise ProtocolError(
                    f"inbox: a share from node {src}, which is not a neighbour of "
                    f"node {self.node} in this round."
                )
            key = _share_key(self.c_private, self.roster[src][0], self.params.session)
            try:
                plain = decrypt(
                    key, ciphertext, aad=_aad(self.params.session, src, self.node)
                )
            except DecryptionError as err:
                raise ProtocolError(
                    f"inbox: the share from node {src} fails authentication "
                    "(tampered, replayed from another round, or misaddressed)."
                ) from err
            ids = (int.from_bytes(plain[:8], "big"), int.from_bytes(plain[8:16], "big"))
            if ids != (src, self.node) or len(plain) != 16 + 2 * SHARE_BYTES:
                raise ProtocolError(f"inbox: the share from node {src} is malformed.")
            body = plain[16:]
            self.shares[src] = (body[:SHARE_BYTES], body[SHARE_BYTES:])
        p = self.params
        y = x.astype(p.dtype, copy=True)
        y += expand_mask(self.self_seed, p.vector_length, bits=p.modulus_bits)
        for v in sorted(set(inbox) & neighbours):
            seed = _mask_seed(self.s_private, self.roster[v][1], p.session)
            mask = expand_mask(seed, p.vector_length, bits=p.modulus_bits)
            if self.node < v:
                y += mask
            else:
                y -= mask
        self.stage = "masked"
        return _reduce(y, p.modulus_bits)

    def unmask(
        self, survivors: set[int], dropped: set[int]
    ) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Stage 4: per owner whose shares this site holds, the b-share if the owner
        survived or the s-share if it dropped; never both, nothing if |U2| < t."""
        self._expect("masked")
        if survivors & dropped:
            raise ProtocolError(
                f"unmask: nodes {sorted(survivors & dropped)} are listed as both "
                "surviving and dropped; revealing both shares would expose them."
            )
        for node in survivors | dropped:
            self.params.check_node(node, "unmask")
        if self.node not in survivors:
            raise ProtocolError("unmask: this site is not listed as a survivor.")
        if len(survivors) < self.params.threshold:
            raise SecAggAborted(
                f"unmask: only {len(survivors)} survivors, below the threshold "
                f"{self.params.threshold}; no share is revealed."
            )
        b_out = {u: pair[0] for u, pair in self.shares.items() if u in survivors}
        s_out = {u: pair[1] for u, pair in self.shares.items() if u in dropped}
        self.stage = "done"
        return b_out, s_out

    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise ProtocolError(
                f"secagg message out of order: this site is at stage {self.stage!r}, "
                f"the message needs {stage!r} (a replayed or reordered message?)."
            )

    def to_json(self) -> str:
        """The session as JSON, secrets included: keep it on the site only."""
        return json.dumps(
            {
                "node": self.node,
                "params": self.params.to_json(),
                "c": _b64(self.c_private),
                "s": _b64(self.s_private),
                "b": _b64(self.self_seed),
                "stage": self.stage,
                "roster": {
                    str(k): [_b64(c), _b64(s)] for k, (c, s) in self.roster.items()
                },
                "shares": {
                    str(k): [_b64(b), _b64(s)] for k, (b, s) in self.shares.items()
                },
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ClientSession:
        d = json.loads(text)
        dec = base64.b64decode
        return cls(
            node=int(d["node"]),
            params=SecAggParams.from_json(d["params"]),
            c_private=dec(d["c"]),
            s_private=dec(d["s"]),
            self_seed=dec(d["b"]),
            stage=d["stage"],
            roster={int(k): (dec(c), dec(s)) for k, (c, s) in d["roster"].items()},
            shares={int(k): (dec(b), dec(s)) for k, (b, s) in d["shares"].items()},
        )


def _reduce(y: np.ndarray, bits: int) -> np.ndarray:
    width = y.dtype.itemsize * 8
    if bits < width:
        y &= y.dtype.type((1 << bits) - 1)
    return y


@dataclass
class ServerSession:
    """The server's side of one round. It only ever holds masked inputs, public
    keys, ciphertexts it cannot read, and (after stage 4) the secrets needed to
    remove masks from the *sum*."""

    params: SecAggParams
    keys: Keys = field(default_factory=dict)  # U1'
    ciphertexts: dict[int, dict[int, bytes]] = field(default_factory=dict)  # U1
    masked: dict[int, np.ndarray] = field(default_factory=dict)  # U2
    revealed_b: dict[int, dict[int, bytes]] = field(default_factory=dict)  # owner->x->y
    revealed_s: dict[int, dict[int, bytes]] = field(default_factory=dict)
    unmask_replies: set[int] = field(default_factory=set)

    def _require(self, count: int, stage: str) -> None:
        if count < self.params.threshold:
            raise SecAggAborted(
                f"Secure aggregation aborted at {stage}: {count} site(s) left, below "
                f"the threshold {self.params.threshold}. Nothing was unmasked; the "
                "round's update is lost."
            )

    # stage 1
    def receive_keys(self, node: int, c_pk: bytes, s_pk: bytes) -> None:
        self.params.check_node(node, "keys")
        if node in self.keys:
            raise ProtocolError(f"keys: node {node} advertised twice (replay?).")
        if len(c_pk) != 32 or len(s_pk) != 32 or c_pk == s_pk:
            raise ProtocolError(f"keys: node {node} sent malformed public keys.")
        self.keys[node] = (c_pk, s_pk)

    def roster(self) -> Keys:
        self._require(len(self.keys), "key advertisement")
        return dict(self.keys)

    # stage 2
    def receive_shares(self, node: int, ciphertexts: dict[int, bytes]) -> None:
        if node not in self.keys:
            raise ProtocolError(f"shares: node {node} did not advertise keys.")
        if node in self.ciphertexts:
            raise ProtocolError(f"shares: node {node} sent shares twice (replay?).")
        allowed = (set(self.params.holders(node)) & set(self.keys)) - {node}
        if set(ciphertexts) != allowed:
            raise ProtocolError(
                f"shares: node {node} addressed {sorted(ciphertexts)}, expected its "
                f"holders {sorted(allowed)}."
            )
        self.ciphertexts[node] = dict(ciphertexts)

    def inbox(self, node: int) -> dict[int, bytes]:
        """Shares addressed to ``node`` from the sites in U1."""
        self._require(len(self.ciphertexts), "key sharing")
        return {src: cts[node] for src, cts in self.ciphertexts.items() if node in cts}

    # stage 3
    def receive_masked(self, node: int, y: np.ndarray) -> None:
        p = self.params
        if node not in self.ciphertexts:
            raise ProtocolError(f"masked input: node {node} is not in U1.")
        if node in self.masked:
            raise ProtocolError(f"masked input: node {node} sent twice (replay?).")
        y = np.asarray(y)
        if y.shape != (p.vector_length,) or y.dtype != p.dtype:
            raise ProtocolError(
                f"masked input: node {node} sent {y.shape} {y.dtype}, expected "
                f"({p.vector_length},) {np.dtype(p.dtype).name}."
            )
        if p.modulus_bits < y.dtype.itemsize * 8 and int(y.max()) >> p.modulus_bits:
            raise ProtocolError(f"masked input: node {node} sent values >= 2^k.")
        self.masked[node] = y

    def unmask_request(self) -> tuple[set[int], set[int]]:
        """(U2, D): survivors and the sites that dropped after sharing keys."""
        self._require(len(self.masked), "masked input collection")
        survivors = set(self.masked)
        return survivors, set(self.ciphertexts) - survivors

    # stage 4
    def receive_unmask(
        self, node: int, b_shares: dict[int, bytes], s_shares: dict[int, bytes]
    ) -> None:
        survivors, dropped = set(self.masked), set(self.ciphertexts) - set(self.masked)
        if node not in survivors:
            raise ProtocolError(f"unmask: node {node} is not a survivor.")
        if node in self.unmask_replies:
            raise ProtocolError(f"unmask: node {node} replied twice (replay?).")
        if not set(b_shares) <= survivors or not set(s_shares) <= dropped:
            raise ProtocolError(f"unmask: node {node} revealed shares it should not.")
        for owner, share in [*b_shares.items(), *s_shares.items()]:
            if node not in self.params.holders(owner) or len(share) != SHARE_BYTES:
                raise ProtocolError(
                    f"unmask: node {node} sent a malformed share of node {owner}."
                )
        self.unmask_replies.add(node)
        for owner, share in b_shares.items():
            x = self.params.share_index(owner, node)
            self.revealed_b.setdefault(owner, {})[x] = share
        for owner, share in s_shares.items():
            x = self.params.share_index(owner, node)
            self.revealed_s.setdefault(owner, {})[x] = share

    def aggregate(self) -> tuple[np.ndarray, set[int]]:
        """The sum of the survivors' inputs mod 2^k, and the survivors."""
        p = self.params
        survivors, dropped = self.unmask_request()
        for owner in survivors | dropped:
            revealed = self.revealed_b if owner in survivors else self.revealed_s
            got = len(revealed.get(owner, {}))
            if got < p.threshold:
                raise SecAggAborted(
                    f"Secure aggregation aborted at unmasking: {got} share(s) of node "
                    f"{owner}'s {'self mask' if owner in survivors else 'mask key'}, "
                    f"below the threshold {p.threshold}. Nothing was unmasked."
                )
        total = np.zeros(p.vector_length, dtype=p.dtype)
        for node in sorted(survivors):
            total += self.masked[node]
            seed = combine(list(self.revealed_b[node].items()))
            total -= expand_mask(seed, p.vector_length, bits=p.modulus_bits)
        for u in sorted(dropped):
            s_private = combine(list(self.revealed_s[u].items()))
            # u is in U1, so every neighbour v in U2 masked with u (and vice versa)
            for v in sorted((set(p.holders(u)) - {u}) & survivors):
                seed = _mask_seed(s_private, self.keys[v][1], p.session)
                mask = expand_mask(seed, p.vector_length, bits=p.modulus_bits)
                if v < u:  # v added +PRG(s_vu); remove it
                    total -= mask
                else:
                    total += mask
        return _reduce(total, p.modulus_bits), survivors
