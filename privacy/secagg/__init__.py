"""Secure aggregation: SecAgg+ (Bell, Bonawitz, Gascon, Lepoint, Raykova, CCS 2020).
The server learns the sum of the sites' inputs and nothing else about any one of
them. SecAgg (Bonawitz et al., CCS 2017) is the special case where every site
shares with every other.

The protocol's pure parts, no Flower imports (``server/secagg.py`` and
``client/secagg_mod.py`` carry its messages over the Flower Grid):

- :mod:`.params`: one round's parameters (participants, holders, threshold,
  modulus) and the protocol's errors;
- :mod:`.client`: a site's state machine (advertise keys, share keys, masked
  input, unmask);
- :mod:`.server`: the server's state machine, which unmasks the sum only;
- :mod:`.masks`: the masks as arithmetic mod 2^k, both sides;
- :mod:`.shamir`, :mod:`.primitives`, :mod:`.quantize`: Shamir sharing, X25519 /
  HKDF / ChaCha20-Poly1305 / ChaCha20 mask expansion, fixed-point quantization;
- :mod:`.config`: the ``secagg.*`` run-config keys.

Threat model (docs/secure-aggregation.md): honest-but-curious server; up to t - 1
sites colluding with it learn nothing beyond the sum; a malicious server that lies
about dropouts, and Sybil sites, are out of scope.

Why our own code: Flower 1.41's SecAgg+ runs only on its legacy API, and its masks
expand 32-bit seeds with ``np.random.RandomState``; here all seeds are 256 bits and
expanded by ChaCha20 (see :mod:`.primitives`).
"""

from .client import ClientSession
from .config import SecAggConfig
from .params import ProtocolError, SecAggAborted, SecAggParams, resolve_count
from .quantize import Encoded, Quantizer, modulus_bits
from .server import ServerSession

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
