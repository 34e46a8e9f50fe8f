"""Book-keeping clipping on causal language models equals per-record DP-SGD clipping.

Reference: each record forwarded ALONE (its padding cut off), its loss (the mean
token cross-entropy over its non-padding targets) backpropagated, G_i the gradient
over all trainable parameters, c_i = min(1, C / (||G_i|| + 1e-6)). Book-keeping gets
one right-padded batch of records of different lengths and must reproduce ||G_i||
and sum_i c_i G_i. Tiny random Llama / Qwen2 (RMSNorm) and GPT-2 (transformers'
Conv1D) in float64, with LoRA and with full fine-tuning (tied embedding frozen).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.pytorch_utils import Conv1D

from fedshield.privacy.bookkeeping import UnsupportedTrainableModuleError

from .test_bookkeeping import REL_TOL, _assert_close, _grad, _norm, _private, _trainable

VOCAB, PAD, IGNORE = 128, 0, -100
LENGTHS = (10, 7, 4, 9, 2)  # right padding to T = 10, every record a different length


def _decoder(config_cls: type, model_cls: type, *, tie: bool, **extra) -> nn.Module:
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        pad_token_id=PAD,
        **extra,
    )
    return model_cls(config).double().train()


def _llama(*, tie: bool = True) -> nn.Module:
    return _decoder(LlamaConfig, LlamaForCausalLM, tie=tie)


def _qwen2() -> nn.Module:
    """Untied: embedding and lm_head both trainable; q/k/v Linears with biases."""
    return _decoder(Qwen2Config, Qwen2ForCausalLM, tie=False)


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).double().train()


def _lora(model: nn.Module, targets: list[str]) -> nn.Module:
    config = LoraConfig(
        task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=targets
    )
    model = get_peft_model(model, config)
    torch.manual_seed(1)  # lora_B starts at 0: randomise it for a real test
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.5)
    return model


def _frozen_tied(model: nn.Module) -> nn.Module:
    """Full fine-tuning with the input embedding (= the tied lm_head) frozen."""
    model.get_input_embeddings().weight.requires_grad_(False)
    return model


MODELS = {
    "llama-lora": lambda: _lora(_llama(), ["q_proj", "v_proj"]),
    "llama-full": lambda: _frozen_tied(_llama()),
    "qwen2-full-untied": _qwen2,
    "gpt2-lora": lambda: _lora(_gpt2(), ["c_attn"]),
    "gpt2-full": lambda: _frozen_tied(_gpt2()),
}


def _batch(seed: int = 3) -> tuple[dict[str, Tensor], Tensor]:
    """Right-padded ids of LENGTHS, labels -100 on padding, (B, T) position ids."""
    gen = torch.Generator().manual_seed(seed)
    b, t = len(LENGTHS), max(LENGTHS)
    mask = (torch.arange(t) < torch.tensor(LENGTHS)[:, None]).long()
    ids = torch.randint(1, VOCAB, (b, t), generator=gen).masked_fill(mask == 0, PAD)
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": torch.arange(t).expand(b, t).contiguous(),
    }
    return inputs, ids.masked_fill(mask == 0, IGNORE)


def _causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-record loss (B,): mean token CE over the record's non-padding targets."""
    targets = labels[:, 1:]  # (B, T-1): token t+1 is predicted at position t
    tokens = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
    )  # (B, T-1), 0 where ignored
    return tokens.sum(dim=1) / (targets != IGNORE).sum(dim=1).clamp(min=1)


def _per_record_grads(
    model: nn.Module, inputs: dict[str, Tensor], labels: Tensor
) -> list[tuple[Tensor, ...]]:
    """G_i of each record forwarded alone, its padding cut off."""
    params = [p for _, p in _trainable(model)]
    grads = []
    for i, length in enumerate(LENGTHS):
        alone = {k: v[i : i + 1, :length].contiguous() for k, v in inputs.items()}
        loss = _causal_lm_loss(model(**alone).logits, labels[i : i + 1, :length])
        grads.append(torch.autograd.grad(loss.sum(), params))
    return grads


@pytest.mark.parametrize("name", list(MODELS))
def test_causal_lm_norms_and_clipped_sum_match_per_record_loop(name: str) -> None:
    model = MODELS[name]()
    inputs, labels = _batch()
    grads = _per_record_grads(model, inputs, labels)
    norms = torch.stack([_norm(g) for g in grads])
    clip = norms.median().item()  # some records clipped, some with factor 1
    want = [torch.zeros_like(p) for _, p in _trainable(model)]
    for g_i, norm in zip(grads, norms, strict=True):
        factor = min(1.0, clip / (norm.item() + 1e-6))
        for acc, g in zip(want, g_i, strict=True):
            acc += factor * g

    private = _private(model, clip=clip)
    private.optimizer.zero_grad(set_to_none=True)
    private.backward(_causal_lm_loss(model(**inputs).logits, labels))
    assert private.last_per_sample_norms is not None
    torch.testing.assert_close(
        private.last_per_sample_norms, norms, rtol=REL_TOL, atol=0
    )
    _assert_close([_grad(p) for _, p in _trainable(model)], want)
    private.remove()


@pytest.mark.parametrize("name", ["llama-lora", "gpt2-lora"])
def test_lora_trains_only_the_adapters(name: str) -> None:
    names = [n for n, _ in _trainable(MODELS[name]())]
    assert names and all("lora_" in n for n in names)


