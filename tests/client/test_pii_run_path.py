"""PII planted in a site's own file never reaches its tokenizer, in the real run path.

A deployed-style site (``data-path`` to its CSV) runs the real ``@app.train`` and
``@app.evaluate`` handlers on a Flower ``Message`` built as the server sends it. Every
text handed to the tokenizer is recorded at the tokenizer class itself (the fast
backend's ``_encode_plus`` and ``tokenize``, which every way of calling a Hugging
Face tokenizer goes through), so a refactor that trains on the raw text, on a stale
cache entry or on a copy scrubbed with fewer entity types is caught however it
reaches the model.

The ledger's dataset fingerprint is the fingerprint of the site's *raw* records
(privacy/fingerprint.py, docs/pii.md), so that no run setting can change the
budget's scope: a coordinator cannot restart a site's composition by changing
``pii.*``.

The scrubbing policy is the site's (node config ``pii-*``, :mod:`client.policy`): a
run config with ``pii.mode=off``, a shorter ``pii.entities`` or a higher
``pii.score-threshold`` is refused before any record is read.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from fedshield.client.app import evaluate, train
from fedshield.common.config import ConfigError
from fedshield.privacy.fingerprint import dataset_fingerprint
from fedshield.privacy.ledger import LedgerReader
from fedshield.privacy.pii import DEFAULT_ENTITIES, STRUCTURED_ENTITIES

from .site_round import PLAIN_SITE, server_message, site_context

pytestmark = pytest.mark.usefixtures("task_identity")

# entity type -> (planted value, pieces of it that must not reach the tokenizer)
PLANTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "PERSON": ("Hedda Brunvoll", ("hedda", "brunvoll")),
    "EMAIL_ADDRESS": ("ivar.lund@fjordpost.example", ("ivar.lund", "fjordpost")),
    "US_SSN": ("512-38-7261", ("512387261",)),
    "CREDIT_CARD": ("4532015112830366", ("4532015112830366",)),  # Luhn-valid
    "PHONE_NUMBER": ("+44 7700 900123", ("447700900123",)),
    "IBAN_CODE": ("GB33BUKB20201555555555", ("bukb", "3320201555555555")),
    "IP_ADDRESS": ("10.213.77.41", ("10213", "77.41")),
    "STREET_ADDRESS": ("17 Birchwood Lane", ("birchwood",)),
}
# each planted sentence: its template and the part of it that is no PII and must
# reach the tokenizer unchanged (else the test could pass by tokenizing nothing)
SENTENCES = [
    ("My name is {PERSON} and the film bored me.", "and the film bored me."),
    ("Loved it. Write to {EMAIL_ADDRESS} about the sequel.", "about the sequel."),
    ("Refund my ticket: SSN {US_SSN}, card {CREDIT_CARD}.", "Refund my ticket"),
    ("Call {PHONE_NUMBER} if the screening moves.", "if the screening moves."),
    ("Wire the refund to IBAN {IBAN_CODE}, please.", "Wire the refund to"),
    ("Posted from {IP_ADDRESS}: a tedious, overlong mess.", "a tedious, overlong"),
    ("Send the DVD to {STREET_ADDRESS}, it was great.", ", it was great."),
]
PLAIN = [f"plain review number {i}, fine acting" for i in range(17)]


def _rows() -> list[tuple[str, int]]:
    values = {k: v for k, (v, _) in PLANTED.items()}
    planted = [t.format(**values) for t, _ in SENTENCES]
    return [(text, i % 2) for i, text in enumerate(planted + PLAIN)]


def _write_site_file(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(_rows())
    return path


def _leaks(texts: list[str]) -> list[str]:
    """The planted entity types any of ``texts`` still holds a piece of."""
    found = []
    for kind, (value, pieces) in PLANTED.items():
        for text in texts:
            folded = text.casefold()
            digits = re.sub(r"\D", "", text)
            if value in text or any(
                p in (digits if p.isdigit() else folded) for p in pieces
            ):
                found.append(kind)
                break
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


@pytest.fixture()
def tokenized(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the process hands a (fast) tokenizer while the test runs."""
    seen: list[str] = []

    def recorder(name: str) -> Any:
        original = getattr(TokenizersBackend, name)

        def record(self: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
            seen.extend(_strings(text))
            for pair in (*args[:1], kwargs.get("text_pair"), kwargs.get("pair")):
                seen.extend(_strings(pair))
            return original(self, text, *args, **kwargs)

        return record

    for name in ("_encode_plus", "tokenize"):
        monkeypatch.setattr(TokenizersBackend, name, recorder(name))
    return seen


@pytest.fixture()
def site_file(tmp_path: Path) -> Path:
    return _write_site_file(tmp_path / "site.csv")


def _send_train(
    run_config: dict[str, Any],
    *,
    data: Path,
    state: Path,
    server_round: int = 1,
    max_epsilon: float = 50.0,
    policy: dict[str, Any] | None = None,
) -> Message:
    """The site's reply to the server's train message for ``server_round``; the
    site's policy is the default floor unless ``policy`` (node-config keys)."""
    msg = server_message(
        run_config,
        message_type="train",
        config={"server-round": server_round, "run-key": "pii-run"},
        node_id=7,
    )
    node_config = {
        "data-path": str(data),
        "state-dir": str(state),
        "max-epsilon": max_epsilon,
        "site-name": "pii-site",
        **PLAIN_SITE,  # its own scrubbing floor: the default policy's
        **(policy or {}),
    }
    return train(msg, site_context(run_config, node_config, node_id=7))


@pytest.fixture()
def run_config(tiny_run_config: dict[str, Any]) -> dict[str, Any]:
    # secure aggregation off: the handler is called without its client mod
    return {**tiny_run_config, "secagg.enabled": False, "pii.mode": "tag"}


def _ledger_fingerprints(state: Path) -> list[str]:
    with LedgerReader(state) as ledger:
        return [r.entry.dataset_fingerprint for r in ledger.entries()]


def test_the_trainer_tokenizes_only_scrubbed_text_and_the_ledger_scopes_raw_records(
    tmp_path: Path, site_file: Path, run_config: dict[str, Any], tokenized: list[str]
) -> None:
    rows = _rows()
    state = tmp_path / "state"
    raw = dataset_fingerprint([text for text, _ in rows])
    trained = []
    for server_round in (1, 2):  # round 2 reads the site's scrub cache
        tokenized.clear()
        reply = _send_train(
            run_config, data=site_file, state=state, server_round=server_round
        )
        assert "arrays" in reply.content.array_records, reply.content
        assert _leaks(tokenized) == [], tokenized
        # every record was tokenized once, the non-PII part of each planted one
        # unchanged: the scrubber removed the values, not the sentences
        assert len(tokenized) == len(rows)
        for _, kept in SENTENCES:
            assert any(kept in text for text in tokenized), (kept, tokenized)
        assert all(text in tokenized for text in PLAIN)
        # each planted type was found as itself (a count per type, never a value)
        metrics = reply.content.metric_records["metrics"]
        for kind in PLANTED:
            assert metrics[f"pii-{kind}"] >= 1, kind
        trained.append(dataset_fingerprint(tokenized))

    # the ledger scopes the site's budget to its raw records, not to the scrubbed
    # text it trained on (which any pii.* setting changes)
    assert trained[0] == trained[1] != raw
    assert _ledger_fingerprints(state) == [raw, raw]
    assert list((state / "pii-cache").iterdir())  # round 2 had a cache to reuse


def test_evaluation_tokenizes_only_scrubbed_text(
    tmp_path: Path, site_file: Path, run_config: dict[str, Any], tokenized: list[str]
) -> None:
    msg = server_message(
        run_config, message_type="evaluate", config={"server-round": 1}, node_id=7
    )
    node_config = {
        "data-path": str(site_file),
        "eval-data-path": str(site_file),
        "state-dir": str(tmp_path / "state"),
        "site-name": "pii-site",
        **PLAIN_SITE,  # its own scrubbing floor: the default policy's
    }
    reply = evaluate(msg, site_context(run_config, node_config, node_id=7))
    assert reply.content.metric_records["metrics"]["num-examples"] == len(_rows())
    assert len(tokenized) == len(_rows())
    assert _leaks(tokenized) == [], tokenized
    assert any("and the film bored me." in text for text in tokenized)


def test_the_run_configs_default_pii_entities_are_the_library_defaults(
    default_run_config: dict[str, Any],
) -> None:
    """The app's defaults (pyproject) and ``PIIConfig()`` (``fedshield scrub``)
    scrub the same types, and every structured identifier is among them."""
    listed = default_run_config["pii.entities"].split(",")
    assert default_run_config["pii.mode"] == "tag"
    assert sorted(listed) == sorted(DEFAULT_ENTITIES)
    assert set(STRUCTURED_ENTITIES) <= set(DEFAULT_ENTITIES)
    assert set(PLANTED) <= set(DEFAULT_ENTITIES)


@pytest.mark.parametrize(
    "setting",
    [{"pii.entities": ""}, {"pii.entities": " , "}, {"pii.mode": "none"}],
)
def test_an_unreadable_pii_setting_stops_the_round_before_anything_is_tokenized(
    tmp_path: Path,
    site_file: Path,
    run_config: dict[str, Any],
    tokenized: list[str],
    setting: dict[str, str],
) -> None:
    state = tmp_path / "state"
    with pytest.raises(ConfigError, match=r"pii\.(entities|mode)"):
        _send_train({**run_config, **setting}, data=site_file, state=state)
    assert tokenized == []
    assert not (state / "pii-cache").exists()


@pytest.mark.parametrize(
    "weaker",
    [
        {"pii.mode": "off"},
        {"pii.entities": "AGE"},
        {"pii.score-threshold": 0.95},
    ],
    ids=["mode-off", "entities-age-only", "threshold-0.95"],
)
def test_a_coordinator_cannot_weaken_the_sites_scrubbing(
    tmp_path: Path,
    site_file: Path,
    run_config: dict[str, Any],
    tokenized: list[str],
    weaker: dict[str, Any],
) -> None:
    """The site's policy (node config; here the default floor: tag, the default
    entity types, threshold 0.5) decides: a run asking for less is refused before a
    record is read, with the site's reason, and nothing is tokenized or cached."""
    state = tmp_path / "state"
    reply = _send_train({**run_config, **weaker}, data=site_file, state=state)
    refusal = reply.content.config_records["refusal"]
    assert "node config" in str(refusal["reason"]) or "this site" in str(
        refusal["reason"]
    )
    assert not reply.content.array_records and not reply.content.metric_records
    assert tokenized == []
    assert not (state / "pii-cache").exists()


def test_a_round_over_the_sites_budget_is_refused_before_anything_is_tokenized(
    tmp_path: Path, site_file: Path, run_config: dict[str, Any], tokenized: list[str]
) -> None:
    state = tmp_path / "state"
    first = _send_train(run_config, data=site_file, state=state)
    spent = first.content.metric_records["metrics"]["epsilon"]
    tokenized.clear()
    again = _send_train(
        run_config,
        data=site_file,
        state=state,
        server_round=2,
        max_epsilon=spent * 1.001,  # room for no second round on this dataset
    )
    assert "refusal" in again.content.config_records
    assert "arrays" not in again.content.array_records
    assert tokenized == []
    assert len(_ledger_fingerprints(state)) == 1


@pytest.mark.parametrize(
    "settings",
    [
        {"pii.mode": "mask"},
        {"pii.mode": "off"},
        {"pii.entities": "PERSON,EMAIL_ADDRESS"},
        {"pii.score-threshold": 0.95},
    ],
    ids=["mask", "off", "fewer-entities", "threshold"],
)
def test_changing_pii_settings_does_not_restart_the_sites_budget(
    tmp_path: Path, site_file: Path, run_config: dict[str, Any], settings: dict
) -> None:
    # a coordinator re-running the same records under other scrubbing settings
    # must meet the budget they already spent (dataset scope = the raw records)
    # (a site whose policy lets the run choose any scrubbing, so that the budget,
    # not the policy, is what refuses)
    permissive = {"pii-mode": "off", "pii-entities": "", "pii-score-threshold": 1.0}
    state = tmp_path / "state"
    first = _send_train(run_config, data=site_file, state=state, policy=permissive)
    spent = first.content.metric_records["metrics"]["epsilon"]
    again = _send_train(
        {**run_config, **settings},  # the same records, scrubbed otherwise
        data=site_file,
        state=state,
        server_round=2,
        max_epsilon=spent * 1.001,
        policy=permissive,
    )
    refusal = again.content.config_records["refusal"]
    assert "above the site's budget" in str(refusal["reason"])  # not a fresh budget


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedshield.models import write_tiny_causal_lm

    return write_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "llama")


