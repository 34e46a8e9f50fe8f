"""The server's side of a SecAgg+ round: it collects keys, share ciphertexts,
masked inputs and revealed shares, checks each message, and unmasks the SUM only.

The server never holds a site's input: only masked inputs, public keys, share
ciphertexts it cannot read and, after stage 4, the secrets needed to remove the
masks from the survivors' sum (:mod:`.masks`). Dropouts: any site may drop after
stage 2 (one that drops while keys are shared aborts the round: every site masks
with every site of the roster, or not at all); the round completes while at least t
holders of every needed secret reply, and in particular while |U2| >= t. Before any
share is revealed, the survivors confirm to each other, by pairwise tags the server
relays, that they were all told the same survivors and dropouts. Otherwise
:class:`SecAggAborted` is raised and nothing is unmasked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .masks import unmask_sum
from .params import Keys, ProtocolError, SecAggAborted, SecAggParams
from .shamir import SHARE_BYTES, combine

__all__ = ["ServerSession"]


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
    tags: dict[int, dict[int, bytes]] = field(default_factory=dict)  # signer->w->tag
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

    # stage 4: consistency
    def receive_tags(self, node: int, tags: dict[int, bytes]) -> None:
        """A survivor's tags of its view, one per other survivor."""
        survivors = set(self.masked)
        if node not in survivors:
            raise ProtocolError(f"consistency: node {node} is not a survivor.")
        if node in self.tags:
            raise ProtocolError(f"consistency: node {node} replied twice (replay?).")
        if set(tags) != survivors - {node} or any(len(t) != 32 for t in tags.values()):
            raise ProtocolError(
                f"consistency: node {node} tagged {sorted(tags)}, expected the other "
                f"survivors {sorted(survivors - {node})}."
            )
        self.tags[node] = dict(tags)

    def tags_for(self, node: int) -> dict[int, bytes]:
        """The tags other survivors addressed to ``node``."""
        self._require(len(self.tags), "the consistency check")
        return {w: t[node] for w, t in self.tags.items() if w != node and node in t}

    # stage 5
    def receive_unmask(
        self, node: int, b_shares: dict[int, bytes], s_shares: dict[int, bytes]
    ) -> None:
        survivors, dropped = set(self.masked), set(self.ciphertexts) - set(self.masked)
        if node not in survivors or node not in self.tags:
            raise ProtocolError(
                f"unmask: node {node} is not a survivor that confirmed the view."
            )
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
        total = unmask_sum(
            params=p,
            masked=self.masked,
            self_seeds={
                u: combine(list(self.revealed_b[u].items())) for u in survivors
            },
            dropped_mask_keys={
                u: combine(list(self.revealed_s[u].items())) for u in dropped
            },
            mask_keys={v: self.keys[v][1] for v in survivors},
        )
        return total, survivors
