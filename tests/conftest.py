"""Shared fixtures: a tiny random BERT on disk, the app's default run config, and
the task identity that building a Flower ``Message`` outside a runtime needs."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@pytest.fixture(scope="session")
def default_run_config() -> dict[str, Any]:
    """``[tool.flwr.app.config]`` flattened exactly as Flower flattens it."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return _flatten(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedshield.models import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture()
def tiny_run_config(
    default_run_config: dict[str, Any], tiny_model_dir: Path
) -> dict[str, Any]:
    cfg = dict(default_run_config)
    cfg.update(
        {
            "model.source": str(tiny_model_dir),
            "model.max-length": 16,
            "train.batch-size": 8,
            "data.train-examples": 120,
            "data.test-examples": 40,
        }
    )
    return cfg


@pytest.fixture()
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's ids; tests that build
    messages without a Flower runtime set them."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1, raising=False)
