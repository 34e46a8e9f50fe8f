"""A site's secrets at rest, sealed with a passphrase from the environment.

A site keeps two secrets in its state directory: the ledger's signing key
(``ledger_key.pem``: whoever holds it can rewrite the site's privacy ledger) and
the pseudonym key (``pii_key``: whoever holds it can test guesses of scrubbed
values). Mode 0600 protects them from other users of the machine, not from a
stolen disk, a backup copied to the wrong place, or a snapshot of the volume.

When ``FEDSHIELD_SECRETS_PASSPHRASE`` is set in the environment of the process
that opens them (the SuperNode's, whose ClientApp processes inherit it; or the
coordinator's, for its central-DP ledger), every such key is stored sealed:

- scrypt (n = 2**15, r = 8, p = 1: about 32 MiB and 0.1 s per opening) derives a
  256-bit key from the passphrase and a random 16-byte salt;
- AES-256-GCM encrypts the secret under a random 12-byte nonce, with the file's
  name and the format tag as associated data, so a sealed ``pii_key`` copied over
  ``ledger_key.pem`` (or any edited byte) fails to open instead of being used.

The passphrase decides, not a setting anyone else sends: with it set, a key found
in clear is refused (``fedshield site seal-secrets DIR`` seals the existing keys,
keeping them the same); without it, a sealed key is refused with what to set.

Why our own envelope: ``cryptography`` seals private keys (PKCS#8, OpenSSH) with a
passphrase but has no format for a raw 32-byte secret such as the pseudonym key;
this module only composes its scrypt and AES-GCM primitives, with one format for
both keys.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .storage import atomic_write_bytes, read_key_file, write_key_file

__all__ = [
    "PASSPHRASE_ENV",
    "SealingError",
    "is_sealed",
    "load_signing_key",
    "passphrase",
    "read_secret",
    "reseal_file",
    "seal",
    "unseal",
    "write_secret",
]

PASSPHRASE_ENV = "FEDSHIELD_SECRETS_PASSPHRASE"
FORMAT = "fedshield-sealed-secret-v1"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_MIN_PASSPHRASE = 12
_PREFIX = ('{\n "format": "' + FORMAT + '"').encode()


class SealingError(RuntimeError):
    """A sealed secret cannot be opened or written as asked."""


def passphrase() -> bytes | None:
    """The passphrase from ``FEDSHIELD_SECRETS_PASSPHRASE``, or None when unset or
    empty. Raises :class:`SealingError` for one too short to resist guessing."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        return None
    if not value.strip():  # e.g. systemd's `Environment=VAR=`, a failed $(cat ...)
        raise SealingError(
            f"{PASSPHRASE_ENV} is set but blank; expected the passphrase that seals "
            "this site's keys. Set it, or unset the variable to keep them in clear."
        )
    if len(value) < _MIN_PASSPHRASE:
        raise SealingError(
            f"{PASSPHRASE_ENV} holds {len(value)} characters; expected at least "
            f"{_MIN_PASSPHRASE} (a stolen disk lets anyone guess offline). Choose "
            "a longer passphrase, or unset the variable to keep the keys in clear."
        )
    return value.encode()


def _aad(purpose: str) -> bytes:
    return f"{FORMAT}:{purpose}".encode()


def _kdf(salt: bytes, n: int, r: int, p: int) -> Scrypt:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p)


def seal(secret: bytes, secret_passphrase: bytes, *, purpose: str) -> bytes:
    """``secret`` sealed under ``secret_passphrase``, bound to ``purpose`` (the
    file's name), as a small JSON document."""
    salt, nonce = os.urandom(16), os.urandom(12)
    key = _kdf(salt, **_SCRYPT).derive(secret_passphrase)
    ciphertext = AESGCM(key).encrypt(nonce, secret, _aad(purpose))
    doc = {  # "format" first: is_sealed() recognizes the document by it
        "format": FORMAT,
        "purpose": purpose,
        "kdf": {"name": "scrypt", **_SCRYPT},
        "salt": base64.b64encode(salt).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def is_sealed(data: bytes) -> bool:
    """Whether ``data`` is a sealed secret (of any purpose), intact or damaged:
    :func:`seal`'s output starts with its format tag, so a truncated or edited
    document is still taken as sealed (and :func:`unseal` says it is damaged),
    never as a key in clear."""
    return data.startswith(_PREFIX)


def unseal(data: bytes, secret_passphrase: bytes, *, purpose: str) -> bytes:
    """The secret that :func:`seal` sealed for ``purpose``. Raises
    :class:`SealingError` for a wrong passphrase, another purpose's secret, or a
    changed byte (AES-GCM cannot tell these apart, and says so)."""
    try:
        doc = json.loads(data)
        if doc["format"] != FORMAT or doc["kdf"] != {"name": "scrypt", **_SCRYPT}:
            raise ValueError(f"format {doc['format']!r}, kdf {doc['kdf']!r}")
        salt = base64.b64decode(doc["salt"], validate=True)
        nonce = base64.b64decode(doc["nonce"], validate=True)
        ciphertext = base64.b64decode(doc["ciphertext"], validate=True)
        if len(salt) != 16 or len(nonce) != 12:
            raise ValueError(f"a {len(salt)}-byte salt, a {len(nonce)}-byte nonce")
        key = _kdf(salt, **_SCRYPT).derive(secret_passphrase)
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise SealingError(
            f"Expected a sealed secret ({FORMAT}); found a damaged document "
            f"({err!r}). Restore the file from a backup."
        ) from err
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, _aad(purpose))
    except InvalidTag:
        # the document's own `purpose` field is not authenticated: a hint only
        sealed_for = doc.get("purpose")
        copied = (
            f", or it holds another key copied over it (it says `{sealed_for}`)"
            if sealed_for != purpose
            else ""
        )
        raise SealingError(
            f"The sealed secret `{purpose}` did not open: either {PASSPHRASE_ENV} is "
            f"not the passphrase it was sealed with, or the file was changed{copied}. "
            "Set the right passphrase, or restore the file from a backup."
        ) from None


