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
4. **Consistency**: take the server's view of the round (survivors S, dropped D),
   check it (in particular that S and D together are exactly the sites this site
   masked with, and itself), and return for each other survivor w a tag
   HMAC(k_uw, transcript || roster || S || D), k_uw agreed from the share keys;
   answer once.
5. **Unmask**: only if at least t survivors (itself included) tagged the *same*
   view, reveal for each owner whose shares this site holds the share of b_u if the
   owner is in S or of s_u^sk if it is in D, never both; answer once.

Why stages 3 and 4 (Bonawitz et al. 2017, the active-security variant, with
pairwise MACs in place of signatures: the keys they are agreed from are the ones
the shares are encrypted under, so this assumes, as the shares do, that the server
did not substitute keys). A server that withholds some of u's shares makes u mask
with the other sites only; a server that tells each holder its own story of who
survived collects, from different holders, the self-mask seed of u and the mask
keys of exactly those sites. With one view for every revealing holder (the tags),
and u confirming only a view whose sites are exactly those it masked with, calling
all of u's mask peers dropped leaves u alone among the survivors, below the
threshold: u's masks with the other survivors stay on, and the server unmasks their
sum.
The roster itself is bound into every share ciphertext, so sites handed different
rosters cannot open each other's shares.

Each stage refuses messages out of order, from or about nodes outside the round,
and ciphertexts that fail authentication.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
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
    """Binds a share ciphertext to its round (parameters and roster) and its two
    ends."""
    return transcript + sender.to_bytes(8, "big") + receiver.to_bytes(8, "big")


def roster_digest(roster: Keys) -> bytes:
    """SHA-256 of a roster (node ids and both public keys, in node order)."""
    h = hashlib.sha256()
    for node in sorted(roster):
        c_pk, s_pk = roster[node]
        h.update(node.to_bytes(8, "big") + c_pk + s_pk)
    return h.digest()


def view_digest(round_digest: bytes, survivors: set[int], dropped: set[int]) -> bytes:
    """What a consistency tag covers: the round and the server's (S, D)."""
    body = json.dumps([sorted(survivors), sorted(dropped)]).encode()
    return hashlib.sha256(round_digest + body).digest()


def _tag_key(private: bytes, peer_public: bytes, transcript: bytes) -> bytes:
    return agree(private, peer_public, label=b"fedshield-secagg/view/" + transcript)


def _tag(key: bytes, digest: bytes) -> bytes:
    return hmac.new(key, digest, hashlib.sha256).digest()


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
    view: tuple[list[int], list[int]] | None = None  # (S, D) this site tagged
    masked_with: list[int] = field(default_factory=list)  # the peers in y_u

    @property
    def round_digest(self) -> bytes:
        """The parameters and the roster: what shares and tags are bound to."""
        return hashlib.sha256(
            self.params.transcript + roster_digest(self.roster)
        ).digest()

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
        self.roster = dict(roster)  # bound into every share: see round_digest
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
                aad=_aad(self.round_digest, self.node, holder),
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
                    key, ciphertext, aad=_aad(self.round_digest, src, self.node)
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
            # calling those few dropped, would rebuild b_u and their mask keys
            raise SecAggAborted(
                f"masked input: shares from {len(inbox)} other sites arrived, fewer "
                f"than threshold - 1 = {self.params.threshold - 1}; the site does "
                "not upload."
            )
        self.masked_with = sorted(set(inbox) & neighbours)
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

    def confirm(self, survivors: set[int], dropped: set[int]) -> dict[int, bytes]:
        """Stage 4: check the server's view (S, D) and tag it for every other
        survivor; the view is kept, and stage 5 acts on it alone."""
        self._expect("masked")
        if survivors & dropped:
            raise ProtocolError(
                f"unmask: nodes {sorted(survivors & dropped)} are listed as both "
                "surviving and dropped; revealing both shares would expose them."
            )
        for node in survivors | dropped:
            self.params.check_node(node, "unmask")
            if node not in self.roster:
                raise ProtocolError(f"unmask: node {node} is not in the roster.")
        if self.node not in survivors:
            raise ProtocolError("unmask: this site is not listed as a survivor.")
        if len(survivors) < self.params.threshold:
            raise SecAggAborted(
                f"unmask: only {len(survivors)} survivors, below the threshold "
                f"{self.params.threshold}; no share is revealed."
            )
        neighbours = set(self.params.holders(self.node)) - {self.node}
        if set(self.masked_with) != (survivors | dropped) & neighbours:
            # the sites this site masked with are those whose shares reached it;
            # a view that counts others (it withheld their shares) could call
            # exactly this site's mask peers dropped and strip every mask
            raise SecAggAborted(
                f"unmask: the view lists {sorted((survivors | dropped) & neighbours)}"
                f" as having shared keys, but this site received the shares of "
                f"{self.masked_with} only; no share is revealed."
            )
        self.view = (sorted(survivors), sorted(dropped))
        self.stage = "confirmed"
        digest = view_digest(self.round_digest, survivors, dropped)
        return {
            w: _tag(
                _tag_key(self.c_private, self.roster[w][0], self.params.transcript),
                digest,
            )
            for w in sorted(survivors - {self.node})
        }

    def unmask(
        self, tags: dict[int, bytes]
    ) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Stage 5: if at least t survivors (this site included) tagged the view
        this site confirmed, the b-share of each owner in S and the s-share of each
        owner in D; never both, and nothing otherwise."""
        self._expect("confirmed")
        assert self.view is not None
        survivors, dropped = set(self.view[0]), set(self.view[1])
        digest = view_digest(self.round_digest, survivors, dropped)
        agreeing = {self.node}
        for w, tag in tags.items():
            if w not in survivors or w == self.node:
                raise ProtocolError(f"unmask: a tag from node {w}, not a survivor.")
            key = _tag_key(self.c_private, self.roster[w][0], self.params.transcript)
            if hmac.compare_digest(_tag(key, digest), bytes(tag)):
                agreeing.add(w)
        self.stage = "done"  # answer once, whatever the outcome
        if len(agreeing) < self.params.threshold:
            raise SecAggAborted(
                f"unmask: {len(agreeing)} survivor(s) confirmed this site's view of "
                f"the round, below the threshold {self.params.threshold}: the "
                "server told the sites different stories; no share is revealed."
            )
        b_out = {u: pair[0] for u, pair in self.shares.items() if u in survivors}
        s_out = {u: pair[1] for u, pair in self.shares.items() if u in dropped}
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
                "view": self.view,
                "masked_with": self.masked_with,
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
            view=(list(d["view"][0]), list(d["view"][1])) if d.get("view") else None,
            masked_with=[int(v) for v in d.get("masked_with", [])],
        )
