"""What the server and every site agree on for one SecAgg+ round: its parameters
(participants, holders, threshold, quantization, modulus) and the protocol's errors.

Parameters: n participants U0 (sorted node ids), each with a set of *holders*
H(u): u and its ``num_shares - 1`` nearest ring neighbours (a Harary graph,
symmetric; the complete graph when ``num_shares >= n``), and a threshold t >= 2
(one share alone would be the secret). The modulus 2^k is wide enough that the sum
of all n quantized inputs cannot wrap.
"""

from __future__ import annotations

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
