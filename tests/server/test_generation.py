"""Generation samples as the coordinator writes them: a prompt that carries PII
and a continuation are both scrubbed before summary.json sees them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedshield.models import ModelConfig, TaskKind, load_model, write_tiny_causal_lm
from fedshield.server.config import ServerConfig
from fedshield.server.generation import generation_samples, prompts


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> Any:
    path = write_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "llama")
    cfg = ModelConfig(source=str(path), task=TaskKind.CAUSAL_LM)
    return SimpleNamespace(loaded=load_model(cfg)), path


def _cfg(default_run_config: dict, path: Path, tmp_path: Path, **extra) -> ServerConfig:
    return ServerConfig.from_run_config(
        {
            **default_run_config,
            "model.task": "causal-lm",
            "model.source": str(path),
            "out-dir": str(tmp_path),
            **extra,
        }
    )


def test_prompts_and_continuations_are_scrubbed(
    evaluator, default_run_config, tmp_path
) -> None:
    stub, path = evaluator
    cfg = _cfg(
        default_run_config,
        path,
        tmp_path,
        **{
            "eval.prompts": "Email jane.doe@example.com about | the film was",
            "eval.generate-tokens": 3,
        },
    )
    out = generation_samples(stub, cfg)
    assert out is not None and out["scrubbed"] is True
    first, second = out["samples"]
    assert "jane.doe@example.com" not in first["prompt"]
    assert "<EMAIL_ADDRESS>" in first["prompt"]
    assert second["prompt"] == "the film was"
    assert all(isinstance(s["text"], str) for s in out["samples"])


def test_no_samples_when_asked_for_none(
    evaluator, default_run_config, tmp_path
) -> None:
    stub, path = evaluator
    none = _cfg(default_run_config, path, tmp_path, **{"eval.generate-tokens": 0})
    assert generation_samples(stub, none) is None
    assert prompts(" | a|  |b ") == ["a", "b"]
