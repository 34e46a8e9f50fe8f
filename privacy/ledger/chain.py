"""The ledger's integrity: a hash chain of Ed25519-signed entries under a signed head,
and its verification, from the database or from an export alone.

Entry ``k`` stores ``h_k = SHA-256(canonical JSON of (k, h_{k-1}, fields))`` with
``h_0`` = 64 zeros, and ``sig_k = Ed25519_sign(key, h_k)``. A signed *head*
``(n, h_n)`` is rewritten in the same transaction as every append. So an edited
entry breaks its hash, a deleted or reordered one breaks the chain (or the head,
for the last entry), and a swapped or forged signature fails verification against
the site's public key. Whoever holds the site's private key (``ledger_key.pem``) can
rewrite history; the ledger proves integrity against everyone else, and an exported
public key lets auditors check exports.

Why our own code: no maintained library offers a signed, hash-chained DP ledger;
the primitives (SHA-256, Ed25519) are the ``cryptography`` package's.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .entries import Head, LedgerEntry, RecordedEntry, VerifyReport

__all__ = [
    "GENESIS_HASH",
    "entry_hash",
    "head_message",
    "verify_chain",
    "verify_export",
]

GENESIS_HASH = "0" * 64


def entry_hash(seq: int, prev_hash: str, entry: LedgerEntry) -> str:
    """SHA-256 of the canonical JSON of (seq, previous hash, fields)."""
    payload = {"seq": seq, "prev": prev_hash, **entry.canonical()}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def head_message(seq: int, head: str) -> bytes:
    """What the head's signature signs (never the bare entry hash an entry signs)."""
    return f"head:{seq}:{head}".encode()


def verify_chain(
    recorded: list[RecordedEntry], head: Head | None, public_key: Ed25519PublicKey
) -> VerifyReport:
    """Check hashes, links, signatures and the signed head of ``recorded``."""
    problems: list[str] = []
    prev, expected = GENESIS_HASH, 1
    for rec in recorded:
        if rec.seq != expected:
            problems.append(
                f"entries {expected}..{rec.seq - 1} are missing (deleted)"
                if rec.seq > expected
                else f"entry {rec.seq} is out of order"
            )
        if entry_hash(rec.seq, rec.prev_hash, rec.entry) != rec.entry_hash:
            problems.append(f"entry {rec.seq} was edited (contents != its hash)")
        if rec.prev_hash != prev:
            problems.append(
                f"entry {rec.seq} does not follow the entry before it "
                "(an entry was deleted, inserted or reordered)"
            )
        try:
            public_key.verify(rec.signature, bytes.fromhex(rec.entry_hash))
        except (InvalidSignature, TypeError, ValueError):  # TypeError: not bytes
            problems.append(f"entry {rec.seq} has an invalid signature")
        prev, expected = rec.entry_hash, rec.seq + 1
    last_seq = recorded[-1].seq if recorded else 0
    if head is None:
        if recorded:
            problems.append("the signed head is missing (edited)")
    else:
        try:
            public_key.verify(head.signature, head_message(head.seq, head.entry_hash))
        except (InvalidSignature, TypeError):  # TypeError: a signature stored as text
            problems.append("the ledger head has an invalid signature")
        if head.seq != last_seq or head.entry_hash != prev:
            problems.append(
                f"the signed head names entry {head.seq} but the ledger ends at entry "
                f"{last_seq}: trailing entries were deleted or added"
            )
    return VerifyReport(entries=len(recorded), problems=tuple(problems))


def verify_export(
    doc: dict[str, Any], *, expected_key_sha256: str | None = None
) -> VerifyReport:
    """Verify an exported ledger (:meth:`LedgerReader.export`) with nothing else.

    The export carries its own public key, so pin it: pass the fingerprint the site
    published (``expected_key_sha256``); otherwise a forger could re-sign a
    rewritten export with a key of their own.
    """
    try:
        key = serialization.load_pem_public_key(doc["public_key_pem"].encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 key")
        recorded = []
        for item in doc["entries"]:
            fields = {
                k: v
                for k, v in item.items()
                if k not in ("seq", "prev_hash", "entry_hash", "signature")
            }
            recorded.append(
                RecordedEntry(
                    int(item["seq"]),
                    LedgerEntry.from_canonical(fields),
                    str(item["prev_hash"]),
                    str(item["entry_hash"]),
                    bytes.fromhex(item["signature"]),
                )
            )
        raw_head = doc["head"]
        head = (
            None
            if raw_head is None
            else Head(
                int(raw_head["seq"]),
                str(raw_head["entry_hash"]),
                bytes.fromhex(raw_head["signature"]),
            )
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return VerifyReport(0, (f"the export is malformed ({err!r})",))
    problems: list[str] = []
    raw_key = key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    actual = hashlib.sha256(raw_key).hexdigest()
    if expected_key_sha256 is not None and actual != expected_key_sha256.lower():
        problems.append(
            f"the export is signed by key {actual}, not the expected "
            f"{expected_key_sha256}"
        )
    report = verify_chain(recorded, head, key)
    return VerifyReport(report.entries, (*problems, *report.problems))
