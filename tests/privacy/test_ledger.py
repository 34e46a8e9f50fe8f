import json
import math
import shutil
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants import RDPAccountant

from fedshield.privacy.budget import Release, compose_epsilon
from fedshield.privacy.dp import AccountantKind
from fedshield.privacy.ledger import (
    DB_NAME,
    KEY_NAME,
    PUBLIC_KEY_NAME,
    LedgerEntry,
    LedgerError,
    LedgerReader,
    Mechanism,
    SiteLedger,
    entry_hash,
    verify_export,
)


def _entry(run: str, rnd: int, eps: float, fp: str = "fp-1") -> LedgerEntry:
    return LedgerEntry(
        run_id=run,
        server_round=rnd,
        dataset_fingerprint=fp,
        mechanism=Mechanism.DP_SGD,
        noise_multiplier=1.0,
        sample_rate=0.1,
        steps=10,
        delta=1e-5,
        accountant="rdp",
        accountant_state="{}",
        epsilon=eps,
        timestamp=f"2026-11-22T00:00:0{rnd}Z",
    )


@pytest.fixture()
def ledger(tmp_path: Path):
    with SiteLedger(tmp_path) as led:
        for rnd in range(1, 5):
            led.append(_entry("run-a", rnd, 0.5 * rnd))
        yield led


def _raw(ledger: SiteLedger) -> sqlite3.Connection:
    return sqlite3.connect(ledger.state_dir / DB_NAME, isolation_level=None)


def _head_message(seq: int, digest: str) -> bytes:
    """What the site signs for its head, as an attacker who read ledger/chain.py would
    build it (spelled out here so a change of the format is a visible change)."""
    return f"head:{seq}:{digest}".encode()


# The attacker's own key: anything it signs must not verify as the site's.
FORGER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


# How a forger without the site's key signs a head for (seq, hash), given the
# genuine signatures it can read: entry ``seq``'s and the old head's.
Forgery = Callable[[int, str, bytes, bytes], bytes]
HEAD_FORGERIES: dict[str, Forgery] = {
    "zero-signature": lambda seq, digest, entry_sig, head_sig: bytes(64),
    "garbage-signature": lambda seq, digest, entry_sig, head_sig: b"not a signature",
    "empty-signature": lambda seq, digest, entry_sig, head_sig: b"",
    # the site's genuine signature of the old head (4, h4), reused for (3, h3)
    "old-head-signature": lambda seq, digest, entry_sig, head_sig: head_sig,
    # the site's genuine signature over h3, from entry 3 itself: a head must not
    # verify with an entry's signature
    "entry-signature-as-head": lambda seq, digest, entry_sig, head_sig: entry_sig,
    "signed-by-another-key": lambda seq, digest, entry_sig, head_sig: FORGER.sign(
        _head_message(seq, digest)
    ),
}


def _drop_tail_and_rewrite_head(ledger: SiteLedger, forge: Forgery | None) -> None:
    """The budget-reset attack without the site's key, on the database file:
    delete the last entry (the newest spend) and point the head at the new last
    entry with a forged signature (``forge=None``: remove the head instead)."""
    db = _raw(ledger)
    seq, digest, entry_sig = db.execute(
        "SELECT seq, entry_hash, signature FROM entries WHERE seq = 3"
    ).fetchone()
    (head_sig,) = db.execute("SELECT signature FROM head").fetchone()
    db.execute("DELETE FROM entries WHERE seq = 4")
    if forge is None:
        db.execute("DELETE FROM head")
    else:
        db.execute(
            "UPDATE head SET seq = ?, entry_hash = ?, signature = ?",
            (seq, digest, forge(seq, digest, entry_sig, head_sig)),
        )
    db.close()


@pytest.mark.parametrize("forgery", sorted(HEAD_FORGERIES))
def test_deleted_tail_with_a_rewritten_head_is_caught(ledger, forgery: str) -> None:
    _drop_tail_and_rewrite_head(ledger, HEAD_FORGERIES[forgery])
    head, entries = ledger.head(), ledger.entries()
    assert head is not None and head.seq == 3 and len(entries) == 3  # attack landed
    assert head.entry_hash == entries[-1].entry_hash  # only the signature is wrong
    assert ledger.verify().problems == ("the ledger head has an invalid signature",)


