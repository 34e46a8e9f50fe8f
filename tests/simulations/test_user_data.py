"""Simulations on the user's own data: one file split among sites, or one file
per site (name = stem, own node config in <stem>.toml); string labels, their
inferred names, and the errors a user meets first."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from fedshield.common.config import ConfigError
from fedshield.simulations.apps import SimulatedSites, central_test
from fedshield.simulations.user_data import (
    UserData,
    infer_label_names,
    prepare_user_data,
)

CLASSES = ("negative", "neutral", "positive")


def _csv(path: Path, n: int, seed: int, classes: tuple[str, ...] = CLASSES) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["note", "mood"])
        for i in range(n):
            out.writerow([f"record {seed}-{i} word{rng.randint(0, 9)}", classes[i % 3]])
    return path


COLUMNS = {"data.text-column": "note", "data.label-column": "mood"}


def _run_config(prepared_overrides: list[str], **extra: object) -> dict[str, object]:
    from flwr.common.config import parse_config_args

    from fedshield.common.run_config import RunConfig

    # one string, as the launcher passes them (flwr merges separate items badly)
    given = {**COLUMNS, **parse_config_args([" ".join(prepared_overrides)]), **extra}
    return dict(RunConfig.parse(given))


def test_string_labels_are_inferred_sorted_printed_and_set(tmp_path: Path) -> None:
    data = _csv(tmp_path / "notes.csv", 60, seed=1)
    prepared = prepare_user_data(
        data=data, test=None, sites_dir=None, num_sites=None, run_config=COLUMNS
    )
    assert f"data.train-path='{data}'" in prepared.overrides
    assert "data.label-names='negative,neutral,positive'" in prepared.overrides
    assert "model.num-labels=3" in prepared.overrides
    assert prepared.num_sites == 4
    assert "0=negative, 1=neutral, 2=positive" in prepared.messages[0]


def test_integer_labels_sort_as_numbers() -> None:
    assert infer_label_names(["10", "9", "2", "9"]) == ["2", "9", "10"]
    assert infer_label_names(["b", "a"]) == ["a", "b"]
    for bad in ("a,b", "new\nline"):
        with pytest.raises(ConfigError, match="cannot be a class name"):
            infer_label_names([bad, "c"])


def test_a_test_label_unseen_in_training_is_a_clear_error(tmp_path: Path) -> None:
    data = _csv(tmp_path / "train.csv", 30, seed=1, classes=("bad", "good", "bad"))
    test = _csv(tmp_path / "test.csv", 9, seed=2, classes=("bad", "good", "ugly"))
    with pytest.raises(ConfigError, match=r"\['ugly'\].*never sees"):
        prepare_user_data(
            data=data, test=test, sites_dir=None, num_sites=None, run_config=COLUMNS
        )


def test_one_file_split_among_sites_leaves_a_disjoint_central_test(
    tmp_path: Path,
) -> None:
    data = _csv(tmp_path / "notes.csv", 100, seed=3)
    prepared = prepare_user_data(
        data=data, test=None, sites_dir=None, num_sites=3, run_config=COLUMNS
    )
    run = _run_config(prepared.overrides, **{"data.partition": "quantity"})
    user = UserData.from_run_config(run)
    assert user is not None
    shares = [set(user.site(k, 3).texts) for k in range(3)]
    test = set(central_test("", run).texts)
    assert len(test) == 20  # data.test-fraction 0.2
    assert not any(a & b for i, a in enumerate(shares) for b in shares[i + 1 :])
    assert not test & set().union(*shares)
    assert len(test | set().union(*shares)) == 100  # nothing lost
    again = UserData.from_run_config(run)
    assert again is not None and set(again.site(1, 3).texts) == shares[1]


def test_a_sites_dir_names_sites_by_file_and_applies_their_own_policies(
    tmp_path: Path,
) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    for k, name in enumerate(("north", "south", "east")):
        _csv(sites / f"{name}.csv", 40, seed=k)
    (sites / "east.toml").write_text("max-epsilon = 2.5\nsecagg-max-colluders = 0\n")
    (sites / "README.md").write_text("not a site")
    prepared = prepare_user_data(
        data=None, test=None, sites_dir=sites, num_sites=None, run_config=COLUMNS
    )
    assert prepared.num_sites == 3
    run = _run_config(prepared.overrides, **{"simulation.site-max-epsilon": 8.0})
    source = SimulatedSites()
    # sorted by file name: east, north, south
    nodes = [
        source.node_config({"partition-id": k, "num-partitions": 3}, run)
        for k in range(3)
    ]
    assert [n.site_name for n in nodes] == ["east", "north", "south"]
    assert nodes[0].max_epsilon == 2.5 and nodes[1].max_epsilon == 8.0
    assert nodes[0].policy.secagg_max_colluders == 0  # its own policy
    from fedshield.client.config import ClientConfig

    site = source.load(nodes[0], ClientConfig.from_run_config(run), run, 7)
    assert site.name == "east" and len(site.train) == 32  # 8 held out for the test
    assert len(central_test("", run)) == 24


def test_a_site_files_own_encoding_comes_from_its_toml(tmp_path: Path) -> None:
    """One site exported its file from Excel on Windows (cp1252, ``data-encoding``
    in its <stem>.toml); the others are UTF-8. Without the key, the error names
    the file, its line and the setting."""
    sites = tmp_path / "sites"
    sites.mkdir()
    _csv(sites / "north.csv", 30, seed=1)
    rows = "".join(f"café {i} – “ok”,{CLASSES[i % 3]}\n" for i in range(30))
    (sites / "south.csv").write_bytes(("note,mood\n" + rows).encode("cp1252"))
    with pytest.raises(ConfigError, match=r"south.csv.*line 2.*data-encoding"):
        prepare_user_data(
            data=None, test=None, sites_dir=sites, num_sites=None, run_config=COLUMNS
        )
    (sites / "south.toml").write_text('data-encoding = "cp1252"\n')
    prepared = prepare_user_data(
        data=None, test=None, sites_dir=sites, num_sites=None, run_config=COLUMNS
    )
    run = _run_config(prepared.overrides)
    source = SimulatedSites()
    node = source.node_config({"partition-id": 1, "num-partitions": 2}, run)
    from fedshield.client.config import ClientConfig

    site = source.load(node, ClientConfig.from_run_config(run), run, 3)
    assert site.name == "south" and any("café" in t for t in site.train.texts)


@pytest.mark.parametrize(
    ("files", "toml", "sites", "match"),
    [
        (["a.csv", "b.csv"], None, 3, "--sites 3, but .* has 2 site files"),
        (["a b.csv"], None, None, "not a valid site name"),
        (["a.csv"], "data-path = '/elsewhere.csv'", None, "cannot be set"),
        (["a.csv"], "max-epsilon = ", None, "as TOML"),
        ([], None, None, "found none"),
        (["a.csv", "a.jsonl"], None, None, r"more than one file per site name \['a'\]"),
        (["a.csv"], "max-epsilon = 1", None, r"\['b.toml'\] match no site file"),
    ],
)
def test_a_bad_sites_dir_is_refused_before_anything_starts(
    tmp_path: Path, files: list[str], toml: str | None, sites: int | None, match: str
) -> None:
    folder = tmp_path / "sites"
    folder.mkdir()
    for k, name in enumerate(files):
        _csv(folder / name, 20, seed=k)
    if toml is not None:  # beside a.csv; beside nothing when the file is b.csv
        (folder / ("a.toml" if "max-epsilon = 1" not in toml else "b.toml")).write_text(
            toml
        )
    with pytest.raises(ConfigError, match=match):
        prepare_user_data(
            data=None, test=None, sites_dir=folder, num_sites=sites, run_config=COLUMNS
        )


def test_audit_canaries_are_refused_on_the_users_data(tmp_path: Path) -> None:
    data = _csv(tmp_path / "notes.csv", 30, seed=1)
    prepared = prepare_user_data(
        data=data, test=None, sites_dir=None, num_sites=None, run_config=COLUMNS
    )
    with pytest.raises(ConfigError, match="audit.canaries"):
        UserData.from_run_config(
            _run_config(prepared.overrides, **{"audit.canaries": 10})
        )


def _jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    import json

    path.write_text("".join(json.dumps({"note": t, "mood": m}) + "\n" for t, m in rows))
    return path


def test_labels_are_read_as_the_user_wrote_them(tmp_path: Path) -> None:
    """An integer label unseen in training is not taken for a class id; an empty
    label names its line; an upper-case suffix is a site file too."""
    train = _jsonl(tmp_path / "t.jsonl", [(f"r{i}", str(1 + i % 2)) for i in range(20)])
    test = _jsonl(tmp_path / "x.jsonl", [("a", "0"), ("b", "1")])
    with pytest.raises(ConfigError, match=r"\['0'\]"):
        prepare_user_data(
            data=train, test=test, sites_dir=None, num_sites=None, run_config=COLUMNS
        )
    empty = _jsonl(tmp_path / "e.jsonl", [("a", "pos"), ("b", " ")])
    with pytest.raises(ConfigError, match="line 2 has an empty 'mood' field"):
        prepare_user_data(
            data=empty, test=None, sites_dir=None, num_sites=None, run_config=COLUMNS
        )
    sites = tmp_path / "sites"
    sites.mkdir()
    _csv(sites / "North.CSV", 20, seed=1)
    _csv(sites / "south.csv", 20, seed=2)
    prepared = prepare_user_data(
        data=None, test=None, sites_dir=sites, num_sites=None, run_config=COLUMNS
    )
    assert prepared.num_sites == 2


def test_a_split_that_cannot_be_made_fails_before_launch(tmp_path: Path) -> None:
    data = _csv(tmp_path / "notes.csv", 30, seed=1)
    for fraction in (0.0, 1.0):
        with pytest.raises(ConfigError, match="data.test-fraction"):
            prepare_user_data(
                data=data,
                test=None,
                sites_dir=None,
                num_sites=None,
                run_config={**COLUMNS, "data.test-fraction": fraction},
            )
    with pytest.raises(ConfigError, match="cannot give 20 sites"):
        prepare_user_data(
            data=data, test=None, sites_dir=None, num_sites=20, run_config=COLUMNS
        )


def test_a_node_is_simulated_or_deployed_never_both() -> None:
    """The coordinator's simulation settings (site budgets, policies from a
    sites-dir, poisoning) act on simulated nodes: a node config that names a
    deployed site's files and a partition is refused outright."""
    from fedshield.client.node import NodeConfig

    with pytest.raises(ConfigError, match="a node is one or the other"):
        NodeConfig.parse(
            {"data-path": "/data/notes.csv", "partition-id": 0, "num-partitions": 2}
        )


