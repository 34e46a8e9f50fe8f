"""One site's side of a SecAgg+ round (stages 1-4), as a state machine that
survives serialisation between Flower messages (``client/secagg_mod.py``).

1. **Advertise keys**: two fresh X25519 key pairs, c_u (encrypting shares) and s_u
   (mask agreement).
2. **Share keys**: draw the self-mask seed b_u (32 CSPRNG bytes), Shamir-share b_u
   and s_u^sk t-out-of-|H(u)| among the holders H(u) that advertised keys, and
   encrypt each holder's pair with ChaCha20-Poly1305 under
   HKDF(X25519(c_u^sk, c_v)), bound to (the round's parameter transcript, u, v).
3. **Masked input**: decrypt the shares addressed to this site and upload y_u
   (:mod:`.masks`); abort if fewer than t - 1 other sites' shares arrived.
4. **Unmask**: for each owner whose shares this site holds, reveal the share of b_u
   if the owner survived or of s_u^sk if it dropped, never both, and nothing at all
   if fewer than t sites survived; answer once.

Each stage refuses messages out of order, from or about nodes outside the round,
and ciphertexts that fail authentication.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field

import numpy as np

from .masks import mask_input
from .params import Keys, ProtocolError, SecAggAborted, SecAggParams
from .primitives import (
    DecryptionError,
    agree,
    decrypt,
    encrypt,
    new_keypair,
    private_from_bytes,
)
from .shamir import SHARE_BYTES, split

__all__ = ["ClientSession"]


def _share_key(private: bytes, peer_public: bytes, session: bytes) -> bytes:
    return agree(private, peer_public, label=b"fedshield-secagg/share/" + session)


def _aad(transcript: bytes, sender: int, receiver: int) -> bytes:
    """Binds a share ciphertext to its round's parameters and its two ends."""
    return transcript + sender.to_bytes(8, "big") + receiver.to_bytes(8, "big")


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
        self.self_seed = os.urandom(32)  # 256 CSPRNG bits (an X25519 scalar has 251)
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
                aad=_aad(self.params.transcript, self.node, holder),
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
                    key, ciphertext, aad=_aad(self.params.transcript, src, self.node)
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
        if len(inbox) < self.params.threshold - 1:
            # masked by its self mask (and few pairwise masks) only: the server,
            # calling this site a survivor, would rebuild b_u from t shares and
            # strip the rest with the colluders' help
            raise SecAggAborted(
                f"masked input: shares from {len(inbox)} other sites arrived, fewer "
                f"than threshold - 1 = {self.params.threshold - 1}; the site does "
                "not upload."
            )
        y = mask_input(
            x,
            params=self.params,
            node=self.node,
            self_seed=self.self_seed,
            mask_private=self.s_private,
            peer_mask_keys={v: self.roster[v][1] for v in set(inbox) & neighbours},
        )
        self.stage = "masked"
        return y

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
