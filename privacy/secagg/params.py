"""What the server and every site agree on for one SecAgg+ round: its parameters
(participants, holders, threshold, quantization, modulus) and the protocol's errors.

Parameters: n participants U0 (sorted node ids), each with a set of *holders*
H(u): u and its ``num_shares - 1`` nearest ring neighbours (a Harary graph,
symmetric; the complete graph when ``num_shares >= n``), and a threshold t with
|H(u)| / 2 < t <= |H(u)| and t >= 2 (one share alone would be the secret). The
modulus 2^k is wide enough that the sum of all n quantized inputs cannot wrap.

Why t must exceed half of the holders: each holder reveals, for each owner u, the
share of u's self-mask seed (if told "u survived") or of u's mask key (if told "u
dropped"), never both. A server that tells some holders one thing and the others
the other gets both secrets, and so u's input, as soon as two disjoint groups of t
holders exist, i.e. when 2t <= |H(u)|. With t > |H(u)| / 2 they cannot.

The sites only take part in rounds with the complete graph (``client/secagg_mod.py``):
in a sparse ring, t - 1 colluding neighbours of u that stay while its other
neighbours drop cut u off from the rest of the survivors' graph, and the server
then legitimately unmasks u's piece of it, which is u's input.

Every message that carries key material is bound to :attr:`SecAggParams.transcript`
(a hash of all the parameters), so a server that hands different sites different
parameters gets ciphertexts that fail authentication, not a weaker round.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

from .quantize import Quantizer, modulus_bits

__all__ = [
    "Keys",
    "ProtocolError",
    "SecAggAborted",
    "SecAggParams",
    "resolve_count",
]

Keys = dict[int, tuple[bytes, bytes]]  # node -> (c_pk, s_pk)


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
        # t > h/2 with h >= 2 holders also makes t >= 2 (one share is the secret)
        if not (
            self.threshold <= self.holders_count
            and 2 * self.threshold > self.holders_count
        ):
            raise ProtocolError(
                f"The threshold must be more than half of the {self.holders_count} "
                f"holders per site and at least 2, i.e. in "
                f"[{max(2, self.holders_count // 2 + 1)}, {self.holders_count}]. "
                f"Found {self.threshold}."
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
    def transcript(self) -> bytes:
        """SHA-256 of every parameter: what the share ciphertexts are bound to."""
        return hashlib.sha256(self.to_json().encode()).digest()

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