@pytest.mark.parametrize(
    ("make_model", "tied"),
    [
        (_llama, ["`lm_head.weight` is `model.embed_tokens.weight`"]),
        (_gpt2, ["`lm_head.weight` is `transformer.wte.weight`"]),
    ],
    ids=["llama", "gpt2"],
)
def test_tied_trainable_embedding_is_refused_with_the_fix(make_model, tied) -> None:
    with pytest.raises(UnsupportedTrainableModuleError) as err:
        _private(make_model(), clip=1.0)
    for text in [*tied, "tied", "cross term", "requires_grad_(False)", "hooks"]:
        assert text in str(err.value)


def test_gemma_rms_norm_one_plus_weight_is_refused() -> None:
    """GemmaRMSNorm computes xhat * (1 + w): not a form book-keeping verified."""
    torch.manual_seed(0)
    config = GemmaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        pad_token_id=PAD,
    )
    model = _frozen_tied(GemmaForCausalLM(config).double())
    with pytest.raises(UnsupportedTrainableModuleError) as err:
        _private(model, clip=1.0)
    for text in ["`model.norm`", "GemmaRMSNorm", "1 + weight", "LlamaRMSNorm"]:
        assert text in str(err.value)


class _Impostor(nn.Module):
    """Claims LlamaRMSNorm's qualified name; its forward is one of several variants."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(8))
        self.variance_epsilon = 1e-6
        self.variant = variant

    def forward(self, x: Tensor) -> Tensor:
        eps = self.variance_epsilon
        ms = x.pow(2).mean(-1, keepdim=True)
        if self.variant == "llama":
            return self.weight * (x * torch.rsqrt(ms + eps))
        if self.variant == "one_plus_weight":
            return (1 + self.weight) * (x * torch.rsqrt(ms + eps))
        if self.variant == "eps_outside":
            return self.weight * (x * torch.rsqrt(ms) + eps)
        return self.weight * (x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps))


_Impostor.__module__ = "transformers.models.llama.modeling_llama"
_Impostor.__qualname__ = "LlamaRMSNorm"


@pytest.mark.parametrize("variant", ["one_plus_weight", "eps_outside", "sum_not_mean"])
def test_registry_name_with_another_formula_is_refused(variant: str) -> None:
    """The registry matches by name, then a probe checks the forward's formula."""
    _private(nn.Sequential(_Impostor("llama")), clip=1.0).remove()  # control
    with pytest.raises(UnsupportedTrainableModuleError, match="verified formula"):
        _private(nn.Sequential(_Impostor(variant)), clip=1.0)


class _Small(nn.Module):
    """Embedding -> nn.RMSNorm (called by keyword) -> Linear registered twice ->
    transformers' Conv1D -> mean -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(9, 6)
        self.norm = nn.RMSNorm(6)  # eps=None: torch's default for the dtype
        self.mix = nn.Linear(6, 6)
        self.again = self.mix  # one module under two names: one site
        self.conv = Conv1D(5, 6)  # y = x W + b, W of shape (6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.norm(x=self.emb(ids))  # (B, T, 6)
        x = self.again(torch.tanh(self.mix(x)))
        x = torch.tanh(self.conv(x))  # (B, T, 5)
        return self.head(x.mean(dim=1))  # (B, 3)


@pytest.mark.parametrize("t", [2, 5], ids=["ghost-norms", "instantiated"])
@pytest.mark.parametrize("frozen", [(), ("conv.bias", "mix.weight")])
def test_rms_norm_and_conv1d_match_per_sample_loop(
    t: int, frozen: tuple[str, ...]
) -> None:
    """Both norm paths of Conv1D (2 T^2 vs 6 * 5 features), frozen parts."""
    torch.manual_seed(t)
    model = _Small().double()
    for name in frozen:
        model.get_parameter(name).requires_grad_(False)
    ids = torch.randint(0, 9, (5, t))
    labels = torch.randint(0, 3, (5,))
    params = [p for _, p in _trainable(model)]
    grads = [
        torch.autograd.grad(
            F.cross_entropy(model(ids[i : i + 1]), labels[i : i + 1]), params
        )
        for i in range(5)
    ]
    norms = torch.stack([_norm(g) for g in grads])
    clip = norms.median().item()
    want = [
        sum(
            min(1.0, clip / (n.item() + 1e-6)) * g[k]
            for g, n in zip(grads, norms, strict=True)
        )
        for k in range(len(params))
    ]
    private = _private(model, clip=clip)
    private.backward(F.cross_entropy(model(ids), labels, reduction="none"))
    torch.testing.assert_close(
        private.last_per_sample_norms, norms, rtol=REL_TOL, atol=0
    )
    _assert_close([_grad(p) for p in params], want)


class _ReadsWeight(nn.Module):
    """Uses the embedding's weight outside the embedding (F.linear): untied by
    parameter ownership, but a second use book-keeping cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)

    def forward(self, ids: Tensor) -> Tensor:
        return F.linear(self.emb(ids).mean(dim=1), self.emb.weight)  # (B, 7)


def test_weight_used_outside_its_module_is_refused_and_no_gradient_is_kept() -> None:
    model = _ReadsWeight().double()
    ids = torch.randint(0, 7, (3, 4))
    private = _private(model, clip=1.0)
    loss = F.cross_entropy(model(ids), torch.tensor([1, 2, 3]), reduction="none")
    with pytest.raises(RuntimeError, match="used directly elsewhere"):
        private.backward(loss)
    assert model.emb.weight.grad is None  # no unclipped gradient left behind
