"""Book-keeping clipping equals per-sample DP-SGD clipping, wired like Opacus.

Reference: loop over the samples one at a time, take each gradient G_i of loss_i,
scale it by c_i = min(1, C / (||G_i|| + 1e-6)) and sum. Models are tiny randomly
initialised BERTs in float64 so the comparison is tight (~1e-10); padding and
samples below the clipping bound (c_i = 1) are included on purpose.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus import PrivacyEngine
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertConfig, BertForSequenceClassification

from fedshield.privacy.bookkeeping import (
    BookkeepingPrivate,
    UnsupportedTrainableModuleError,
    make_private_bookkeeping,
)

VOCAB, PAD = 100, 0
REL_TOL = 1e-5


def _tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=PAD,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config.num_labels = 2
    return BertForSequenceClassification(config).double()


def _tiny_lora(seed: int = 0) -> nn.Module:
    config = LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]
    )
    model = get_peft_model(_tiny_bert(seed), config)
    torch.manual_seed(seed + 1)  # lora_B starts at 0: randomise it for a real test
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.5)
    return model


def _tiny_ffa_lora(seed: int = 0) -> nn.Module:
    """FFA-LoRA (``model.lora.freeze-a``): A frozen, B and the head train."""
    model = _tiny_lora(seed)
    for name, p in model.named_parameters():
        if "lora_A" in name:
            p.requires_grad_(False)
    return model


def _batch(b: int, t: int, seed: int = 1) -> tuple[dict[str, Tensor], Tensor]:
    """Random ids with right padding on every other sample; (B, T) contiguous ids."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (b, t), generator=gen)
    mask = torch.ones(b, t, dtype=torch.long)
    for i in range(0, b, 2):
        keep = max(1, t - 1 - i % t)
        ids[i, keep:], mask[i, keep:] = PAD, 0
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": torch.arange(t).expand(b, t).contiguous(),
        "token_type_ids": torch.zeros(b, t, dtype=torch.long),
    }
    return inputs, torch.randint(0, 2, (b,), generator=gen)


def _rows(inputs: dict[str, Tensor], i: int) -> dict[str, Tensor]:
    return {k: v[i : i + 1].contiguous() for k, v in inputs.items()}