@pytest.mark.parametrize("forgery", sorted(HEAD_FORGERIES))
def test_deleted_tail_with_a_rewritten_head_is_caught_in_an_export(
    ledger, forgery: str
) -> None:
    doc = json.loads(json.dumps(ledger.export()))  # as an auditor receives it
    dropped = doc["entries"].pop()
    last = doc["entries"][-1]
    forge = HEAD_FORGERIES[forgery]
    signature = forge(
        last["seq"],
        last["entry_hash"],
        bytes.fromhex(last["signature"]),
        bytes.fromhex(doc["head"]["signature"]),
    )
    doc["head"] = {
        "seq": last["seq"],
        "entry_hash": last["entry_hash"],
        "signature": signature.hex(),
    }
    assert dropped["seq"] == 4
    report = verify_export(doc, expected_key_sha256=ledger.public_key_fingerprint())
    assert report.problems == ("the ledger head has an invalid signature",)


def test_deleted_tail_with_the_head_removed_is_caught(ledger) -> None:
    _drop_tail_and_rewrite_head(ledger, None)
    assert ledger.head() is None and len(ledger.entries()) == 3
    assert ledger.verify().problems == ("the signed head is missing (edited)",)


def test_head_recomputed_without_the_key_over_a_forged_tail_is_caught(ledger) -> None:
    """Rewrite the last entry to spend less, re-hash it and sign the entry and the
    head with the attacker's key: only the signatures can tell."""
    db = _raw(ledger)
    prev = db.execute("SELECT entry_hash FROM entries WHERE seq = 3").fetchone()[0]
    (rec,) = [r for r in ledger.entries() if r.seq == 4]
    cheaper = replace(rec.entry, epsilon=0.01, steps=1)
    digest = entry_hash(4, prev, cheaper)
    db.execute(
        "UPDATE entries SET body = ?, entry_hash = ?, signature = ? WHERE seq = 4",
        (
            json.dumps(cheaper.canonical(), sort_keys=True),
            digest,
            FORGER.sign(bytes.fromhex(digest)),
        ),
    )
    db.execute(
        "UPDATE head SET entry_hash = ?, signature = ?",
        (digest, FORGER.sign(_head_message(4, digest))),
    )
    assert ledger.entries()[-1].entry.steps == 1  # the attack landed
    assert set(ledger.verify().problems) == {
        "entry 4 has an invalid signature",
        "the ledger head has an invalid signature",
    }


def test_rehashed_history_signed_with_another_key_is_caught_entry_by_entry(
    ledger,
) -> None:
    """Edit entry 2 and re-chain 2..4 and the head with the attacker's key: every
    hash and link is consistent, only the entry signatures name the forgery."""
    db = _raw(ledger)
    prev = db.execute("SELECT entry_hash FROM entries WHERE seq = 1").fetchone()[0]
    for rec in ledger.entries()[1:]:
        entry = replace(rec.entry, steps=1) if rec.seq == 2 else rec.entry
        digest = entry_hash(rec.seq, prev, entry)
        db.execute(
            "UPDATE entries SET body = ?, prev_hash = ?, entry_hash = ?, "
            "signature = ? WHERE seq = ?",
            (
                json.dumps(entry.canonical(), sort_keys=True),
                prev,
                digest,
                FORGER.sign(bytes.fromhex(digest)),
                rec.seq,
            ),
        )
        prev = digest
    db.execute(
        "UPDATE head SET entry_hash = ?, signature = ?",
        (prev, FORGER.sign(_head_message(4, prev))),
    )
    problems = ledger.verify().problems
    assert [p for p in problems if "entry" in p and "head" not in p] == [
        f"entry {k} has an invalid signature" for k in (2, 3, 4)
    ]


def _fork(ledger: SiteLedger, tmp_path: Path, keep: int) -> SiteLedger:
    """A second ledger with the site's own key and the first ``keep`` entries (a
    backup, or a copy the site kept running elsewhere), then different entries:
    every row it holds is genuinely signed by the site."""
    fork_dir = tmp_path / "fork"
    fork_dir.mkdir()
    for name in (KEY_NAME, PUBLIC_KEY_NAME):
        shutil.copy2(ledger.state_dir / name, fork_dir / name)
    fork = SiteLedger(fork_dir)
    for rec in ledger.entries()[:keep]:
        fork.append(rec.entry)
    for rnd in range(keep + 1, 5):
        fork.append(replace(_entry("run-a", rnd, 0.01 * rnd), steps=1))
    return fork


def _copy_row(src: SiteLedger, dst: SiteLedger, seq: int) -> None:
    row = (
        _raw(src)
        .execute(
            "SELECT body, prev_hash, entry_hash, signature FROM entries WHERE seq = ?",
            (seq,),
        )
        .fetchone()
    )
    _raw(dst).execute(
        "UPDATE entries SET body = ?, prev_hash = ?, entry_hash = ?, signature = ? "
        "WHERE seq = ?",
        (*row, seq),
    )


