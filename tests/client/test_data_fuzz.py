"""Fuzz the site-file readers: whatever bytes a site's file holds, reading it
either gives records or raises SiteDataError (one paragraph naming the file),
never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedshield.client.data import SiteDataConfig, SiteDataError, read_labeled_file

CLASSIFIER = SiteDataConfig(label_names=("neg", "pos"))
TEXT_ONLY = SiteDataConfig(labelled=False)

# pieces a broken file is made of: delimiters, quotes, line ends, NUL, a BOM,
# JSON punctuation, the column names and labels, non-ASCII and invalid UTF-8
PIECES = st.sampled_from(
    [
        b",", b";", b"\t", b"|", b'"', b"'", b"\n", b"\r\n", b"\r", b"\x00",
        b"\xef\xbb\xbf", b"\xff\xfe", b"\xe9", b"\xc3\xa9", b"{", b"}", b"[", b"]",
        b":", b'"text"', b'"label"', b"text", b"label", b"pos", b"neg", b"0", b"1",
        b"2", b"null", b"true", b" ", b"word", b"\\", b"\\u0000",
    ]
)  # fmt: skip
CONTENT = st.one_of(
    st.binary(max_size=300),
    st.lists(PIECES, max_size=60).map(b"".join),
    st.lists(PIECES, max_size=60).map(lambda p: b"text,label\n" + b"".join(p)),
    st.lists(PIECES, max_size=60).map(lambda p: b'{"text": ' + b"".join(p)),
)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".txt"])
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(content=CONTENT, labelled=st.booleans())
def test_any_file_reads_or_is_a_site_data_error(
    suffix: str, content: bytes, labelled: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"site{suffix}"
        path.write_bytes(content)
        try:
            data = read_labeled_file(path, CLASSIFIER if labelled else TEXT_ONLY)
        except SiteDataError as err:
            assert str(path) in str(err)
            return
        assert data.texts and all(t.strip() and "\x00" not in t for t in data.texts)
        assert all(0 <= label < 2 for label in data.labels)
