"""A site's privacy ledger: an append-only, hash-chained, Ed25519-signed record of
every private release computed on the site's data.

Each entry records one release: run, round, dataset fingerprint, mechanism, noise
multiplier, sample rate, steps, delta, accountant kind and serialised state, the
epsilon after the entry, and a UTC timestamp. Entries live in SQLite (WAL mode) in
the site's state directory.

Integrity. Entry ``k`` stores ``h_k = SHA-256(canonical JSON of (k, h_{k-1},
fields))`` with ``h_0`` = 64 zeros, and ``sig_k = Ed25519_sign(key, h_k)``. A signed
*head* ``(n, h_n)`` is rewritten in the same transaction as every append. So an
edited entry breaks its hash, a deleted or reordered one breaks the chain (or the
head, for the last entry), and a swapped or forged signature fails verification
against the site's public key. Whoever holds the site's private key
(``ledger_key.pem``, created on first use with mode 0600) can rewrite history; the
ledger proves integrity against everyone else, and an exported public key lets
auditors check exports.

Why our own code: no maintained library offers a signed, hash-chained DP ledger;
the primitives (SHA-256, Ed25519) are the ``cryptography`` package's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .budget import Release

__all__ = [
    "GENESIS_HASH",
    "Head",
    "LedgerEntry",
    "LedgerError",
    "Mechanism",
    "RecordedEntry",
    "SiteLedger",
    "VerifyReport",
    "verify_chain",
    "verify_export",
]

GENESIS_HASH = "0" * 64
DB_NAME = "ledger.sqlite"
KEY_NAME = "ledger_key.pem"
PUBLIC_KEY_NAME = "ledger_key.pub"


class LedgerError(RuntimeError):
    """The ledger cannot be opened or written; the message says what to do."""


class Mechanism(StrEnum):
    """What a release protects: one record (sample-level) or one site (client-level)."""

    DP_SGD = "dp-sgd"  # sample-level: subsampled Gaussian on per-record gradients
    CLIENT_GAUSSIAN = "client-gaussian"  # client-level: Gaussian on clipped updates
    NON_PRIVATE = "non-private"  # dp.enabled=false: the update itself (epsilon inf)


@dataclass(frozen=True)
class LedgerEntry:
    """One private release, as the site's accountant saw it."""

    run_id: str
    server_round: int
    dataset_fingerprint: str
    mechanism: Mechanism
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    accountant_state: str
    epsilon: float  # cumulative over the entry's scope after it; inf if non-private
    timestamp: str
    max_epsilon: float = 0.0  # the site's budget when it was recorded; 0 = none

    @property
    def release(self) -> Release:
        return Release(self.noise_multiplier, self.sample_rate, self.steps)

    def canonical(self) -> dict[str, Any]:
        """JSON-safe fields (infinite epsilon as the string "inf")."""
        fields = asdict(self)
        fields["mechanism"] = self.mechanism.value
        if math.isinf(self.epsilon):
            fields["epsilon"] = "inf"
        return fields

    @classmethod
    def from_canonical(cls, fields: dict[str, Any]) -> LedgerEntry:
        fields = dict(fields)
        fields["mechanism"] = Mechanism(fields["mechanism"])
        if fields["epsilon"] == "inf":
            fields["epsilon"] = math.inf
        return cls(**fields)


@dataclass(frozen=True)
class RecordedEntry:
    seq: int
    entry: LedgerEntry
    prev_hash: str
    entry_hash: str
    signature: bytes