def test_entry_spliced_in_from_a_fork_with_the_sites_key_breaks_the_chain(
    ledger, tmp_path: Path
) -> None:
    """Entry 3 swapped for the fork's genuinely signed, cheaper entry 3: its hash
    and signature are valid, only the link from entry 4 exposes it."""
    with _fork(ledger, tmp_path, keep=2) as fork:
        _copy_row(fork, ledger, 3)
    assert ledger.entries()[2].entry.steps == 1  # the attack landed
    assert ledger.verify().problems == (
        "entry 4 does not follow the entry before it (an entry was deleted, "
        "inserted or reordered)",
    )


def test_last_entry_swapped_for_a_forks_is_caught_by_the_head_hash(
    ledger, tmp_path: Path
) -> None:
    """Entry 4 swapped for the fork's entry 4 (same seq, valid link and
    signature): the signed head still names the real entry 4's hash."""
    with _fork(ledger, tmp_path, keep=3) as fork:
        _copy_row(fork, ledger, 4)
    assert ledger.entries()[3].entry.steps == 1  # the attack landed
    problems = ledger.verify().problems
    assert len(problems) == 1 and "trailing entries" in problems[0]


def test_untouched_ledger_verifies(ledger) -> None:
    report = ledger.verify()
    assert report.ok and report.entries == 4


def test_key_is_private_to_the_owner(ledger) -> None:
    mode = stat.S_IMODE((ledger.state_dir / KEY_NAME).stat().st_mode)
    assert mode == 0o600


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    SiteLedger(tmp_path).close()
    (tmp_path / KEY_NAME).chmod(0o644)
    with pytest.raises(LedgerError, match="chmod 600"):
        SiteLedger(tmp_path)


def test_edited_entry_is_named(ledger) -> None:
    db = _raw(ledger)
    body = db.execute("SELECT body FROM entries WHERE seq = 2").fetchone()[0]
    db.execute(
        "UPDATE entries SET body = ? WHERE seq = 2",
        (body.replace('"epsilon": 1.0', '"epsilon": 0.1'),),
    )
    problems = ledger.verify().problems
    assert any("entry 2 was edited" in p for p in problems)


def test_deleted_middle_entry_is_named(ledger) -> None:
    _raw(ledger).execute("DELETE FROM entries WHERE seq = 2")
    problems = " | ".join(ledger.verify().problems)
    assert "entries 2..2 are missing" in problems


def test_deleted_last_entry_is_caught_by_the_signed_head(ledger) -> None:
    _raw(ledger).execute("DELETE FROM entries WHERE seq = 4")
    problems = " | ".join(ledger.verify().problems)
    assert "head names entry 4" in problems and "ends at entry 3" in problems


def test_reordered_entries_are_caught(ledger) -> None:
    db = _raw(ledger)
    db.execute("UPDATE entries SET seq = -1 WHERE seq = 2")
    db.execute("UPDATE entries SET seq = 2 WHERE seq = 3")
    db.execute("UPDATE entries SET seq = 3 WHERE seq = -1")
    report = ledger.verify()
    assert not report.ok
    assert any("entry 2" in p for p in report.problems)


def test_swapped_signatures_are_caught(ledger) -> None:
    db = _raw(ledger)
    s1 = db.execute("SELECT signature FROM entries WHERE seq = 1").fetchone()[0]
    s3 = db.execute("SELECT signature FROM entries WHERE seq = 3").fetchone()[0]
    db.execute("UPDATE entries SET signature = ? WHERE seq = 1", (s3,))
    db.execute("UPDATE entries SET signature = ? WHERE seq = 3", (s1,))
    problems = ledger.verify().problems
    assert "entry 1 has an invalid signature" in problems
    assert "entry 3 has an invalid signature" in problems


def test_reopened_ledger_keeps_the_chain(tmp_path: Path) -> None:
    with SiteLedger(tmp_path) as led:
        led.append(_entry("run-a", 1, 0.5))
    with SiteLedger(tmp_path) as led:
        rec = led.append(_entry("run-b", 1, 0.9))
        assert rec.seq == 2
        assert led.verify().ok


