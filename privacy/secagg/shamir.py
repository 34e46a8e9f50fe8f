"""Shamir secret sharing (Shamir 1979) of 32-byte secrets over GF(p), p = 2^521 - 1.

A secret s (a 256-bit integer < p) is the constant term of a random polynomial
f(x) = s + a_1 x + ... + a_{t-1} x^{t-1} over GF(p) with coefficients from the OS
CSPRNG (``secrets``); holder i gets (i, f(i)) for i = 1..n. Any t shares give s by
Lagrange interpolation at 0; any t - 1 shares are consistent with *every* secret
(for each candidate s' exactly one polynomial of degree t - 1 passes through (0, s')
and the t - 1 points), so they reveal nothing about s.

p = 2^521 - 1 is a Mersenne prime far above 2^256, so every 32-byte secret is a
field element. Why our own code: the maintained Python packages for Shamir sharing
either fix small fields or pull in unvetted dependencies; the math is 40 lines and
is tested against the properties above.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

__all__ = ["PRIME", "SHARE_BYTES", "combine", "split"]

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8): one field element
SECRET_BYTES = 32


def split(secret: bytes, *, num_shares: int, threshold: int) -> list[tuple[int, bytes]]:
    """``num_shares`` shares ``(x, y)`` of ``secret`` (32 bytes), any ``threshold``
    of which reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"Shamir secrets are {SECRET_BYTES} bytes; got {len(secret)}.")
    if not 1 <= threshold <= num_shares:
        raise ValueError(
            f"threshold must be in [1, num_shares={num_shares}]. Found {threshold}."
        )
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    shares = []
    for x in range(1, num_shares + 1):
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append((x, y.to_bytes(SHARE_BYTES, "big")))
    return shares


def combine(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """The secret from ``threshold`` (or more) distinct shares.

    With fewer than the threshold the result is a wrong, unrelated value: callers
    must count shares themselves (the protocol does)."""
    points = {}
    for x, y in shares:
        if not 0 < x < PRIME or len(y) != SHARE_BYTES:
            raise ValueError(f"Malformed Shamir share (x={x}, {len(y)} bytes).")
        points[x] = int.from_bytes(y, "big")
    if not points:
        raise ValueError("No shares to combine.")
    secret = 0
    for xi, yi in points.items():
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ValueError(
            "The shares do not reconstruct a 32-byte secret (too few or corrupt "
            "shares)."
        )
    return secret.to_bytes(SECRET_BYTES, "big")
