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
    with pytest.raises(SiteDataError, match="could not be read.*UTF-8"):
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
    with pytest.raises(SiteDataError, match="UTF-8"):
        read_labeled_file(f, LM)


def test_lm_missing_file_names_the_text_formats(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match=r"\.txt file \(one record per line\)"):
        read_labeled_file(tmp_path / "nope.txt", LM)