def test_switching_the_task_or_label_column_does_not_restart_the_sites_budget(
    tmp_path: Path, run_config: dict[str, Any], tiny_lm_dir: Path
) -> None:
    """The coordinator spends the site's budget on a classifier, then asks for a
    causal LM (no labels read) or another label column over the same file: the
    same texts, so the same budget, which refuses the second round."""
    site_file = tmp_path / "site.csv"
    with site_file.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "flipped"])
        writer.writerows((t, y, 1 - y) for t, y in _rows())
    state = tmp_path / "state"
    first = _send_train(run_config, data=site_file, state=state)
    spent = first.content.metric_records["metrics"]["epsilon"]
    for switched in (
        {"model.task": "causal-lm", "model.source": str(tiny_lm_dir)},
        {"data.label-column": "flipped"},
    ):
        again = _send_train(
            {**run_config, **switched},
            data=site_file,
            state=state,
            server_round=2,
            max_epsilon=spent * 1.001,
        )
        refusal = again.content.config_records["refusal"]
        assert "above the site's budget" in str(refusal["reason"]), switched
    assert len(set(_ledger_fingerprints(state))) == 1


SITE_PATTERNS = """
[[pattern]]
entity = "INTERNAL_REF"
regex = '\\bZX-\\d{5}\\b'
"""


