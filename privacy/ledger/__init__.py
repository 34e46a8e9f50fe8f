"""A site's privacy ledger: an append-only, hash-chained, Ed25519-signed record of
every private release computed on the site's data.

- :mod:`.entries`: what an entry records (:class:`LedgerEntry`, :class:`Mechanism`).
- :mod:`.chain`: the hash chain, the signed head and their verification (the
  integrity argument), from the database or from an export alone.
- :mod:`.reader`: :class:`LedgerReader`, read-only access (auditors, the CLI, the
  audit); it holds no private key and cannot write.
- :mod:`.writer`: :class:`SiteLedger`, the site's writable ledger and its key.
"""

from .chain import GENESIS_HASH, entry_hash, verify_chain, verify_export
from .entries import (
    Head,
    LedgerEntry,
    LedgerError,
    Mechanism,
    RecordedEntry,
    VerifyReport,
)
from .reader import DB_NAME, PUBLIC_KEY_NAME, LedgerReader
from .writer import KEY_NAME, SiteLedger

__all__ = [
    "DB_NAME",
    "GENESIS_HASH",
    "KEY_NAME",
    "PUBLIC_KEY_NAME",
    "Head",
    "LedgerEntry",
    "LedgerError",
    "LedgerReader",
    "Mechanism",
    "RecordedEntry",
    "SiteLedger",
    "VerifyReport",
    "entry_hash",
    "verify_chain",
    "verify_export",
]
