from pathlib import Path

import pytest
import torch

from fedshield.client.trainer import TrainConfig, train_site
from fedshield.common.config import ConfigError
from fedshield.models import (
    FinetuneMode,
    ModelConfig,
    ModelLoadError,
    TaskKind,
    forward_inputs,
    load_model,
    trainable_state,
)
from fedshield.models.loading import LoadedModel, build_model
from fedshield.models.texts import LabeledTexts, tokenize
from fedshield.privacy.dp import DPConfig, GradSampleMode


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


def test_ffa_lora_trains_b_and_the_head_on_the_same_frozen_a_everywhere(
    tiny_model_dir: Path,
) -> None:
    """``model.lora.freeze-a``: no A matrix is trainable (none leaves a site), and
    every load (the server, each site) holds the same seeded A, so the mean of the
    sites' B is the mean of their adapter updates B A."""
    cfg = ModelConfig(source=str(tiny_model_dir), lora_r=4, lora_freeze_a=True)
    a, b = load_model(cfg).model, load_model(cfg).model
    names = list(trainable_state(a))
    assert names and not any("lora_A" in n for n in names)
    assert any("lora_B" in n for n in names) and any("classifier" in n for n in names)
    frozen_a = {n: p for n, p in a.named_parameters() if "lora_A" in n}
    frozen_b = {n: p for n, p in b.named_parameters() if "lora_A" in n}
    assert frozen_a and all(torch.equal(p, frozen_b[n]) for n, p in frozen_a.items())
    assert not any(p.requires_grad for p in frozen_a.values())
    assert all(p.abs().sum() > 0 for p in frozen_a.values())  # random, not zero
    with pytest.raises(ConfigError, match="has no LoRA adapters"):
        ModelConfig(finetune=FinetuneMode.FULL, lora_freeze_a=True)


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
    # a key the run config leaves out takes its declared default
    assert ModelConfig.from_run_config({}) == ModelConfig(init_seed=42)


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


def test_mean_pooling_ignores_padding(tiny_model_dir: Path) -> None:
    model = load_model(
        ModelConfig(source=str(tiny_model_dir), finetune=FinetuneMode.FULL)
    ).model
    model.eval()
    ids = torch.tensor([[101, 2204, 3185, 102]])
    short = forward_inputs({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    padded_ids = torch.tensor([[101, 2204, 3185, 102, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    padded = forward_inputs({"input_ids": padded_ids, "attention_mask": mask})
    with torch.no_grad():
        torch.testing.assert_close(model(**short).logits, model(**padded).logits)


def test_cls_pooling_uses_the_hugging_face_head(tiny_model_dir: Path) -> None:
    from fedshield.models import Pooling

    cfg = ModelConfig(source=str(tiny_model_dir), pooling=Pooling.CLS, lora_r=4)
    names = list(trainable_state(load_model(cfg).model))
    assert any("classifier" in n for n in names)
    assert type(load_model(cfg).model.get_base_model()).__name__ == (
        "BertForSequenceClassification"
    )


def test_head_parameters_are_exactly_the_classifier(tiny_model_dir: Path) -> None:
    from fedshield.models import is_head_parameter

    model = load_model(ModelConfig(source=str(tiny_model_dir), lora_r=4)).model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    head = [n for n in trainable if is_head_parameter(n)]
    assert head and all("classifier" in n for n in head)
    assert all("lora_" in n for n in trainable if n not in head)
    assert not is_head_parameter("encoder.layer.0.attention.self.query.weight")


def _dp_round(loaded: LoadedModel, grad_mode: GradSampleMode) -> None:
    """One DP-SGD round of ``train_site`` on 24 toy reviews."""
    texts = tuple(f"review {i} was {'great' if i % 2 else 'awful'}" for i in range(24))
    dataset = tokenize(
        LabeledTexts(texts=texts, labels=tuple(i % 2 for i in range(24))),
        loaded.tokenizer,
        max_length=16,
    )
    train_site(
        model=loaded.model,
        dataset=dataset,
        train_cfg=TrainConfig(batch_size=8, lr=0.05, head_lr=0.05),
        dp_cfg=DPConfig(noise_multiplier=1.0, max_grad_norm=1.0),
        mode=grad_mode,
        noise_multiplier=1.0,
        seed=5,
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize(
    ("mode", "grad_mode"),
    [
        (FinetuneMode.LORA, GradSampleMode.HOOKS),
        (FinetuneMode.FULL, GradSampleMode.BOOKKEEPING),
    ],
)
def test_each_load_is_a_private_copy_the_last_site_cannot_reach(
    tiny_model_dir: Path, mode: FinetuneMode, grad_mode: GradSampleMode
) -> None:
    """The process cache behind load_model: a copy that one site trained with
    DP-SGD (hooks, .grad, optimizer steps), moved to another dtype and edited in
    place leaves the next load equal to a model built from disk, and shares no
    trainable tensor with it."""
    cfg = ModelConfig(source=str(tiny_model_dir), finetune=mode, lora_r=4)
    first = load_model(cfg)
    before = trainable_state(first.model)
    _dp_round(first, grad_mode)
    after = trainable_state(first.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    with torch.no_grad():
        for p in first.model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    first.model.to(torch.float64)  # replaces its parameters' data

    second = load_model(cfg)
    fresh = build_model(cfg)
    got, want = second.model.state_dict(), fresh.model.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert all(v.dtype == want[k].dtype for k, v in got.items())
    mine = {p.data_ptr() for p in first.model.parameters() if p.requires_grad}
    assert not mine & {p.data_ptr() for p in second.model.parameters()}
    assert all(p.grad is None for p in second.model.parameters())


def test_a_model_folder_rewritten_in_place_is_built_again(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoModel

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    cfg = ModelConfig(source=str(folder))
    old = load_model(cfg).model.state_dict()
    base = AutoModel.from_pretrained(folder)
    with torch.no_grad():
        base.embeddings.word_embeddings.weight.add_(1.0)
    base.save_pretrained(folder)
    new = load_model(cfg).model.state_dict()
    key = next(k for k in new if k.endswith("word_embeddings.weight"))
    assert torch.allclose(new[key], old[key] + 1.0)


@pytest.mark.parametrize(
    "grad_mode", [GradSampleMode.BOOKKEEPING, GradSampleMode.HOOKS]
)
def test_head_mode_trains_the_head_alone_under_dp(
    tiny_model_dir: Path, grad_mode: GradSampleMode
) -> None:
    """``model.finetune = "head"``: only the classifier is trainable (and sent);
    a DP-SGD round moves it and leaves every encoder weight as it was."""
    cfg = ModelConfig(source=str(tiny_model_dir), finetune=FinetuneMode.HEAD)
    loaded = load_model(cfg)
    names = list(trainable_state(loaded.model))
    assert names == ["classifier.weight", "classifier.bias"]
    frozen = {
        n: p.detach().clone()
        for n, p in loaded.model.named_parameters()
        if not p.requires_grad
    }
    before = trainable_state(loaded.model)
    _dp_round(loaded, grad_mode)
    after = trainable_state(loaded.model)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    now = dict(loaded.model.named_parameters())
    assert all(torch.equal(now[n].detach(), p) for n, p in frozen.items())
    with pytest.raises(ConfigError, match="no head of its own"):
        ModelConfig(task=TaskKind.CAUSAL_LM, finetune=FinetuneMode.HEAD)
    from_run = ModelConfig.from_run_config({"model.finetune": "head"})  # the key
    assert from_run.finetune is FinetuneMode.HEAD
