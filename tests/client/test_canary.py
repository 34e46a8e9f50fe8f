"""Canary PII at a site never leaves it: not in the message the site sends the
server, not in any file the site writes (its state dir: ledger, scrub cache, keys).

The site is a deployed-style node (``data-path`` to its own CSV) running the real
``@app.train`` handler on a tiny BERT, with secure aggregation off, the worst case:
the update itself goes to the server in the clear. The run directory of a whole
simulation is scanned in ``tests/test_end_to_end.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from flwr.common.serde import message_to_proto

from fedshield.client.app import train

from .site_round import PLAIN_SITE, server_message, site_context


def _luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        digits = [int(c) for c in prefix + check]
        total = sum(
            d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
            for i, d in enumerate(reversed(digits))
        )
        if total % 10 == 0:
            return prefix + check
    raise AssertionError("unreachable")


CARD = _luhn_complete("453201511283036")
CANARIES = {
    "PERSON": "Oskar Vindelhaug",
    "EMAIL_ADDRESS": "oskar.vindelhaug@canary-mail.example",
    "US_SSN": "512-38-7261",
    "CREDIT_CARD": CARD,
    "PHONE_NUMBER": "+44 7700 900123",
    "IBAN_CODE": "GB33BUKB20201555555555",
    "IP_ADDRESS": "10.213.77.41",
    "STREET_ADDRESS": "17 Birchwood Lane",
}
TEMPLATES = [
    "My name is {PERSON} and the film bored me.",
    "Loved it. Write to me at {EMAIL_ADDRESS} about the sequel.",
    "Refund my ticket: SSN {US_SSN}, card {CREDIT_CARD}.",
    "Call {PHONE_NUMBER} if the screening moves.",
    "Wire the refund to IBAN {IBAN_CODE}, please.",
    "Posted from {IP_ADDRESS}: a tedious, overlong mess.",
    "Send the DVD to {STREET_ADDRESS}, it was great.",
]


pytestmark = pytest.mark.usefixtures("task_identity")


def _site_file(path: Path) -> None:
    rows = [(t.format(**CANARIES), i % 2) for i, t in enumerate(TEMPLATES)]
    rows += [(f"plain review number {i}, fine acting", i % 2) for i in range(17)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def _leaks(blob: bytes) -> list[str]:
    return [
        kind
        for kind, value in CANARIES.items()
        if value.encode() in blob or value.encode("utf-16-le") in blob
    ]


def test_no_canary_reaches_the_server_or_the_sites_files(
    tmp_path: Path, tiny_run_config
) -> None:
    data = tmp_path / "site.csv"
    _site_file(data)
    original = data.read_bytes()
    state = tmp_path / "state"
    run_config = {
        **tiny_run_config,
        "secagg.enabled": False,
        "pii.mode": "tag",
    }
    msg = server_message(
        run_config,
        message_type="train",
        config={"server-round": 1, "run-key": "canary"},
        node_id=7,
    )
    node_config = {
        "data-path": str(data),
        "state-dir": str(state),
        "max-epsilon": 50.0,
        "site-name": "canary-site",
        **PLAIN_SITE,
    }
    context = site_context(run_config, node_config, node_id=7)
    reply = train(msg, context)
    assert reply.has_content() and "arrays" in reply.content.array_records
    metrics = reply.content.metric_records["metrics"]
    assert metrics["pii-EMAIL_ADDRESS"] >= 1 and metrics["pii-PERSON"] >= 1

    sent = message_to_proto(reply).SerializeToString()
    assert _leaks(sent) == []
    written = sorted(p for p in state.rglob("*") if p.is_file())
    assert any("pii-cache" in str(p) for p in written)
    for path in written:
        assert _leaks(path.read_bytes()) == [], path
    assert data.read_bytes() == original  # the site's file is never modified
