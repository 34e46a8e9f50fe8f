"""The site's own, writable ledger: it appends one signed entry per release.

Only the site (and the server, for its client-level ledger) opens a
:class:`SiteLedger`. On first use it creates the state directory, the Ed25519
private key ``ledger_key.pem`` (mode 0600, sealed with the site's passphrase when
it set one; anyone holding it can rewrite the ledger), its public half
``ledger_key.pub`` and the database. Every append writes the entry and rewrites
the signed head in one transaction (:mod:`.chain`), so a crash leaves either both
or neither. Everyone else reads with
:class:`~.reader.LedgerReader`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedshield.common.sealing import load_signing_key

from .chain import GENESIS_HASH, entry_hash, head_message
from .entries import LedgerEntry, LedgerError, RecordedEntry
from .reader import DB_NAME, PUBLIC_KEY_NAME, LedgerReader

__all__ = ["KEY_NAME", "SiteLedger"]

KEY_NAME = "ledger_key.pem"


def _load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    """The ledger's signing key, sealed at rest when the site set a passphrase
    (:mod:`fedshield.common.sealing`)."""
    return load_signing_key(
        state_dir / KEY_NAME,
        error=LedgerError,
        why="anyone with this key can rewrite the ledger",
    )


class SiteLedger(LedgerReader):
    """The ledger of one site, in ``state_dir``, opened for appending (and reading).

    Creates the directory, key and database on first use.
    """

    _key: Ed25519PrivateKey

    def _connect(self) -> sqlite3.Connection:
        """Create what is missing, load the private key, open the database."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LedgerError(
                f"Cannot create the site state directory {self.state_dir} "
                f"({err}). Set `state-dir` in the node config to a writable "
                "directory."
            ) from err
        self._key = _load_or_create_key(self.state_dir)
        self.public_key = self._key.public_key()
        self._check_public_key_file()
        db = sqlite3.connect(self.state_dir / DB_NAME, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY, "
            "body TEXT NOT NULL, prev_hash TEXT NOT NULL, entry_hash TEXT NOT "
            "NULL, signature BLOB NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK "
            "(id = 1), seq INTEGER NOT NULL, entry_hash TEXT NOT NULL, "
            "signature BLOB NOT NULL)"
        )
        return db

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
                (seq, digest, key.sign(head_message(seq, digest))),
            )
        return RecordedEntry(seq, entry, prev, digest, signature)
