import json
import math
import shutil
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from privacy.budget import Release, compose_epsilon
from privacy.dp import AccountantKind
from privacy.ledger import (
    DB_NAME,
    KEY_NAME,
    PUBLIC_KEY_NAME,
    LedgerEntry,
    LedgerError,
    Mechanism,
    SiteLedger,
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
    with SiteLedger(copy, writable=False) as audit:
        assert audit.verify().ok and len(audit.entries()) == 4
        with pytest.raises(LedgerError, match="read-only"):
            audit.append(_entry("run-z", 1, 9.0))
    assert not (copy / KEY_NAME).exists()
    with pytest.raises(LedgerError, match="No site ledger"):
        SiteLedger(tmp_path / "missing", writable=False)


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