def _norm(grads: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
    return torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()


def _grad(p: Tensor) -> Tensor:
    assert p.grad is not None, "expected a gradient"
    return p.grad


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _reference(
    model: nn.Module, inputs: dict[str, Tensor], labels: Tensor, clip: float
) -> tuple[list[Tensor], Tensor]:
    """Per-sample loop: (sum_i c_i G_i per parameter, ||G_i|| per sample)."""
    params = [p for _, p in _trainable(model)]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(labels.shape[0]):
        logits = model(**_rows(inputs, i)).logits
        grads = torch.autograd.grad(F.cross_entropy(logits, labels[i : i + 1]), params)
        norm = _norm(grads)
        factor = min(1.0, clip / (norm.item() + 1e-6))
        for acc, g in zip(total, grads, strict=True):
            acc += factor * g
        norms.append(norm)
    return total, torch.stack(norms)


def _private(
    model: nn.Module,
    *,
    clip: float,
    noise: float = 0.0,
    n: int = 16,
    batch_size: int = 4,
    engine: PrivacyEngine | None = None,
) -> BookkeepingPrivate:
    dataset = TensorDataset(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long))
    optimizer = torch.optim.SGD([p for _, p in _trainable(model)], lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' secure-RNG advice
        engine = engine or PrivacyEngine(accountant="rdp")
    return make_private_bookkeeping(
        engine=engine,
        module=model,
        optimizer=optimizer,
        data_loader=DataLoader(dataset, batch_size=batch_size),
        noise_multiplier=noise,
        max_grad_norm=clip,
    )


def _bk_backward(
    private: BookkeepingPrivate, inputs: dict[str, Tensor], labels: Tensor
) -> list[Tensor]:
    private.optimizer.zero_grad(set_to_none=True)
    logits = private.module(**inputs).logits
    private.backward(F.cross_entropy(logits, labels, reduction="none"))
    return [_grad(p).clone() for _, p in _trainable(private.module)]


def _assert_close(got: list[Tensor], want: list[Tensor]) -> None:
    """Relative to the whole clipped gradient (some entries are exactly 0)."""
    scale = math.sqrt(sum(w.pow(2).sum().item() for w in want))
    for g, w in zip(got, want, strict=True):
        assert (g - w).norm().item() <= REL_TOL * scale


def _median_clip(model: nn.Module, inputs: dict[str, Tensor], labels: Tensor) -> float:
    """A bound with samples on both sides of it: some clipped, some factor 1."""
    _, norms = _reference(model, inputs, labels, clip=1e9)
    return norms.median().item()


@pytest.mark.parametrize("make_model", [_tiny_bert, _tiny_lora], ids=["full", "lora"])
def test_clipped_sum_matches_per_sample_loop(make_model) -> None:
    model = make_model()
    inputs, labels = _batch(6, 12)
    clip = _median_clip(model, inputs, labels)
    want, norms = _reference(model, inputs, labels, clip)
    assert (norms < clip).any() and (norms > clip).any()
    got = _bk_backward(_private(model, clip=clip), inputs, labels)
    _assert_close(got, want)


def test_clipped_sum_matches_opacus_ghost_clipping() -> None:
    """Same p.grad as Opacus' two-backward ghost mode (before noise and / E)."""
    model = _tiny_bert()
    twin = copy.deepcopy(model)
    inputs, labels = _batch(6, 10, seed=5)
    clip = _median_clip(model, inputs, labels)
    got = _bk_backward(_private(model, clip=clip), inputs, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, opt, criterion, _ = PrivacyEngine().make_private(
            module=twin,
            optimizer=torch.optim.SGD(twin.parameters(), lr=1.0),
            criterion=nn.CrossEntropyLoss(),
            data_loader=DataLoader(TensorDataset(torch.zeros(16, 1)), batch_size=4),
            noise_multiplier=0.0,
            max_grad_norm=clip,
            grad_sample_mode="ghost",
            poisson_sampling=False,
        )
        opt.zero_grad()
        criterion(module(**inputs).logits, labels).backward()
    _assert_close(got, [_grad(p) for _, p in _trainable(twin)])


def test_lora_trains_only_adapters_and_head() -> None:
    names = [n for n, _ in _trainable(_tiny_lora())]
    assert names and all("lora_" in n or "classifier" in n for n in names)
    assert any("modules_to_save" in n for n in names)


@pytest.mark.parametrize(
    "make_model", [_tiny_bert, _tiny_lora, _tiny_ffa_lora], ids=["full", "lora", "ffa"]
)
def test_per_sample_norms_match_reference(make_model) -> None:
    model = make_model()
    inputs, labels = _batch(5, 9, seed=3)
    _, want = _reference(model, inputs, labels, clip=1.0)
    private = _private(model, clip=1.0)
    _bk_backward(private, inputs, labels)
    assert private.last_per_sample_norms is not None
    torch.testing.assert_close(
        private.last_per_sample_norms, want, rtol=REL_TOL, atol=0
    )


def test_step_applies_the_clipped_sum_divided_by_expected_batch_size() -> None:
    """sigma = 0 isolates the division (the noise is measured in test_dp_noise)."""
    model = _tiny_bert()
    inputs, labels = _batch(4, 8)
    want, _ = _reference(model, inputs, labels, clip=0.5)
    before = [p.detach().clone() for _, p in _trainable(model)]
    private = _private(model, clip=0.5, n=16, batch_size=4)  # E = 4
    assert private.optimizer.expected_batch_size == 4
    _bk_backward(private, inputs, labels)
    private.optimizer.step()  # SGD lr=1, sigma=0: theta -= clipped sum / E
    after = [p.detach() for _, p in _trainable(model)]
    _assert_close([(b - a) * 4 for b, a in zip(before, after, strict=True)], want)


def test_module_is_unwrapped_and_remove_restores_plain_training() -> None:
    model = _tiny_bert()
    keys = list(model.state_dict())
    private = _private(model, clip=1.0)
    assert private.module is model and list(private.module.state_dict()) == keys
    inputs, labels = _batch(2, 5)
    with pytest.raises(RuntimeError, match="BookkeepingPrivate.backward"):
        F.cross_entropy(model(**inputs).logits, labels).backward()
    private.remove()
    model.zero_grad()
    F.cross_entropy(model(**inputs).logits, labels).backward()
    assert all(p.grad is not None for _, p in _trainable(model))


def test_broadcast_position_ids_raise_a_clear_error() -> None:
    model = _tiny_bert()
    inputs, labels = _batch(3, 5)
    del inputs["position_ids"]  # HF then embeds a (1, T) buffer for the whole batch
    private = _private(model, clip=1.0)
    with pytest.raises(ValueError, match="position_ids"):
        private.backward(
            F.cross_entropy(model(**inputs).logits, labels, reduction="none")
        )


def test_accountant_history_matches_opacus() -> None:
    sigma, steps = 1.3, 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = PrivacyEngine(accountant="rdp"), PrivacyEngine(accountant="rdp")
    private = _private(_tiny_bert(), clip=1.0, noise=sigma, n=20, engine=ours)
    reference = _tiny_bert()
    dataset = TensorDataset(torch.zeros(20, 1), torch.zeros(20, dtype=torch.long))
    _, opt, _, loader = theirs.make_private(
        module=reference,
        optimizer=torch.optim.SGD(reference.parameters(), lr=1.0),
        criterion=nn.CrossEntropyLoss(),
        data_loader=DataLoader(dataset, batch_size=4),
        noise_multiplier=sigma,
        max_grad_norm=1.0,
        grad_sample_mode="ghost",
    )
    assert type(private.optimizer) is type(opt)
    assert private.optimizer.expected_batch_size == opt.expected_batch_size
    assert len(private.data_loader) == len(loader)
    inputs, labels = _batch(3, 6)
    for _ in range(steps):
        _bk_backward(private, inputs, labels)
        private.optimizer.step()
        opt.step_hook(opt)  # exactly what Opacus' optimizer.step() records
    assert ours.accountant.history == theirs.accountant.history
    assert ours.accountant.history == [(sigma, 4 / 20, steps)]
    assert ours.get_epsilon(1e-5) == theirs.get_epsilon(1e-5)


class _WithConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.conv = nn.Conv1d(4, 4, 1)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (_WithConv(), ["`conv`", "Conv1d"]),
        (nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 1)), ["`1`"]),
        (nn.Sequential(nn.Embedding(5, 4, max_norm=1.0)), ["max_norm"]),
    ],
)
def test_unsupported_trainable_module_raises_naming_it(module, names) -> None:
    with pytest.raises(UnsupportedTrainableModuleError) as err:
        _private(module, clip=1.0)
    for name in [*names, "nn.Linear", "nn.Embedding", "nn.LayerNorm", "hooks"]:
        assert name in str(err.value)