def _symlink_refused(path: Path) -> str:
    return (
        f"Expected the key file {path} itself; found a symbolic link to "
        f"{os.readlink(path)}. Sealing it would leave the key in clear at the "
        "link's target: move the key into the state dir instead of linking it."
    )


def _read_key(path: Path, *, error: type[Exception], why: str) -> bytes | None:
    """:func:`storage.read_key_file`, refusing a symbolic link first."""
    if path.is_symlink():
        raise error(_symlink_refused(path))
    return read_key_file(path, error=error, why=why)


def read_secret(path: Path, *, error: type[Exception], why: str) -> bytes | None:
    """The secret in key file ``path`` (mode 0600), unsealed; None when the file
    does not exist. Raises ``error`` when the file is readable by others, sealed
    without the passphrase set, in clear with it set, or does not open."""
    raw = _read_key(path, error=error, why=why)
    if raw is None:
        return None
    try:
        secret_passphrase = passphrase()
        if is_sealed(raw):
            if secret_passphrase is None:
                raise SealingError(
                    f"{path} is sealed with a passphrase; set {PASSPHRASE_ENV} in "
                    "the environment of the process that opens it (the SuperNode's, "
                    "for a site)."
                )
            return unseal(raw, secret_passphrase, purpose=path.name)
        if secret_passphrase is not None:
            raise SealingError(
                f"{path} is stored in clear, but {PASSPHRASE_ENV} is set, so this "
                "site expects its secrets sealed. Seal the existing keys (they stay "
                f"the same) with `fedshield site seal-secrets {path.parent}`, or "
                "unset the variable."
            )
        return raw
    except SealingError as err:
        raise error(str(err)) from err


def write_secret(path: Path, secret: bytes, *, error: type[Exception]) -> None:
    """Create key file ``path`` (0600, never over an existing one), sealed when
    the passphrase is set."""
    try:
        secret_passphrase = passphrase()
    except SealingError as err:
        raise error(str(err)) from err
    data = (
        secret
        if secret_passphrase is None
        else seal(secret, secret_passphrase, purpose=path.name)
    )
    write_key_file(path, data)


def reseal_file(path: Path, *, to_sealed: bool, secret_passphrase: bytes) -> bool:
    """Seal key file ``path`` in place (``to_sealed``) or open it back to clear.
    The key itself never changes: the new file is written beside it (0600),
    checked to give the same secret, then renamed over it. Returns False when the
    file was already in the asked form."""
    raw = _read_key(path, error=SealingError, why="it is a site secret")
    if raw is None:
        raise SealingError(f"Expected a key file at {path}; found nothing.")
    if is_sealed(raw):  # must open with this passphrase, whichever way it goes
        opened = unseal(raw, secret_passphrase, purpose=path.name)
        if to_sealed:
            return False
        atomic_write_bytes(path, opened)
        return True
    if not to_sealed:
        return False
    new = seal(raw, secret_passphrase, purpose=path.name)
    if unseal(new, secret_passphrase, purpose=path.name) != raw:
        raise SealingError(f"Sealing {path} did not round-trip; nothing changed.")
    atomic_write_bytes(path, new)
    return True


def load_signing_key(
    path: Path, *, error: type[Exception], why: str
) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (PKCS#8 PEM; sealed when the passphrase
    is set), made on first use; raises ``error`` (``why``: what a leak allows)."""
    pem = read_secret(path, error=error, why=why)
    if pem is not None:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except ValueError as err:
            raise error(f"{path} is not a PEM private key ({err}).") from err
        if not isinstance(key, Ed25519PrivateKey):
            raise error(f"{path} is not an Ed25519 private key.")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret(path, pem, error=error)
    return key