def test_history_composes_across_runs_on_the_same_dataset(tmp_path: Path) -> None:
    with SiteLedger(tmp_path) as led:
        led.append(_entry("run-a", 1, 0.5))
        led.append(_entry("run-a", 2, 0.8))
        led.append(_entry("run-b", 1, 1.1))
        led.append(_entry("run-c", 1, 0.4, fp="other-data"))
        history = led.history(dataset_fingerprint="fp-1")
        assert len(led.history(dataset_fingerprint=None)) == 4
        assert len(led.history(dataset_fingerprint="fp-1", run_id="run-b")) == 1
    assert history == [Release(1.0, 0.1, 10)] * 3
    composed = compose_epsilon(history, delta=1e-5, accountant=AccountantKind.RDP)
    reference = RDPAccountant()
    reference.history = [(1.0, 0.1, 30)]
    assert composed == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)


def test_client_level_entries_are_kept_apart_from_sample_level(tmp_path: Path) -> None:
    with SiteLedger(tmp_path) as led:
        led.append(_entry("run-a", 1, 0.5))
        led.append(
            replace(_entry("run-a", 1, 2.0), mechanism=Mechanism.CLIENT_GAUSSIAN)
        )
        assert len(led.history(dataset_fingerprint=None)) == 1
        assert led.client_history(run_id="run-a") == [Release(1.0, 0.1, 10)]


def test_non_private_entry_round_trips_with_infinite_epsilon(tmp_path: Path) -> None:
    with SiteLedger(tmp_path) as led:
        led.append(
            replace(
                _entry("run-a", 1, math.inf),
                mechanism=Mechanism.NON_PRIVATE,
                noise_multiplier=0.0,
            )
        )
        (rec,) = led.entries()
        assert math.isinf(rec.entry.epsilon) and led.verify().ok


def test_read_only_opening_needs_no_private_key_and_creates_nothing(
    ledger, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (DB_NAME, f"{DB_NAME}-wal", PUBLIC_KEY_NAME):  # WAL: recent entries
        shutil.copy(ledger.state_dir / name, copy / name)
    with LedgerReader(copy) as audit:
        assert audit.verify().ok and len(audit.entries()) == 4
        assert audit.export() == ledger.export()
    assert not (copy / KEY_NAME).exists()
    with pytest.raises(LedgerError, match="No site ledger"):
        LedgerReader(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_a_reader_can_neither_append_nor_write_through_its_connection(
    ledger,
) -> None:
    with LedgerReader(ledger.state_dir) as reader:
        assert not isinstance(reader, SiteLedger)
        assert not hasattr(reader, "append") and not hasattr(reader, "_key")
        for statement in (
            "DELETE FROM entries WHERE seq = 4",
            "UPDATE head SET seq = 3",
            "CREATE TABLE forged (x)",
        ):
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                reader._db.execute(statement)
        assert reader.verify().ok and len(reader.entries()) == 4
    # a writer reads the same way, so it goes wherever a reader is expected
    assert isinstance(ledger, LedgerReader) and ledger.verify().ok


def test_replaced_public_key_is_refused(tmp_path: Path) -> None:
    SiteLedger(tmp_path).close()
    other = tmp_path / "other"
    SiteLedger(other).close()
    shutil.copy(other / PUBLIC_KEY_NAME, tmp_path / PUBLIC_KEY_NAME)
    with pytest.raises(LedgerError, match="does not match"):
        SiteLedger(tmp_path)


def test_export_verifies_offline_and_detects_edits_and_foreign_keys(ledger) -> None:
    doc = json.loads(json.dumps(ledger.export()))  # through JSON, as an auditor gets it
    pinned = ledger.public_key_fingerprint()
    assert verify_export(doc, expected_key_sha256=pinned).ok
    edited = json.loads(json.dumps(doc))
    edited["entries"][1]["epsilon"] = 0.01
    assert any("entry 2 was edited" in p for p in verify_export(edited).problems)
    truncated = json.loads(json.dumps(doc))
    del truncated["entries"][-1]
    assert any("trailing" in p for p in verify_export(truncated).problems)
    wrong = verify_export(doc, expected_key_sha256="00" * 32)
    assert any("not the expected" in p for p in wrong.problems)
    assert not verify_export({"entries": "nope"}).ok


def test_signatures_stored_as_text_are_reported_not_a_crash(ledger) -> None:
    """An attacker who writes a signature as TEXT (SQLite keeps the type it is
    given) gets a named verification problem, not a TypeError traceback."""
    db = _raw(ledger)
    db.execute("UPDATE head SET signature = 'forged'")
    db.execute("UPDATE entries SET signature = 'forged' WHERE seq = 2")
    db.close()
    assert ledger.verify().problems == (
        "entry 2 has an invalid signature",
        "the ledger head has an invalid signature",
    )
