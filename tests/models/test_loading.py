from pathlib import Path

import pytest
import torch

from models import (
    FinetuneMode,
    ModelConfig,
    ModelLoadError,
    forward_inputs,
    load_model,
    trainable_state,
)
from models.config import ConfigError


@pytest.mark.parametrize("mode", [FinetuneMode.LORA, FinetuneMode.FULL])
def test_two_loads_build_identical_trainable_state(tiny_model_dir: Path, mode) -> None:
    cfg = ModelConfig(source=str(tiny_model_dir), finetune=mode, lora_r=4)
    a = trainable_state(load_model(cfg).model)
    b = trainable_state(load_model(cfg).model)
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_trains_only_adapters_and_head(tiny_model_dir: Path) -> None:
    cfg = ModelConfig(source=str(tiny_model_dir), finetune=FinetuneMode.LORA, lora_r=4)
    names = list(trainable_state(load_model(cfg).model))
    assert names and all(("lora_" in n) or ("classifier" in n) for n in names)
    assert any("classifier" in n for n in names)


def test_hub_id_without_network_names_offline_alternatives(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="packaged all-MiniLM-L6-v2"):
        load_model(ModelConfig(source="some-org/not-a-cached-model"))


def test_missing_local_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model(ModelConfig(source=str(tmp_path / "nope")))


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(ModelConfig(source=str(tmp_path)))


def test_unknown_lora_target_lists_module_names(tiny_model_dir: Path) -> None:
    cfg = ModelConfig(source=str(tiny_model_dir), lora_targets=("nonexistent",))
    with pytest.raises(ModelLoadError, match="query"):
        load_model(cfg)


def test_config_validation_messages(default_run_config) -> None:
    bad = dict(default_run_config, **{"model.finetune": "half"})
    with pytest.raises(ConfigError, match="'lora', 'full'"):
        ModelConfig.from_run_config(bad)
    with pytest.raises(ConfigError, match="model.lora.r"):
        ModelConfig(lora_r=0)
    with pytest.raises(ConfigError, match="missing"):
        ModelConfig.from_run_config({})


def test_forward_inputs_give_contiguous_batched_position_ids() -> None:
    batch = {
        "input_ids": torch.ones(3, 5, dtype=torch.long),
        "attention_mask": torch.ones(3, 5, dtype=torch.long),
        "token_type_ids": torch.zeros(3, 5, dtype=torch.long),
    }
    out = forward_inputs(batch)
    assert out["position_ids"].shape == (3, 5)
    assert out["position_ids"].is_contiguous()
    assert out["position_ids"][2].tolist() == [0, 1, 2, 3, 4]
