"""Cryptographic primitives of the protocol, all from the ``cryptography`` package.

- Key agreement: X25519; the 32-byte shared secret is expanded with HKDF-SHA256
  under a label, so one agreement yields independent keys for different purposes.
- Share encryption: ChaCha20-Poly1305 (AEAD) with a random 96-bit nonce and
  associated data binding the session id, sender and receiver, so a ciphertext
  replayed from another round or delivered to the wrong site fails to decrypt.
- Mask expansion: the ChaCha20 keystream under a full 256-bit seed (nonce fixed to
  zero: each seed is used for one mask only) read as little-endian unsigned
  integers and reduced mod 2^k (k <= 64 bits, a power-of-two modulus, so the
  reduction is uniform). No numpy or ``random`` generator is involved; Flower 1.41
  seeds ``np.random.RandomState`` with 32 bits here, which a server can search.
- Private randomness (rounding coins, DP noise): :class:`Uniforms`, the ChaCha20
  keystream under a fresh ``os.urandom(32)`` key and random nonce, never stored or
  sent. A stream cipher's keystream is a CSPRNG; OpenSSL's ChaCha20 makes it about
  four times as fast as reading ``os.urandom`` for the same bytes.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "DecryptionError",
    "KeyPair",
    "Uniforms",
    "agree",
    "decrypt",
    "encrypt",
    "expand_mask",
    "new_keypair",
    "private_from_bytes",
]

_RAW = serialization.Encoding.Raw


class DecryptionError(ValueError):
    """A ciphertext failed authentication: tampered, replayed or misaddressed."""


class KeyPair:
    """An X25519 key pair; ``private`` and ``public`` are 32 raw bytes each."""

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self.private = key.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        self.public = key.public_key().public_bytes(
            _RAW, serialization.PublicFormat.Raw
        )


def new_keypair() -> KeyPair:
    return KeyPair(X25519PrivateKey.generate())


def private_from_bytes(raw: bytes) -> KeyPair:
    return KeyPair(X25519PrivateKey.from_private_bytes(raw))


def agree(private: bytes, peer_public: bytes, *, label: bytes) -> bytes:
    """32-byte key = HKDF-SHA256(X25519(private, peer_public), info=label)."""
    if len(peer_public) != 32:
        raise ValueError(f"X25519 public keys are 32 bytes; got {len(peer_public)}.")
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(
        shared
    )


def encrypt(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, ciphertext: bytes, *, aad: bytes) -> bytes:
    if len(ciphertext) < 12 + 16:
        raise DecryptionError("ciphertext too short")
    try:
        return ChaCha20Poly1305(key).decrypt(ciphertext[:12], ciphertext[12:], aad)
    except InvalidTag as err:
        raise DecryptionError("authentication failed") from err


def _keystream(encryptor: CipherContext, nbytes: int) -> np.ndarray:
    """The next ``nbytes`` of a stream cipher's keystream, as uint8 (it encrypts
    zeros into a fresh numpy buffer: a third of the time ``update`` takes to
    allocate its output)."""
    out = np.empty(nbytes + 63, dtype=np.uint8)  # update_into: + block size - 1
    written = encryptor.update_into(np.zeros(nbytes, dtype=np.uint8).data, out.data)
    if written != nbytes:
        raise RuntimeError(f"the cipher wrote {written} of {nbytes} keystream bytes")
    return out[:nbytes]


class Uniforms:
    """53-bit uniforms in [0, 1) from a ChaCha20 keystream keyed by os.urandom(32)."""

    def __init__(self) -> None:
        nonce = bytes(4) + os.urandom(12)  # block counter 0, random nonce
        cipher = Cipher(algorithms.ChaCha20(os.urandom(32), nonce), mode=None)
        self._stream = cipher.encryptor()

    def words(self, n: int) -> np.ndarray:
        """``n`` uniform 64-bit words."""
        return _keystream(self._stream, 8 * n).view("<u8").astype(np.uint64, copy=False)

    def draw(self, n: int) -> np.ndarray:
        """``n`` uniforms on the grid ``k / 2^53`` in [0, 1)."""
        out = (self.words(n) >> np.uint64(11)).astype(np.float64)
        out *= 2.0**-53
        return out  # (n,)


def expand_mask(seed: bytes, length: int, *, bits: int) -> np.ndarray:
    """``length`` uniform integers mod 2^bits from the ChaCha20 keystream of
    ``seed`` (32 bytes); dtype uint32 for bits <= 32, else uint64."""
    if len(seed) != 32:
        raise ValueError(f"Mask seeds are 32 bytes; got {len(seed)}.")
    if not 1 <= bits <= 64:
        raise ValueError(f"Mask modulus bits must be in [1, 64]. Found {bits}.")
    dtype = np.uint32 if bits <= 32 else np.uint64
    nbytes = length * np.dtype(dtype).itemsize
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    stream = _keystream(encryptor, nbytes)
    values: np.ndarray = stream.view(np.dtype(dtype).newbyteorder("<")).astype(
        dtype, copy=False
    )
    width = np.dtype(dtype).itemsize * 8
    if bits < width:
        values = np.bitwise_and(values, dtype((1 << bits) - 1))
    return values
