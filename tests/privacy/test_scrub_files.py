"""``fedshield scrub`` on files as users bring them (Excel's byte-order mark and
semicolons, Windows encodings, ragged rows, huge cells, JSON fields that are not
text), and a fuzzer: whatever the file holds, scrubbing writes a complete output
or raises PIIError, and never leaves a partial output behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedshield.privacy.pii import PIIConfig, PIIError, PIIMode, Scrubber
from fedshield.privacy.pii.files import scrub_file


@pytest.fixture(scope="module")
def tagger() -> Scrubber:
    return Scrubber(PIIConfig(mode=PIIMode.TAG))


def test_an_excel_csv_with_a_byte_order_mark_and_semicolons(
    tagger: Scrubber, tmp_path: Path
) -> None:
    src = tmp_path / "excel.csv"
    body = 'id;text\r\n1;"Mail j.doe@example.org; today"\r\n2;plain\r\n'
    src.write_bytes(body.encode("utf-8-sig"))
    assert scrub_file(src, tmp_path / "out.csv", scrubber=tagger) == 2
    out = (tmp_path / "out.csv").read_text(encoding="utf-8")
    assert out.splitlines()[0] == "id;text"  # no BOM in the column name, same delimiter
    assert "<EMAIL_ADDRESS>" in out and "j.doe" not in out and "2;plain" in out


def test_a_cp1252_file_with_encoding(tagger: Scrubber, tmp_path: Path) -> None:
    src = tmp_path / "win.txt"
    src.write_bytes("Café note for Maria Garcia – “urgent”\n".encode("cp1252"))
    with pytest.raises(PIIError, match="--encoding cp1252"):
        scrub_file(src, tmp_path / "a.txt", scrubber=tagger)
    assert not (tmp_path / "a.txt").exists()
    scrub_file(src, tmp_path / "b.txt", scrubber=tagger, encoding="cp1252")
    out = (tmp_path / "b.txt").read_text(encoding="utf-8")
    assert "Maria" not in out and "– “urgent”" in out  # cp1252's dash and quotes
    with pytest.raises(PIIError, match="must be a text encoding"):
        scrub_file(src, tmp_path / "c.txt", scrubber=tagger, encoding="utf-9")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("id,text\n1,fine\n2,too, many\n", "line 3 has 3 field"),
        ("id,text\n1,fine\n2\n", "line 3 has 1 field"),
    ],
)
def test_ragged_rows_are_refused_with_their_line(
    tagger: Scrubber, tmp_path: Path, body: str, match: str
) -> None:
    src = tmp_path / "r.csv"
    src.write_text(body, encoding="utf-8")
    with pytest.raises(PIIError, match=match):
        scrub_file(src, tmp_path / "out.csv", scrubber=tagger)
    assert not (tmp_path / "out.csv").exists()


def test_a_cell_above_the_csv_modules_default_limit(
    tagger: Scrubber, tmp_path: Path
) -> None:
    big = "word " * 40_000 + "mail j.doe@example.org"
    src = tmp_path / "big.csv"
    src.write_text(f'id,text\n1,"{big}"\n', encoding="utf-8")
    assert scrub_file(src, tmp_path / "out.csv", scrubber=tagger) == 1
    assert "j.doe" not in (tmp_path / "out.csv").read_text(encoding="utf-8")


def test_a_jsonl_text_field_that_is_not_a_string(
    tagger: Scrubber, tmp_path: Path
) -> None:
    src = tmp_path / "n.jsonl"
    src.write_text('{"text": "ok"}\n{"text": {"name": "Maria Garcia"}}\n')
    with pytest.raises(PIIError, match="line 2: field 'text' is a JSON dict"):
        scrub_file(src, tmp_path / "out.jsonl", scrubber=tagger)


PIECES = st.sampled_from(
    [
        b",", b";", b"\t", b'"', b"\n", b"\r\n", b"\x00", b"\xef\xbb\xbf", b"\xe9",
        b"{", b"}", b":", b'"text"', b"text", b"id", b"word", b"Maria Garcia",
        b"j.doe@example.org", b" ", b"1",
    ]
)  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".txt"])
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.lists(PIECES, max_size=40).map(lambda p: b"id,text\n" + b"".join(p)),
        st.lists(PIECES, max_size=40).map(lambda p: b'{"text": ' + b"".join(p)),
    )
)
def test_any_file_is_scrubbed_whole_or_refused(
    tagger: Scrubber, suffix: str, content: bytes
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / f"in{suffix}", Path(folder) / f"out{suffix}"
        src.write_bytes(content)
        try:
            scrub_file(src, dst, scrubber=tagger)
        except PIIError:
            assert not dst.exists()  # nothing partial left behind
            return
        assert dst.is_file()
        assert src.read_bytes() == content  # the input is never touched


def test_duplicate_columns_deep_json_and_byte_codecs_are_refused(
    tagger: Scrubber, tmp_path: Path
) -> None:
    dup = tmp_path / "d.csv"
    dup.write_text("text,label,text\nMaria Garcia,pos,other\n", encoding="utf-8")
    with pytest.raises(PIIError, match="more than once"):
        scrub_file(dup, tmp_path / "o.csv", scrubber=tagger)
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 200_000 + "\n", encoding="utf-8")
    with pytest.raises(PIIError, match="nests JSON too deeply"):
        scrub_file(deep, tmp_path / "o.jsonl", scrubber=tagger)
    with pytest.raises(PIIError, match="bytes-to-bytes"):
        scrub_file(dup, tmp_path / "o2.csv", scrubber=tagger, encoding="base64")
    assert not list(tmp_path.glob("o*"))


def test_the_scrub_command_takes_encoding(tmp_path: Path) -> None:
    """``fedshield scrub --encoding cp1252`` reaches the reader; without it the
    command says which option to pass."""
    from typer.testing import CliRunner

    from fedshield.cli.main import app

    src = tmp_path / "win.txt"
    src.write_bytes("Note for Maria Garcia – “urgent”\n".encode("cp1252"))
    runner = CliRunner()
    plain = runner.invoke(app, ["scrub", str(src), "--out", str(tmp_path / "a.txt")])
    assert plain.exit_code == 2 and "--encoding cp1252" in plain.output
    done = runner.invoke(
        app,
        ["scrub", str(src), "--out", str(tmp_path / "b.txt"), "--encoding", "cp1252"],
    )
    assert done.exit_code == 0, done.output
    out = (tmp_path / "b.txt").read_text(encoding="utf-8")
    assert "Maria" not in out and "– “urgent”" in out
