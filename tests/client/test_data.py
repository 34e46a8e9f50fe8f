import json
from pathlib import Path

import pytest

from fedshield.client.data import SiteDataConfig, SiteDataError, read_labeled_file

CFG = SiteDataConfig(
    text_column="text", label_column="label", label_names=("neg", "pos")
)


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_names_and_ids(tmp_path: Path) -> None:
    f = _csv(tmp_path / "s.csv", "text,label\ngood film,pos\nbad film,0\nok,1\n")
    data = read_labeled_file(f, CFG)
    assert data.texts == ("good film", "bad film", "ok")
    assert data.labels == (1, 0, 1)


def test_jsonl_with_custom_columns(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text("\n".join(json.dumps({"body": f"t{i}", "y": i % 2}) for i in range(3)))
    cfg = SiteDataConfig(text_column="body", label_column="y", label_names=("a", "b"))
    assert read_labeled_file(f, cfg).labels == (0, 1, 0)


def test_file_is_never_modified(tmp_path: Path) -> None:
    f = _csv(tmp_path / "s.csv", "text,label\na,pos\n")
    before = f.read_bytes(), f.stat().st_mtime_ns
    read_labeled_file(f, CFG)
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before


def test_missing_file_says_how_to_configure(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match="data-path"):
        read_labeled_file(tmp_path / "absent.csv", CFG)


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_bytes(b"text,label\n\xff\xfe\xfa,pos\n")
    with pytest.raises(SiteDataError, match="is not utf-8 text at line 2.*cp1252"):
        read_labeled_file(f, CFG)


def test_missing_columns_name_what_was_found(tmp_path: Path) -> None:
    f = _csv(tmp_path / "s.csv", "review,stars\ngreat,5\n")
    with pytest.raises(
        SiteDataError, match=r"lacks column\(s\) \['text', 'label'\].*review"
    ):
        read_labeled_file(f, CFG)


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    f = _csv(tmp_path / "s.csv", "text,label\n")
    with pytest.raises(SiteDataError, match="no data rows"):
        read_labeled_file(f, CFG)


def test_label_outside_the_model_classes(tmp_path: Path) -> None:
    f = _csv(tmp_path / "s.csv", "text,label\na,pos\nb,2\n")
    with pytest.raises(SiteDataError, match=r"line 3 has label '2'.*ids 0\.\.1"):
        read_labeled_file(f, CFG)


def test_empty_text_is_rejected(tmp_path: Path) -> None:
    f = _csv(tmp_path / "s.csv", "text,label\n ,pos\n")
    with pytest.raises(SiteDataError, match="empty 'text'"):
        read_labeled_file(f, CFG)


def test_invalid_json_line(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text('{"text": "a", "label": 1}\n{not json}\n')
    with pytest.raises(SiteDataError, match="line 2 is not valid JSON"):
        read_labeled_file(f, CFG)


def test_unsupported_extension(tmp_path: Path) -> None:
    f = _csv(tmp_path / "s.parquet", "x")
    with pytest.raises(SiteDataError, match="unsupported file type"):
        read_labeled_file(f, CFG)


def test_label_names_must_match_num_labels(default_run_config) -> None:
    from fedshield.common.config import ConfigError

    cfg = dict(default_run_config, **{"data.label-names": "a,b,c"})
    with pytest.raises(ConfigError, match="must list 2 names"):
        SiteDataConfig.from_run_config(cfg)


# --- causal LM: text-only records --------------------------------------------

LM = SiteDataConfig(labelled=False)


def test_lm_txt_is_one_record_per_non_blank_line(tmp_path: Path) -> None:
    f = _csv(tmp_path / "notes.txt", "first note, with a comma\n\n  second note\r\n")
    data = read_labeled_file(f, LM)
    assert data.texts == ("first note, with a comma", "  second note")
    assert data.labels == (0, 0)  # unused by the causal LM


def test_lm_reads_only_the_text_column_of_csv_and_jsonl(tmp_path: Path) -> None:
    csv_file = _csv(tmp_path / "s.csv", 'text\n"a document\nover two lines"\nb\n')
    assert read_labeled_file(csv_file, LM).texts == ("a document\nover two lines", "b")
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text(json.dumps({"text": "x", "other": 1}) + "\n", encoding="utf-8")
    assert read_labeled_file(jsonl, LM).texts == ("x",)


def test_lm_run_config_reads_text_only(default_run_config) -> None:
    cfg = SiteDataConfig.from_run_config(
        {**default_run_config, "model.task": "causal-lm", "model.num-labels": 3}
    )
    assert cfg.labelled is False  # label names need not match num-labels


def test_txt_is_refused_for_a_classifier(tmp_path: Path) -> None:
    f = _csv(tmp_path / "notes.txt", "a\n")
    with pytest.raises(SiteDataError, match="without labels"):
        read_labeled_file(f, CFG)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_lm_empty_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    with pytest.raises(SiteDataError, match="no data rows"):
        read_labeled_file(_csv(tmp_path / "empty.txt", content), LM)


def test_lm_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(SiteDataError, match="not utf-8 text at line 1.*cp1252"):
        read_labeled_file(f, LM)


def test_lm_missing_file_names_the_text_formats(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match=r"\.txt file \(one record per line\)"):
        read_labeled_file(tmp_path / "nope.txt", LM)


# --- site files as real users bring them ---------------------------------------


def test_an_excel_csv_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    f = tmp_path / "excel.csv"
    f.write_bytes("text,label\r\ngood film,pos\r\n".encode("utf-8-sig"))
    assert read_labeled_file(f, CFG).texts == ("good film",)
    g = tmp_path / "excel.jsonl"
    g.write_bytes('{"text": "x", "label": 0}\n'.encode("utf-8-sig"))
    assert read_labeled_file(g, CFG).texts == ("x",)


def test_a_field_above_the_csv_modules_default_limit_reads(tmp_path: Path) -> None:
    big = "word " * 60_000  # 300 KB in one cell (csv's default limit: 128 KiB)
    f = _csv(tmp_path / "long.csv", f'text,label\n"{big}",pos\n')
    assert read_labeled_file(f, CFG).texts == (big,)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt"])
def test_text_with_a_nul_byte_is_refused_with_its_line(
    tmp_path: Path, suffix: str
) -> None:
    f = tmp_path / f"nul{suffix}"
    body = {
        ".csv": "text,label\nfine,pos\nbro\x00ken,neg\n",
        ".jsonl": (
            '{"text": "fine", "label": 1}\n{"text": "bro\\u0000ken", "label": 0}\n'
        ),
        ".txt": "fine\nbro\x00ken\n",
    }[suffix]
    f.write_text(body, encoding="utf-8")
    line = 2 if suffix != ".csv" else 3
    with pytest.raises(SiteDataError, match=f"line {line} has a NUL character"):
        read_labeled_file(f, CFG if suffix != ".txt" else LM)


def test_a_cp1252_file_reads_with_data_encoding_and_the_error_says_so(
    tmp_path: Path,
) -> None:
    f = tmp_path / "windows.csv"
    f.write_bytes("text,label\nok,pos\ncafé – “great”,pos\n".encode("cp1252"))
    with pytest.raises(SiteDataError, match=r"line 3 .*data.encoding='cp1252'"):
        read_labeled_file(f, CFG)
    cp1252 = SiteDataConfig(label_names=("neg", "pos"), encoding="cp1252")
    assert read_labeled_file(f, cp1252).texts == ("ok", "café – “great”")


def test_a_utf16_file_is_named_as_such(tmp_path: Path) -> None:
    f = tmp_path / "utf16.csv"
    f.write_bytes("text,label\ngood,pos\n".encode("utf-16"))
    with pytest.raises(SiteDataError, match="UTF-16 byte-order mark"):
        read_labeled_file(f, CFG)
    utf16 = SiteDataConfig(label_names=("neg", "pos"), encoding="utf-16")
    assert read_labeled_file(f, utf16).texts == ("good",)


def test_an_unknown_encoding_is_a_config_error() -> None:
    from fedshield.common.config import ConfigError

    with pytest.raises(ConfigError, match="data.encoding.*text encoding"):
        SiteDataConfig(encoding="utf-9")
    with pytest.raises(ConfigError, match="bytes-to-bytes"):
        SiteDataConfig(encoding="base64")


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("semicolon.csv", 'text;label\n"good; really";pos\nbad;neg\n'),
        ("tab.tsv", "text\tlabel\ngood; really\tpos\nbad\tneg\n"),
        ("tab-in.csv", "text\tlabel\ngood; really\tpos\nbad\tneg\n"),
        ("pipe.csv", "text|label\ngood; really|pos\nbad|neg\n"),
    ],
)
def test_semicolon_tab_and_pipe_separated_files_read(
    tmp_path: Path, name: str, body: str
) -> None:
    f = _csv(tmp_path / name, body)
    data = read_labeled_file(f, CFG)
    assert data.texts == ("good; really", "bad") and data.labels == (1, 0)


