"""The causal-LM task on tiny random Llama and GPT-2 models: records (end token,
truncation, padding), the per-record loss, perplexity, generation, LoRA targets
per architecture, tied embeddings and the loading errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedshield.models import (
    FinetuneMode,
    ModelConfig,
    ModelLoadError,
    TaskKind,
    load_model,
    trainable_state,
    write_tiny_causal_lm,
)
from fedshield.models.lm import (
    IGNORE_INDEX,
    causal_lm_per_sample_loss,
    evaluate_lm,
    generate_samples,
    tokenize_records,
)
from fedshield.models.loading import forward_inputs

CPU = torch.device("cpu")
TEXTS = (
    "the film was great and the acting was awful .",
    "a slow , quiet , lovely movie",
    "",
    "my account number is 0-1-2-3",
)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_lm(request, tmp_path_factory) -> Path:
    return write_tiny_causal_lm(
        tmp_path_factory.mktemp("lm") / request.param, arch=request.param
    )


def _cfg(path: Path, **kw) -> ModelConfig:
    return ModelConfig(source=str(path), task=TaskKind.CAUSAL_LM, **kw)


def test_records_get_an_end_token_and_are_truncated_never_chunked(tiny_lm) -> None:
    tok = load_model(_cfg(tiny_lm)).tokenizer
    full = tokenize_records(TEXTS, tok, max_length=512)
    assert len(full) == len(TEXTS)  # one example per record, whatever its length
    assert all(row[-1] == tok.eos_token_id for row in full.ids)
    assert full.ids[2] == [tok.eos_token_id]  # an empty record: the end token only
    cut = tokenize_records(TEXTS, tok, max_length=5)
    assert len(cut) == len(TEXTS) and max(len(r) for r in cut.ids) == 5
    assert cut.ids[0] == full.ids[0][:5]
    assert cut.truncated == sum(len(r) > 5 for r in full.ids) > 0
    assert full.truncated == 0


def test_collate_right_pads_and_masks_padding_out_of_the_labels(tiny_lm) -> None:
    tok = load_model(_cfg(tiny_lm)).tokenizer
    data = tokenize_records(TEXTS, tok, max_length=64)
    ids, mask, labels = data.collate([data[i] for i in range(len(data))])
    for r, row in enumerate(data.ids):
        n = len(row)
        assert ids[r, :n].tolist() == row and mask[r, :n].all()
        assert not mask[r, n:].any() and (labels[r, n:] == IGNORE_INDEX).all()
        assert labels[r, :n].tolist() == row  # the end token is a target too


def test_per_record_loss_is_the_mean_over_its_tokens_as_a_loop_computes(
    tiny_lm,
) -> None:
    loaded = load_model(_cfg(tiny_lm))
    data = tokenize_records(TEXTS, loaded.tokenizer, max_length=64)
    ids, mask, labels = data.collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        logits = loaded.model(
            **forward_inputs({"input_ids": ids, "attention_mask": mask})
        ).logits
        batched = causal_lm_per_sample_loss(logits, labels)
        for r, row in enumerate(data.ids):
            one = torch.tensor([row])
            alone = loaded.model(
                **forward_inputs(
                    {"input_ids": one, "attention_mask": torch.ones_like(one)}
                )
            ).logits[0]
            if len(row) < 2:
                assert batched[r] == 0  # no target token: no loss, no gradient
                continue
            expected = F.cross_entropy(alone[:-1], one[0, 1:])
            assert batched[r] == pytest.approx(float(expected), rel=1e-4)


def test_perplexity_is_exp_of_the_mean_token_loss(tiny_lm) -> None:
    loaded = load_model(_cfg(tiny_lm))
    data = tokenize_records(TEXTS, loaded.tokenizer, max_length=64)
    result = evaluate_lm(loaded.model, data, batch_size=3, device=CPU)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in data.ids:
            one = torch.tensor([row])
            logits = loaded.model(
                **forward_inputs(
                    {"input_ids": one, "attention_mask": torch.ones_like(one)}
                )
            ).logits[0]
            if len(row) > 1:
                total += float(
                    F.cross_entropy(logits[:-1], one[0, 1:], reduction="sum")
                )
                tokens += len(row) - 1
    assert result.tokens == tokens
    assert result.loss == pytest.approx(total / tokens, rel=1e-4)
    assert result.perplexity == pytest.approx(math.exp(total / tokens), rel=1e-4)
    assert 0.0 <= result.accuracy <= 1.0 and result.num_examples == len(TEXTS)


def test_generation_is_greedy_and_deterministic(tiny_lm) -> None:
    loaded = load_model(_cfg(tiny_lm))
    once = generate_samples(
        loaded.model,
        loaded.tokenizer,
        ["the film", "my account"],
        max_new_tokens=4,
        device=CPU,
    )
    again = generate_samples(
        loaded.model,
        loaded.tokenizer,
        ["the film", "my account"],
        max_new_tokens=4,
        device=CPU,
    )
    assert once == again and len(once) == 2 and all(isinstance(t, str) for t in once)


@pytest.mark.parametrize(
    ("arch", "targets"), [("llama", {"q_proj", "v_proj"}), ("gpt2", {"c_attn"})]
)
def test_attention_targets_resolve_per_architecture(tmp_path, arch, targets) -> None:
    path = write_tiny_causal_lm(tmp_path / arch, arch=arch)
    names = list(trainable_state(load_model(_cfg(path, lora_r=2)).model))
    wrapped = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert names and all("lora_" in n for n in names)  # adapters only, head frozen
    assert wrapped == targets


def test_all_linear_wraps_more_than_attention(tmp_path) -> None:
    path = write_tiny_causal_lm(tmp_path / "llama")
    attention = trainable_state(load_model(_cfg(path, lora_r=2)).model)
    every = trainable_state(
        load_model(_cfg(path, lora_r=2, lora_targets=("all-linear",))).model
    )
    assert set(attention) < set(every)
    assert not any("lm_head" in n for n in every)  # peft keeps the output head out


def test_attention_cannot_be_mixed_with_module_names(tmp_path) -> None:
    from fedshield.common.config import ConfigError

    with pytest.raises(ConfigError, match="stands alone"):
        _cfg(tmp_path, lora_targets=("attention", "q_proj"))


def test_full_finetuning_freezes_a_tied_embedding_and_trains_an_untied_one(
    tmp_path,
) -> None:
    tied = load_model(
        _cfg(write_tiny_causal_lm(tmp_path / "tied"), finetune=FinetuneMode.FULL)
    ).model
    emb = tied.get_input_embeddings().weight
    assert emb is tied.get_output_embeddings().weight and not emb.requires_grad
    trainable = [p for p in tied.parameters() if p.requires_grad]
    assert trainable and all(p is not emb for p in trainable)
    untied = load_model(
        _cfg(
            write_tiny_causal_lm(tmp_path / "untied", tie_embeddings=False),
            finetune=FinetuneMode.FULL,
        )
    ).model
    assert untied.get_input_embeddings().weight.requires_grad
    assert untied.get_output_embeddings().weight.requires_grad


def test_hub_id_offline_names_the_packaged_causal_lm(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="SmolLM2-135M-Instruct"):
        load_model(
            ModelConfig(source="some-org/not-a-cached-lm", task=TaskKind.CAUSAL_LM)
        )


def test_records_without_a_target_token_cannot_be_evaluated(tiny_lm) -> None:
    loaded = load_model(_cfg(tiny_lm))
    data = tokenize_records(("", ""), loaded.tokenizer, max_length=8)
    with pytest.raises(ValueError, match="without a target token"):
        evaluate_lm(loaded.model, data, batch_size=2, device=CPU)