class _ConvThenLinear(_WithConv):
    def forward(self, x: Tensor) -> Tensor:  # (B, 4, 1) -> (B, 4)
        return self.fc(self.conv(x).squeeze(-1))


def test_frozen_unsupported_module_is_accepted_and_the_rest_is_clipped() -> None:
    """A frozen Conv1d needs no per-sample gradient: wrapping succeeds, the conv
    gets no gradient, and the trainable Linear gets the per-sample clipped sum."""
    torch.manual_seed(1)  # fixed weights, whatever ran before: each norm > 4 > clip
    module = _ConvThenLinear().double()
    module.conv.requires_grad_(False)
    gen = torch.Generator().manual_seed(4)
    x = 10 * torch.randn(6, 4, 1, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (6,), generator=gen)
    clip = 0.3
    params = [module.fc.weight, module.fc.bias]
    want = [torch.zeros_like(p) for p in params]
    for i in range(6):  # the per-sample loop, before any hook is attached
        grads = torch.autograd.grad(
            F.cross_entropy(module(x[i : i + 1]), y[i : i + 1]), params
        )
        factor = min(1.0, clip / (_norm(grads).item() + 1e-6))
        assert factor < 1.0  # every sample is clipped: the bound is doing the work
        for acc, g in zip(want, grads, strict=True):
            acc += factor * g
    private = _private(module, clip=clip)
    private.optimizer.zero_grad(set_to_none=True)
    private.backward(F.cross_entropy(module(x), y, reduction="none"))
    _assert_close([_grad(p) for p in params], want)
    assert module.conv.weight.grad is None
    private.remove()