def test_an_empty_site_file_is_named(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    _csv(sites / "full.csv", 20, seed=1)
    (sites / "hollow.csv").write_text("note,mood\n")
    with pytest.raises(ConfigError, match="hollow.csv"):
        prepare_user_data(
            data=None, test=None, sites_dir=sites, num_sites=None, run_config=COLUMNS
        )


def test_the_root_guard_on_user_data_needs_the_coordinators_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _csv(tmp_path / "all.csv", 30, seed=2)
    guard = {**COLUMNS, "strategy.root-guard": True}
    with pytest.raises(ConfigError, match="strategy.root-data-path='FILE'"):
        prepare_user_data(
            data=data, test=None, sites_dir=None, num_sites=2, run_config=guard
        )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="is not a file"):
        prepare_user_data(
            data=data,
            test=None,
            sites_dir=None,
            num_sites=2,
            run_config={**guard, "strategy.root-data-path": "missing.csv"},
        )
    prepared = prepare_user_data(
        data=data,
        test=None,
        sites_dir=None,
        num_sites=2,
        run_config={**guard, "strategy.root-data-path": "all.csv"},
    )  # made absolute: the ServerApp runs in another folder
    assert f"strategy.root-data-path='{tmp_path / 'all.csv'}'" in prepared.overrides
