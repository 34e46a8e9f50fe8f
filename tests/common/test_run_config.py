"""One declaration per run-config key: pyproject's defaults and the README's
reference agree with it, enums agree with its choices, and a run config that names
an unknown key, a wrong type or an out-of-range value is refused at the boundary."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

import pytest

from fedshield.client.config import ClientConfig
from fedshield.common.config import ConfigError
from fedshield.common.keys import OneOf
from fedshield.common.run_config import RunConfig, default, reference_table
from fedshield.common.run_keys import KEYS
from fedshield.models.config import FinetuneMode, Pooling, TaskKind
from fedshield.privacy.audit.canaries import CanaryKind
from fedshield.privacy.dp import AccountantKind
from fedshield.privacy.pii import PIIMode
from fedshield.server.config import ServerConfig
from fedshield.server.strategy import StrategyName
from fedshield.simulations.partition import PartitionScheme

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_defaults_are_the_declared_defaults(default_run_config) -> None:
    assert list(default_run_config) == [k.name for k in KEYS]
    for key in KEYS:
        value = default_run_config[key.name]
        assert type(value) is type(key.default), key.name
        assert value == key.default, key.name


def test_readme_reference_is_generated_from_the_declaration() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    assert table + "\n" == reference_table(), (
        "README's configuration reference differs from common/run_keys.py; "
        "regenerate it with `python -m fedshield.common.run_config`"
    )


@pytest.mark.parametrize(
    ("name", "enum"),
    [
        ("model.task", TaskKind),
        ("model.finetune", FinetuneMode),
        ("model.pooling", Pooling),
        ("dp.accountant", AccountantKind),
        ("pii.mode", PIIMode),
        ("strategy.name", StrategyName),
        ("data.partition", PartitionScheme),
        ("audit.canary-kind", CanaryKind),
    ],
)
def test_enum_choices_agree_with_the_declaration(name: str, enum: type[StrEnum]):
    (key,) = [k for k in KEYS if k.name == name]
    assert isinstance(key.check, OneOf)
    assert set(key.check.values) == {m.value for m in enum}


def test_a_misspelt_key_is_refused_with_a_suggestion() -> None:
    # a coordinator's typo must not run every site at the default noise
    with pytest.raises(ConfigError, match="Did you mean `dp.noise-multiplier`"):
        ClientConfig.from_run_config({"dp.noise-multipler": 0.01})
    with pytest.raises(ConfigError, match="Unknown run config key `colour`"):
        ServerConfig.from_run_config({"colour": "blue"})


def test_missing_keys_take_their_declared_default() -> None:
    run = RunConfig.parse({"seed": 7})
    assert run["seed"] == 7 and run["dp.delta"] == default("dp.delta")
    assert len(run) == len(KEYS)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train.lr": -1.0}, r"`train.lr` must be > 0. Found -1.0"),
        ({"dp.delta": 1.0}, r"`dp.delta` must be in \(0, 1\)"),
        ({"fraction-train": 0.0}, r"`fraction-train` must be in \(0, 1\]"),
        ({"model.max-length": 64.5}, "must be of type int"),
        ({"dp.enabled": "yes"}, "must be of type bool"),
        ({"pii.mode": "of"}, "did you mean 'off'"),
        ({"pii.entities": "PERSON,,URL"}, "comma-separated list"),
        ({"secagg.threshold": True}, "must be of type int or float"),
    ],
)
def test_bad_values_are_explained(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.parse(raw)


def test_a_config_built_in_code_is_checked_by_the_same_declaration() -> None:
    from fedshield.client.trainer import TrainConfig

    with pytest.raises(ConfigError, match=r"`train.batch-size` must be >= 1"):
        TrainConfig(batch_size=0)


def test_every_key_has_a_one_line_doc() -> None:
    for key in KEYS:
        assert key.doc and "\n" not in key.doc, key.name
        assert re.fullmatch(r"[a-z0-9.-]+", key.name), key.name


def test_a_run_config_cannot_be_made_without_its_checks() -> None:
    # RunConfig.parse returns a RunConfig unchanged: making one must check it
    with pytest.raises(ConfigError, match="num-server-rounds"):
        ClientConfig.from_run_config(RunConfig({"num-server-rounds": -5}))
    with pytest.raises(ConfigError, match="must be a finite number"):
        RunConfig({"dp.noise-multiplier": 10**400})


def test_configs_built_in_code_check_every_declared_field() -> None:
    from fedshield.client.data import SiteDataConfig

    cfg = ClientConfig.from_run_config({})
    with pytest.raises(ConfigError, match="eval.batch-size"):
        type(cfg)(**{**cfg.__dict__, "eval_batch_size": 0})
    with pytest.raises(ConfigError, match="data.text-column"):
        SiteDataConfig(text_column=" ")