@pytest.mark.parametrize(
    ("noise", "clip", "name"),
    [(-1.0, 1.0, "noise_multiplier"), (math.nan, 1.0, "noise_multiplier")]
    + [(1.0, 0.0, "max_grad_norm"), (1.0, -2.0, "max_grad_norm")],
)
def test_invalid_privacy_parameters_raise(noise: float, clip: float, name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        _private(_tiny_bert(), clip=clip, noise=noise)


def test_wrapping_twice_without_remove_raises() -> None:
    model = _tiny_bert()
    first = _private(model, clip=1.0)
    with pytest.raises(RuntimeError, match="remove"):
        _private(model, clip=1.0)
    first.remove()
    _private(model, clip=1.0).remove()


def test_empty_poisson_batch_is_a_noise_only_step() -> None:
    model = _tiny_bert()
    private = _private(model, clip=1.0, noise=1.0)
    private.optimizer.zero_grad(set_to_none=True)
    private.backward(torch.zeros(0))  # HF BERT cannot forward B = 0
    assert all(_grad(p).abs().sum() == 0 for _, p in _trainable(model))
    before = [p.detach().clone() for _, p in _trainable(model)]
    private.optimizer.step()
    assert all(
        (p != b).any() for (_, p), b in zip(_trainable(model), before, strict=True)
    )


class _Small(nn.Module):
    """Embedding -> LayerNorm -> Linear twice (shared) -> Linear -> mean -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 6, padding_idx=0)
        self.norm = nn.LayerNorm(6)
        self.mix = nn.Linear(6, 6)
        self.hidden = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.norm(self.emb(ids))  # (B, T, 6)
        x = self.mix(torch.tanh(self.mix(x)))  # one module, two calls
        hidden = torch.tanh(self.hidden(x))  # (B, T, 5)
        return self.head(hidden.mean(dim=1))  # (B, 3)


@pytest.mark.parametrize("t", [2, 5], ids=["ghost-norms", "instantiated"])
@pytest.mark.parametrize("frozen", [(), ("mix.weight", "norm.bias", "head.bias")])
def test_small_model_matches_per_sample_loop(t: int, frozen: tuple[str, ...]) -> None:
    """Both norm paths, a module called twice, padding_idx, bias-only layers."""
    torch.manual_seed(t)
    model = _Small().double()
    for name in frozen:
        model.get_parameter(name).requires_grad_(False)
    ids = torch.randint(0, 7, (5, t))
    ids[0, 1:] = 0  # padding row of the embedding gets no gradient
    labels = torch.randint(0, 3, (5,))
    params = [p for _, p in _trainable(model)]

    def grads_of(i: int) -> tuple[Tensor, ...]:
        loss = F.cross_entropy(model(ids[i : i + 1]), labels[i : i + 1])
        return torch.autograd.grad(loss, params)

    norms = torch.stack([_norm(grads_of(i)) for i in range(5)])
    clip = norms.median().item()
    want = [torch.zeros_like(p) for p in params]
    for i in range(5):
        factor = min(1.0, clip / (norms[i].item() + 1e-6))
        for acc, g in zip(want, grads_of(i), strict=True):
            acc += factor * g
    private = _private(model, clip=clip)
    private.backward(F.cross_entropy(model(ids), labels, reduction="none"))
    torch.testing.assert_close(
        private.last_per_sample_norms, norms, rtol=REL_TOL, atol=0
    )
    _assert_close([_grad(p) for p in params], want)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    b=st.integers(1, 5),
    t=st.integers(1, 6),
    log_clip=st.floats(-3.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_each_clipped_contribution_is_at_most_c(
    b: int, t: int, log_clip: float, seed: int
) -> None:
    """BK(batch) = sum_i BK({i}) and ||BK({i})|| <= C: no sample exceeds C."""
    torch.manual_seed(seed)
    model = _Small().double()
    clip = 10.0**log_clip
    ids = torch.randint(0, 7, (b, t))
    labels = torch.randint(0, 3, (b,))
    private = _private(model, clip=clip)

    def clipped_sum(rows: slice) -> list[Tensor]:
        private.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(ids[rows]), labels[rows], reduction="none")
        private.backward(loss)
        return [_grad(p).clone() for p in model.parameters()]

    singles = [clipped_sum(slice(i, i + 1)) for i in range(b)]
    for grads in singles:
        assert math.sqrt(sum(g.pow(2).sum().item() for g in grads)) <= clip * (1 + 1e-9)
    summed = [torch.stack(parts).sum(0) for parts in zip(*singles, strict=True)]
    _assert_close(clipped_sum(slice(None)), summed)
    norms = private.last_per_sample_norms
    assert norms is not None
    total = math.sqrt(sum(g.pow(2).sum().item() for g in summed))
    assert total <= norms.clamp(max=clip).sum().item() * (1 + 1e-9) + 1e-12