@dataclass(frozen=True)
class Head:
    """The signed ``(seq, hash)`` of the last entry."""

    seq: int
    entry_hash: str
    signature: bytes


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def entry_hash(seq: int, prev_hash: str, entry: LedgerEntry) -> str:
    """SHA-256 of the canonical JSON of (seq, previous hash, fields)."""
    payload = {"seq": seq, "prev": prev_hash, **entry.canonical()}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _head_message(seq: int, head: str) -> bytes:
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
            public_key.verify(head.signature, _head_message(head.seq, head.entry_hash))
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
    """Verify an exported ledger (:meth:`SiteLedger.export`) with nothing else.

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


def _load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    path = state_dir / KEY_NAME
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise LedgerError(
                f"The ledger key {path} is readable by others (mode {mode:o}). Run "
                f"`chmod 600 {path}`; anyone with this key can rewrite the ledger."
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise LedgerError(f"{path} is not an Ed25519 private key.")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


class SiteLedger:
    """The ledger of one site, in ``state_dir``.

    ``writable=True`` (the site itself): creates the directory, key and database
    on first use. ``writable=False`` (auditors, ``fedshield ledger``): opens an
    existing ledger read-only and checks signatures with ``ledger_key.pub`` alone,
    so no private key is needed or created.
    """

    def __init__(self, state_dir: Path, *, writable: bool = True) -> None:
        self.state_dir = Path(state_dir).expanduser()
        db_path = self.state_dir / DB_NAME
        self._key: Ed25519PrivateKey | None = None
        if writable:
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise LedgerError(
                    f"Cannot create the site state directory {self.state_dir} "
                    f"({err}). Set `state-dir` in the node config to a writable "
                    "directory."
                ) from err
            self._key = _load_or_create_key(self.state_dir)
            self.public_key: Ed25519PublicKey = self._key.public_key()
            self._check_public_key_file()
            self._db = sqlite3.connect(db_path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY, "
                "body TEXT NOT NULL, prev_hash TEXT NOT NULL, entry_hash TEXT NOT "
                "NULL, signature BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK "
                "(id = 1), seq INTEGER NOT NULL, entry_hash TEXT NOT NULL, "
                "signature BLOB NOT NULL)"
            )
            return
        pub = self.state_dir / PUBLIC_KEY_NAME
        missing = [p for p in (db_path, pub) if not p.is_file()]
        if missing:
            raise LedgerError(
                f"No site ledger in {self.state_dir}: expected {DB_NAME} and "
                f"{PUBLIC_KEY_NAME}, missing {', '.join(p.name for p in missing)}. "
                "Point --site-dir at the site's `state-dir` (in a simulation: "
                "<out-dir>/sites/<site>)."
            )
        key = serialization.load_pem_public_key(pub.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise LedgerError(f"{pub} is not an Ed25519 public key.")
        self.public_key = key
        self._db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            self._db.execute("SELECT 1 FROM entries LIMIT 1").fetchall()
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise LedgerError(
                f"{db_path} is not a readable ledger ({err}). If it is a copy, copy "
                f"{DB_NAME}-wal with it (recent entries live there until the site's "
                "process closes the ledger); otherwise restore it from a backup."
            ) from err

    def _check_public_key_file(self) -> None:
        pub = self.state_dir / PUBLIC_KEY_NAME
        mine = self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not pub.exists():
            pub.write_bytes(mine)
        elif pub.read_bytes() != mine:
            raise LedgerError(
                f"{pub} does not match the site's private key {KEY_NAME}. Someone "
                "replaced one of them; restore both from a backup before training."
            )

    def public_key_fingerprint(self) -> str:
        """SHA-256 of the raw public key: what an auditor pins."""
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return hashlib.sha256(raw).hexdigest()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SiteLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")  # one writer at a time
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def append(self, entry: LedgerEntry) -> RecordedEntry:
        """Record ``entry`` durably (committed before this returns)."""
        if self._key is None:
            raise LedgerError(f"The ledger in {self.state_dir} was opened read-only.")
        key = self._key
        with self._transaction() as db:
            row = db.execute("SELECT seq, entry_hash FROM head WHERE id = 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS_HASH)
            digest = entry_hash(seq, prev, entry)
            signature = key.sign(bytes.fromhex(digest))
            body = json.dumps(entry.canonical(), sort_keys=True, allow_nan=False)
            db.execute(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                (seq, body, prev, digest, signature),
            )
            db.execute(
                "INSERT OR REPLACE INTO head VALUES (1, ?, ?, ?)",
                (seq, digest, key.sign(_head_message(seq, digest))),
            )
        return RecordedEntry(seq, entry, prev, digest, signature)

    def entries(self) -> list[RecordedEntry]:
        rows = self._db.execute(
            "SELECT seq, body, prev_hash, entry_hash, signature FROM entries "
            "ORDER BY seq"
        ).fetchall()
        out = []
        for seq, body, prev, digest, sig in rows:
            entry = LedgerEntry.from_canonical(json.loads(body))
            out.append(RecordedEntry(seq, entry, prev, digest, sig))
        return out

    def head(self) -> Head | None:
        row = self._db.execute("SELECT seq, entry_hash, signature FROM head").fetchone()
        if row is None:
            return None
        sig = row[2]  # a BLOB; text written by someone else fails verification
        return Head(int(row[0]), str(row[1]), sig if isinstance(sig, bytes) else b"")

    def verify(self) -> VerifyReport:
        """Check every hash, link, signature and the signed head; name each problem."""
        try:
            recorded = self.entries()
        except (ValueError, TypeError, KeyError) as err:
            return VerifyReport(0, (f"an entry cannot be decoded ({err}): edited",))
        return verify_chain(recorded, self.head(), self.public_key)

    def export(self) -> dict[str, Any]:
        """Everything an auditor needs to check the ledger offline
        (:func:`verify_export`): entries with hashes and signatures, the signed
        head and the public key."""
        head = self.head()
        return {
            "format": "fedshield-ledger/1",
            "public_key_pem": self.public_key.public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            ).decode(),
            "public_key_sha256": self.public_key_fingerprint(),
            "head": None
            if head is None
            else {
                "seq": head.seq,
                "entry_hash": head.entry_hash,
                "signature": head.signature.hex(),
            },
            "entries": [
                {
                    "seq": r.seq,
                    "prev_hash": r.prev_hash,
                    "entry_hash": r.entry_hash,
                    "signature": r.signature.hex(),
                    **r.entry.canonical(),
                }
                for r in self.entries()
            ],
        }

    def history(
        self, *, dataset_fingerprint: str | None, run_id: str | None = None
    ) -> list[Release]:
        """Every sample-level release (DP-SGD or non-private) on one dataset across
        all runs (``dataset_fingerprint=None``: on any of the site's datasets;
        ``run_id``: only that run): what an accountant composes into the data's
        cumulative epsilon. Client-level entries protect whole sites and are
        composed separately (:meth:`client_history`)."""
        return [
            r.entry.release
            for r in self.entries()
            if r.entry.mechanism is not Mechanism.CLIENT_GAUSSIAN
            and dataset_fingerprint in (None, r.entry.dataset_fingerprint)
            and run_id in (None, r.entry.run_id)
        ]

    def client_history(self, *, run_id: str) -> list[Release]:
        """The client-level releases of one run (the server's ledger)."""
        return [
            r.entry.release
            for r in self.entries()
            if r.entry.mechanism is Mechanism.CLIENT_GAUSSIAN
            and r.entry.run_id == run_id
        ]
