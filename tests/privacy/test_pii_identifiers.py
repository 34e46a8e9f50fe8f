"""Identifiers, names by case, dates, NER noise, Presidio's full recognizer set and a
site's own patterns: each is found where it should be and nowhere else.

The sentences here are written for these tests, apart from both evaluation sets
(``benchmarks/pii_dev.jsonl``, ``benchmarks/pii_handwritten.jsonl``).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from fedshield.privacy.pii import PIIConfig, PIIError, PIIMode, Scrubber
from fedshield.privacy.pii.analyzer import analyzer_for, recognizers_version, requested
from fedshield.privacy.pii.config import DEFAULT_ENTITIES
from fedshield.privacy.pii.presidio_set import (
    DROPPED,
    FAMILIES,
    NOT_PATTERN_BASED,
    presidio_recognizers,
)
from fedshield.privacy.pii.recognizers import is_specific_date
from fedshield.privacy.pii.site_patterns import SitePattern, read_patterns

# (sentence, value that must go, entity type it must go as, text that must stay)
FOUND = [
    ("Chart review for MRN: 7731-0042 before surgery.", "7731-0042",
     "MEDICAL_RECORD_NUMBER", "before surgery"),
    ("Her member ID is QXT448190227 with the insurer.", "QXT448190227",
     "MEDICAL_RECORD_NUMBER", "with the insurer"),
    ("Scanned passport no. 532871094 at the desk.", "532871094", "PASSPORT",
     "at the desk"),
    ("Driver's licence number: B4477120 (Ohio).", "B4477120", "DRIVER_LICENSE",
     "licence number"),
    ("Payroll needs the NI number AB 12 34 56 C by Friday.", "AB 12 34 56 C",
     "NATIONAL_ID", "by Friday"),
    ("Staff ID 0048812 badge reissued.", "0048812", "EMPLOYEE_ID", "badge reissued"),
    ("Lease renewed for 3c:22:fb:7a:01:9e on the guest network.",
     "3c:22:fb:7a:01:9e", "MAC_ADDRESS", "on the guest network"),
    ("Switch saw 0050.56c0.0008 flapping.", "0050.56c0.0008", "MAC_ADDRESS",
     "flapping"),
    ("Deliver to the depot, postcode KW1 4YT, after six.", "KW1 4YT", "POSTCODE",
     "after six"),
    ("New address: Rua Augusta 12, 1100-053 Lisboa", "1100-053", "POSTCODE",
     "New address"),
    ("Parcel for Toronto, M5V 2T6, held at the counter.", "M5V 2T6", "POSTCODE",
     "held at the counter"),
    ("thanks @marta_k for the fix", "@marta_k", "USERNAME", "for the fix"),
    ('audit: login="pkarlsson" result=denied', "pkarlsson", "USERNAME",
     "result=denied"),
    ("Traceback in /home/tnakamura/app/run.py line 4", "tnakamura", "USERNAME",
     "/app/run.py line 4"),
    ("patient henrik olsen reports dizziness", "henrik olsen", "PERSON",
     "reports dizziness"),
    ("ADMITTED: SOFIA MARINO, BED 12", "SOFIA MARINO", "PERSON", "BED 12"),
    ("seen by mr adeyemi in clinic", "adeyemi", "PERSON", "in clinic"),
    ("Follow-up booked for 14 Feb, fasting bloods first.", "14 Feb", "DATE_TIME",
     "fasting bloods"),
    ("Admitted 3 mars 2023 via urgences.", "3 mars 2023", "DATE_TIME", "via urgences"),
]  # fmt: skip

# sentences a scrubber must leave exactly as they are
CLEAN = [
    "The Romberg test was negative and the Epley manoeuvre helped.",
    "Upgrade the cluster to 1.30 before the June maintenance window.",
    "Take 250 mg every 8 hours for 10 days.",
    "The standup moved from 9:15 to 9:45 on Thursdays.",
    "Export the CSV from the CRM and attach it to the ticket.",
    "call me back when the build is green",
    "thanks for the quick turnaround",
    "thanks, will do after lunch",
    "Check utils.py and config.yaml for the retry limits.",
    "Passport renewals take about six weeks in summer.",
    "The MRN field is empty for walk-in patients.",
    "Ask the user to log in again after the password reset.",
]


@pytest.fixture(scope="module")
def tagger() -> Scrubber:
    return Scrubber(PIIConfig(mode=PIIMode.TAG))


@pytest.mark.parametrize(("sentence", "value", "entity", "kept"), FOUND)
def test_each_identifier_is_replaced_and_its_context_kept(
    tagger: Scrubber, sentence: str, value: str, entity: str, kept: str
) -> None:
    out = tagger.scrub(sentence)
    for piece in value.split():
        assert len(piece) < 2 or piece not in out, (piece, out)
    assert kept in out, out
    found = {
        r.entity_type
        for r in tagger.find(sentence)
        if r.start < sentence.index(value) + len(value)
        and sentence.index(value) < r.end
    }
    assert entity in found, (found, out)


@pytest.mark.parametrize("sentence", CLEAN)
def test_hard_negatives_stay_unchanged(tagger: Scrubber, sentence: str) -> None:
    assert tagger.scrub(sentence) == sentence, tagger.find(sentence)


@pytest.mark.parametrize(
    ("text", "specific"),
    [
        ("March 3rd, 1985", True), ("03/14/1952", True), ("12.01.2024", True),
        ("2024-03", True), ("9th Oct", True), ("14/Mar/2024:10:02:11", True),
        ("12 janvier 2015", True), ("2024年9月15日", True), ("March 2024", True),
        ("next week", False), ("9:30", False), ("every 6 months", False),
        ("Wednesdays", False), ("the March release", False), ("1998", False),
        ("2 hours ago", False),
    ],
)  # fmt: skip
def test_a_date_is_kept_only_when_it_names_a_day_or_a_month_of_a_year(
    text: str, specific: bool
) -> None:
    assert is_specific_date(text) is specific


def test_every_presidio_pattern_recognizer_is_used_or_dropped_with_a_reason() -> None:
    """A Presidio upgrade that adds a recognizer or an entity type is noticed: each
    pattern recognizer it ships is registered or listed in DROPPED with a reason,
    and each entity type they report belongs to a family."""
    import presidio_analyzer.predefined_recognizers as predefined
    from presidio_analyzer import PatternRecognizer

    shipped = {
        name
        for name, cls in vars(predefined).items()
        if inspect.isclass(cls) and name.endswith("Recognizer")
    }
    patterns = {
        n for n in shipped if issubclass(getattr(predefined, n), PatternRecognizer)
    }
    assert shipped - patterns <= NOT_PATTERN_BASED | {"SpacyRecognizer"}
    used = {type(r).__name__ for r in presidio_recognizers()}
    dropped = {type(r).__name__ for r in presidio_recognizers(dropped=True)}
    assert used | dropped == patterns - NOT_PATTERN_BASED
    assert all(DROPPED[n].strip() for n in dropped)
    types = {
        e for r in presidio_recognizers(dropped=False) for e in r.supported_entities
    }
    assert types <= set(FAMILIES), sorted(types - set(FAMILIES))
    families = {FAMILIES[t] for t in types} - {"UUID"}
    assert families <= set(DEFAULT_ENTITIES), sorted(families - set(DEFAULT_ENTITIES))


def test_a_family_in_the_entities_runs_every_national_recognizer_of_it() -> None:
    config = PIIConfig(entities=("PASSPORT",))
    asked = requested(config, analyzer_for(config))
    assert {"UK_PASSPORT", "US_PASSPORT", "PASSPORT"} <= set(asked)
    assert "PERSON" not in asked


def test_a_national_format_reports_as_its_family(tagger: Scrubber) -> None:
    # a valid NHS number with its context word: Presidio's checksum recognizer
    out = tagger.scrub("NHS number 401 023 2137 confirmed.")
    assert "401 023 2137" not in out and "<MEDICAL_RECORD_NUMBER>" in out, out
    assert "UK_NHS" not in out
    # formats only Presidio's national recognizers know, without a context word
    out = tagger.scrub("Form filed under JG103759A yesterday.")
    assert out == "Form filed under <NATIONAL_ID> yesterday.", out
    out = tagger.scrub("Wallet 1BoatSLRHtKNngkdXEeobR76b53LETtpyT received it.")
    assert out == "Wallet <CRYPTO_WALLET> received it.", out


def test_site_patterns_are_read_checked_and_refused_with_the_entry_named(
    tmp_path: Path,
) -> None:
    good = tmp_path / "ok.toml"
    good.write_text(
        '[[pattern]]\nentity = "CASE_NUMBER"\n'
        "regex = '(?i:case)\\s*#?\\s*(?P<pii>\\d{6})'\nscore = 0.8\n",
        encoding="utf-8",
    )
    (pattern,) = read_patterns(good)
    assert pattern == SitePattern("CASE_NUMBER", pattern.regex, 0.8)
    scrubber = Scrubber(PIIConfig(entities=("PERSON",), patterns=(pattern,)))
    assert scrubber.scrub("Escalated case #448120 today.") == (
        "Escalated case #<CASE_NUMBER> today."
    )
    bad = {
        "missing.toml": None,
        "empty.toml": "",
        "nokey.toml": '[[pattern]]\nentity = "X_ID"\n',
        "lower.toml": "[[pattern]]\nentity = \"case\"\nregex = 'x'\n",
        "compile.toml": "[[pattern]]\nentity = \"X_ID\"\nregex = '(x'\n",
        "empty-match.toml": "[[pattern]]\nentity = \"X_ID\"\nregex = '\\d*'\n",
        "score.toml": "[[pattern]]\nentity = \"X_ID\"\nregex = 'x'\nscore = 2\n",
        "unknown.toml": "[[pattern]]\nentity = \"X_ID\"\nregex = 'x'\nflags = 1\n",
        "toml.toml": "[[pattern]\n",
    }
    for name, text in bad.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text, encoding="utf-8")
        with pytest.raises(PIIError, match=str(path.name).replace(".", r"\.")):
            read_patterns(path)


def test_the_recognizers_version_changes_with_the_recognizers_source() -> None:
    version = recognizers_version()
    assert len(version) == 16 and version == recognizers_version()


def test_a_spaced_identifier_is_replaced_to_its_last_group(tagger: Scrubber) -> None:
    out = tagger.scrub("Member ID 4471 2290 X on file.")
    assert out == "Member ID <MEDICAL_RECORD_NUMBER> on file.", out
