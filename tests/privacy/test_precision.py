"""A bf16 forward (autocast, what a GPU site runs) leaves DP in float32: the
recorded activations and output gradients book-keeping clips from, the clipped
sum, and the per-record norms agree with a float32 forward to bf16's precision;
a norm is never computed in bf16. The CPU path is unchanged (no autocast)."""

from __future__ import annotations

import contextlib
import warnings

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from fedshield.common.device import forward_precision
from fedshield.privacy.bookkeeping import make_private_bookkeeping


def _private(model: torch.nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
    data = TensorDataset(torch.zeros(8, 1))
    return make_private_bookkeeping(
        engine=engine,
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=4),
        noise_multiplier=0.0,
        max_grad_norm=0.5,
    )


def _norms_and_grads(autocast: bool) -> tuple[torch.Tensor, list[torch.Tensor], list]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 3)
    )
    private = _private(model)
    x, y = torch.randn(4, 5, 16), torch.randint(0, 3, (4,))
    context = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if autocast
        else contextlib.nullcontext()
    )
    recorded: list[tuple[torch.dtype, torch.dtype]] = []

    class Spy(list):  # what the backward hooks record, as they record it
        def append(self, item) -> None:
            recorded.append((item[0].dtype, item[1].dtype))
            super().append(item)

    for site in private._clipper._sites:
        site.records = Spy(site.records)
    with context:
        logits = private.module(x).mean(dim=1)
    if autocast:
        assert logits.dtype == torch.bfloat16  # the forward really ran in bf16
    per_sample = torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")
    private.backward(per_sample)
    grads = [p.grad.clone() for p in model.parameters()]
    return private.last_per_sample_norms, grads, recorded


def test_a_bf16_forward_is_clipped_in_float32() -> None:
    norms32, grads32, _ = _norms_and_grads(autocast=False)
    norms16, grads16, recorded = _norms_and_grads(autocast=True)
    assert recorded and all(
        a == torch.float32 and g == torch.float32 for a, g in recorded
    )
    assert all(g.dtype == torch.float32 for g in grads16)
    torch.testing.assert_close(norms16, norms32, rtol=3e-2, atol=0)
    for g16, g32 in zip(grads16, grads32, strict=True):
        torch.testing.assert_close(g16, g32, rtol=5e-2, atol=5e-3)


def test_the_cpu_forward_is_not_autocast() -> None:
    context = forward_precision(torch.device("cpu"))
    assert isinstance(context, contextlib.nullcontext)


def test_a_cuda_device_with_bf16_gets_bf16_autocast(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    context = forward_precision(torch.device("cuda"))
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