def test_quoted_newlines_keep_the_record_and_errors_name_its_first_line(
    tmp_path: Path,
) -> None:
    f = _csv(tmp_path / "q.csv", 'text,label\n"two\nlines",pos\n"one",maybe\n')
    with pytest.raises(SiteDataError, match="line 4 has label 'maybe'"):
        read_labeled_file(f, CFG)
    g = _csv(tmp_path / "ok.csv", 'text,label\n"two\r\nlines",pos\n')
    assert read_labeled_file(g, CFG).texts == ("two\r\nlines",)


def test_rows_with_too_many_or_too_few_fields_are_named(tmp_path: Path) -> None:
    f = _csv(tmp_path / "extra.csv", "text,label\nok,pos\ngood, but long,pos\n")
    with pytest.raises(SiteDataError, match=r"line 3 has 3 fields, the header 2.*quot"):
        read_labeled_file(f, CFG)
    g = _csv(tmp_path / "short.csv", "text,label\nok,pos\nno label\n")
    with pytest.raises(SiteDataError, match=r"line 3 has 1 field\(s\), the header 2"):
        read_labeled_file(g, CFG)


@pytest.mark.parametrize(
    ("line", "kind"), [('"just a string"', "str"), ("[1, 2]", "list"), ("7", "int")]
)
def test_jsonl_lines_that_are_not_objects(tmp_path: Path, line: str, kind: str) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text('{"text": "a", "label": 1}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(SiteDataError, match=f"line 2 is a JSON {kind}, expected"):
        read_labeled_file(f, CFG)
    g = tmp_path / "nested.jsonl"
    g.write_text('{"text": {"body": "a"}, "label": 1}\n', encoding="utf-8")
    with pytest.raises(SiteDataError, match="is a JSON object, expected the record"):
        read_labeled_file(g, CFG)


@pytest.mark.parametrize(
    ("label", "suggested"), [("pso", "pos"), ("Pos", "pos"), ("NEG", "neg")]
)
def test_a_label_typo_suggests_the_closest_class(
    tmp_path: Path, label: str, suggested: str
) -> None:
    f = _csv(tmp_path / "s.csv", f"text,label\na,pos\nb,{label}\n")
    with pytest.raises(SiteDataError, match=f"Did you mean '{suggested}'"):
        read_labeled_file(f, CFG)


def test_a_directory_or_a_symlink_loop_given_as_the_file(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match="is a directory.*file inside it"):
        read_labeled_file(tmp_path, CFG)
    loop = tmp_path / "loop.csv"
    loop.symlink_to(tmp_path / "other.csv")
    (tmp_path / "other.csv").symlink_to(loop)
    with pytest.raises(SiteDataError, match="loop of symbolic links"):
        read_labeled_file(loop, CFG)


def test_the_site_node_config_sets_its_own_encoding(tmp_path: Path) -> None:
    """data-encoding in the node config reads the site's file; the run's
    data.encoding is only the default."""
    from fedshield.client.config import ClientConfig
    from fedshield.client.node import NodeConfig
    from fedshield.client.site import SiteFiles
    from fedshield.common.config import ConfigError
    from fedshield.common.run_config import RunConfig

    f = tmp_path / "windows.csv"
    f.write_bytes("text,label\ncafé,fresh\n".encode("cp1252"))
    run = RunConfig.parse({})
    cfg = ClientConfig.from_run_config(run)
    node = NodeConfig.parse({"data-path": str(f), "data-encoding": "cp1252"})
    assert SiteFiles().load(node, cfg, run, 1).train.texts == ("café",)
    with pytest.raises(SiteDataError, match="cp1252"):
        SiteFiles().load(NodeConfig.parse({"data-path": str(f)}), cfg, run, 1)
    with pytest.raises(ConfigError, match="data-encoding"):
        NodeConfig.parse({"data-path": str(f), "data-encoding": "klingon"})


def test_every_reader_splits_a_file_the_same_way_whatever_columns_it_needs(
    tmp_path: Path,
) -> None:
    """The delimiter comes from the header alone: ``fedshield scrub --column
    text`` and the site's reader agree on which field is the text, so the text
    the site trains on is the one that was scrubbed."""
    from fedshield.privacy.pii import PIIConfig, PIIMode, Scrubber
    from fedshield.privacy.pii.files import scrub_file

    src = _csv(
        tmp_path / "s.csv",
        "text;label;channel,text\nMaria Garcia called from 415-555-2671;pos;crm,web\n",
    )
    out = tmp_path / "clean.csv"
    scrub_file(src, out, scrubber=Scrubber(PIIConfig(mode=PIIMode.TAG)))
    (text,) = read_labeled_file(out, CFG).texts
    assert "Maria" not in text and "555" not in text, text


def test_a_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    f = _csv(tmp_path / "d.csv", "text,label,text\nsecret,pos,other\n")
    with pytest.raises(SiteDataError, match=r"\['text'\] more than once"):
        read_labeled_file(f, CFG)


def test_json_nested_too_deeply_is_a_site_data_error(tmp_path: Path) -> None:
    f = tmp_path / "deep.jsonl"
    f.write_text("[" * 200_000 + "\n", encoding="utf-8")
    with pytest.raises(SiteDataError, match="nests JSON too deeply"):
        read_labeled_file(f, CFG)