@pytest.mark.parametrize(
    "floor",
    [{}, {"pii-entities": "PERSON"}],
    ids=["default-floor", "person-only-floor"],
)
def test_a_sites_own_patterns_are_scrubbed_whatever_the_run_asks(
    tmp_path: Path, run_config: dict[str, Any], tokenized: list[str], floor: dict
) -> None:
    """The site's pii-patterns file (node config) adds its own identifier shapes;
    the run config has no key that removes them: with the run asking only for
    PERSON (which a PERSON-only floor accepts), the site's reference numbers are
    still replaced before tokenization, and the cache key changes with them."""
    patterns = tmp_path / "patterns.toml"
    patterns.write_text(SITE_PATTERNS, encoding="utf-8")
    data = tmp_path / "site.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(
            [
                (f"Refund case ZX-{40000 + i} was slow, fine acting", i % 2)
                for i in range(12)
            ]
        )
    state = tmp_path / "state"
    run = {**run_config, **({"pii.entities": "PERSON"} if floor else {})}
    reply = _send_train(
        run, data=data, state=state, policy={**floor, "pii-patterns": str(patterns)}
    )
    assert "arrays" in reply.content.array_records, reply.content
    assert len(tokenized) == 12
    assert not any("ZX-" in text for text in tokenized), tokenized
    assert all("<INTERNAL_REF>" in text for text in tokenized)
    # the same data without the site's patterns: a different cache entry, and the
    # references reach the tokenizer (spaCy takes one or two for places)
    tokenized.clear()
    _send_train(run, data=data, state=state, server_round=2, policy=floor)
    assert sum("ZX-" in text for text in tokenized) >= 9, tokenized
    assert len(list((state / "pii-cache").iterdir())) == 2


def test_a_broken_site_patterns_file_stops_the_site_with_its_name(
    tmp_path: Path, site_file: Path, run_config: dict[str, Any], tokenized: list[str]
) -> None:
    bad = tmp_path / "patterns.toml"
    bad.write_text(
        '[[pattern]]\nentity = "REF"\nregex = "(unclosed"\n', encoding="utf-8"
    )
    with pytest.raises(Exception, match=r"patterns\.toml.*does not compile"):
        _send_train(
            run_config,
            data=site_file,
            state=tmp_path / "s",
            policy={"pii-patterns": str(bad)},
        )
    assert tokenized == []
