"""Read-only access to a site's ledger: what auditors, ``fedshield ledger``, the
audit and run summaries use.

Entries live in SQLite (WAL mode) in the site's state directory. A
:class:`LedgerReader` opens an existing ledger with the database in read-only mode
(``mode=ro``) and the public key ``ledger_key.pub`` alone: it never needs, reads or
creates the private key, creates no file, and has no method that writes, so it runs
on a copy of a site's state directory. The site records releases with
:class:`~.writer.SiteLedger`, which reads the same way.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..budget import Release
from .chain import verify_chain
from .entries import (
    Head,
    LedgerEntry,
    LedgerError,
    Mechanism,
    RecordedEntry,
    VerifyReport,
)

__all__ = ["CLIENT_LEVEL", "DB_NAME", "PUBLIC_KEY_NAME", "LedgerReader"]

# releases that protect whole sites, composed apart from the sample-level ones
CLIENT_LEVEL = (Mechanism.CLIENT_GAUSSIAN, Mechanism.CLIENT_SKELLAM)

DB_NAME = "ledger.sqlite"
PUBLIC_KEY_NAME = "ledger_key.pub"


class LedgerReader:
    """The ledger of one site, in ``state_dir``, opened read-only.

    Raises :class:`LedgerError` when ``state_dir`` holds no ledger (``ledger.sqlite``
    and ``ledger_key.pub``) or the database cannot be read.
    """

    public_key: Ed25519PublicKey

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).expanduser()
        self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        """Load ``public_key`` and open the database read-only."""
        db_path = self.state_dir / DB_NAME
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
        db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            db.execute("SELECT 1 FROM entries LIMIT 1").fetchall()
        except sqlite3.DatabaseError as err:
            db.close()
            raise LedgerError(
                f"{db_path} is not a readable ledger ({err}). If it is a copy, copy "
                f"{DB_NAME}-wal with it (recent entries live there until the site's "
                "process closes the ledger); otherwise restore it from a backup."
            ) from err
        return db

    def public_key_fingerprint(self) -> str:
        """SHA-256 of the raw public key: what an auditor pins."""
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return hashlib.sha256(raw).hexdigest()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            if r.entry.mechanism not in CLIENT_LEVEL
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

    def skellam_history(self, *, run_id: str) -> list[tuple[float, float, float]]:
        """The distributed client-level rounds of one run: ``(l2 sensitivity, l1
        sensitivity, total variance)`` each, integer units (the server's ledger)."""
        rounds = []
        for r in self.entries():
            if (
                r.entry.mechanism is Mechanism.CLIENT_SKELLAM
                and r.entry.run_id == run_id
            ):
                l2, l1, variance = json.loads(r.entry.accountant_state)["round"]
                rounds.append((float(l2), float(l1), float(variance)))
        return rounds
