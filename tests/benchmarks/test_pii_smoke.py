"""benchmarks/pii.py: the token scorer on hand-made cases, and a smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedshield.privacy.pii.synthetic import PIISpan, SyntheticSentence
from tests.subprocess_env import subprocess_env

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from pii import f_beta, handwritten_set, score, score_handwritten  # noqa: E402


def _sentence(text: str, *spans: tuple[str, str]) -> SyntheticSentence:
    out = []
    for value, kind in spans:
        start = text.index(value)
        out.append(PIISpan(start, start + len(value), kind, value))
    return SyntheticSentence(text=text, spans=tuple(out), template_id=0)


def test_token_scores_count_hits_misses_wrong_types_and_unscored_gold() -> None:
    s = _sentence(
        "Mr. Ann Lee at 42 Elm Street, call 555 0100",
        ("Mr.", "TITLE"),
        ("Ann Lee", "PERSON"),
        ("42 Elm Street", "STREET_ADDRESS"),
        ("555 0100", "PHONE_NUMBER"),
    )
    t = s.text
    found = [
        (t.index("Mr."), t.index("Mr.") + 3, "PERSON", 0.9),  # unscored gold: ignored
        (t.index("Ann"), t.index("Ann") + 3, "PERSON", 0.9),  # 1 of 2 name tokens
        (t.index("42"), t.index("Street") + 6, "LOCATION", 0.9),  # wrong type
        (t.index("call"), t.index("call") + 4, "PHONE_NUMBER", 0.5),  # false positive
    ]
    result = score([s], [found])
    # gold scored tokens: Ann Lee 42 Elm Street 555 0100 = 7; found 4 of them
    assert result["any_pii"] == {
        "precision": round(4 / 5, 4),
        "recall": round(4 / 7, 4),
        "f2": round(f_beta(4 / 5, 4 / 7, 2.0), 4),
        "tp": 4,
        "fp": 1,
        "fn": 3,
    }
    per = result["per_entity"]
    assert per["PERSON"]["recall"] == 0.5 and per["PERSON"]["precision"] == 1.0
    assert per["STREET_ADDRESS"]["recall"] == 0.0
    assert per["STREET_ADDRESS"]["removed"] == 1.0
    assert per["PHONE_NUMBER"]["recall"] == 0.0
    assert per["PHONE_NUMBER"]["precision"] == 0.0
    assert "TITLE" not in per
    assert f_beta(1.0, 0.5, 2.0) == pytest.approx(5 * 0.5 / (4 + 0.5))


def test_the_handwritten_set_counts_every_occurrence_and_changed_clean_text(
    tmp_path: Path,
) -> None:
    rows = [
        {"id": "a", "domain": "chat", "text": "hi ann, ann here", "pii": [
            {"type": "PERSON", "value": "ann"}]},
        {"id": "b", "domain": "code", "text": "ip=10.0.0.1 ok", "pii": [
            {"type": "IP_ADDRESS", "value": "10.0.0.1"}]},
        {"id": "c", "domain": "clean", "text": "took 3 weeks", "pii": []},
        {"id": "d", "domain": "clean", "text": "v2.1 shipped", "pii": []},
    ]  # fmt: skip
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = handwritten_set(path)
    assert [len(s.spans) for s in data.sentences] == [2, 1]  # both "ann"s
    assert data.domains == ["chat", "code"] and len(data.clean) == 2

    def analyze(texts):  # finds the first "ann" and any "weeks"
        out = []
        for t in texts:
            hits = (
                [(t.index("ann"), t.index("ann") + 3, "PERSON", 0.9)]
                if "ann" in t
                else []
            )
            if "weeks" in t:
                hits.append((t.index("weeks"), t.index("weeks") + 5, "DATE_TIME", 0.6))
            out.append(hits)
        return out

    result = score_handwritten(data, analyze)
    assert result["any_pii"]["tp"] == 1 and result["any_pii"]["fn"] == 5
    assert result["per_domain"]["chat"]["recall"] == 0.5
    assert result["per_domain"]["code"]["recall"] == 0.0
    assert result["clean_changed"] == 0.5
    assert result["clean_changed_examples"] == ["took 3 weeks"]
    path.write_text(json.dumps({"text": "x", "pii": [{"type": "P", "value": "y"}]}))
    with pytest.raises(ValueError, match="'y' is not in its text"):
        handwritten_set(path)


@pytest.mark.slow  # the benchmark script end to end (make test-fast skips it)
def test_pii_benchmark_writes_both_systems_and_the_headline(tmp_path: Path) -> None:
    out = tmp_path / "pii.json"
    env = subprocess_env()
    cmd = [sys.executable, str(REPO / "benchmarks" / "pii.py")]
    cmd += ["--sentences", "40", "--seed", "3", "--out", str(out)]
    cmd += ["--handwritten", str(tmp_path / "none.jsonl")]  # absent: skipped
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["headline"]) == {
        "any_recall",
        "any_precision",
        "structured_min_recall",
        "throughput_vs_presidio",
        "throughput_batched_vs_presidio_batched",
    }
    assert set(doc["systems"]) == {"presidio_default", "fedshield"}
    for system in doc["systems"].values():
        assert 0 <= system["any_pii"]["recall"] <= 1
        assert system["sentences_per_second"] > 0
        assert system["sentences_per_second_batched"] > 0
        assert 0 <= system["batched_same_findings"] <= 1
    assert doc["config"]["sentences"] == 40


def test_the_handwritten_set_passes_its_checker() -> None:
    """Every value is in its text, ids are unique, the sizes the issue asks for
    (>= 150 PII sentences over five domains, >= 50 clean) hold."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "pii_handwritten_check.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.rstrip().endswith("OK")
