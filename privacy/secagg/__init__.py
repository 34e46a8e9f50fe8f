"""Secure aggregation (SecAgg+), the protocol's pure parts: Shamir sharing, X25519 /
HKDF / ChaCha20-Poly1305 / ChaCha20 mask expansion, fixed-point quantization, and the
client and server state machines. No Flower imports; see ``server/secagg.py`` and
``client/secagg_mod.py`` for the transport."""

from .config import SecAggConfig
from .protocol import (
    ClientSession,
    ProtocolError,
    SecAggAborted,
    SecAggParams,
    ServerSession,
    resolve_count,
)
from .quantize import Encoded, Quantizer, modulus_bits

__all__ = [
    "ClientSession",
    "Encoded",
    "ProtocolError",
    "Quantizer",
    "SecAggAborted",
    "SecAggConfig",
    "SecAggParams",
    "ServerSession",
    "modulus_bits",
    "resolve_count",
]
