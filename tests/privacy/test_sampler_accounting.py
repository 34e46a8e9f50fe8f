"""The planned release is the one the real sampler and accountant produce.

A site refuses to send an update whose recorded release differs from the one its
budget was checked for. Opacus' Poisson loader samples at ``q = 1 / ceil(n / b)``
and takes ``int(1 / q)`` batches an epoch; in floating point ``1 / (1 / k)`` is just
below ``k`` for k = 93, 99, 105, ..., so a plan of ``ceil(n / b)`` steps an epoch
differed from what was recorded for 4,344 of the 80,000 (n, b) pairs below (5.3 % of
dataset sizes at batch 32, e.g. 2,976 records), and such a site never trained.
"""

from __future__ import annotations

import math

import pytest
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader, TensorDataset

from fedshield.client.trainer import _empty_step, _recorded_release
from fedshield.privacy.budget import Release, plan_release
from fedshield.privacy.dp import DPConfig, GradSampleMode, make_private

SIZES = range(1, 20_001)
BATCHES = (8, 16, 32, 64)
DP = DPConfig(noise_multiplier=1.0)


def _plan(dp: DPConfig, n: int, batch: int, epochs: int = 1) -> Release:
    return plan_release(
        dp,
        num_examples=n,
        batch_size=batch,
        local_epochs=epochs,
        planned_rounds=1,
        server_round=1,
        delta=0.5 / n,
        history=[],
    )


def test_plan_equals_the_poisson_samplers_rate_and_length_for_every_size() -> None:
    """Every n in 1..20,000 at batch 8, 16, 32, 64 (pure arithmetic, ~1 s): the
    plan's q is the rate ``DPDataLoader.from_data_loader`` samples at and its steps
    are ``len(UniformWithReplacementSampler)`` per epoch."""
    rounded_down = 0
    for batch in BATCHES:
        for n in SIZES:
            q = 1 / len(DataLoader(range(n), batch_size=batch))  # from_data_loader
            sampler_steps = len(
                UniformWithReplacementSampler(num_samples=n, sample_rate=q)
            )
            assert _plan(DP, n, batch, epochs=2) == Release(1.0, q, 2 * sampler_steps)
            rounded_down += sampler_steps != math.ceil(n / batch)
    assert rounded_down == 4344  # the pairs a ceil(n / b) plan got wrong


def test_plan_without_dp_equals_the_shuffled_loaders_length() -> None:
    for batch in BATCHES:
        for n in range(1, 2_001):
            loader = DataLoader(range(n), batch_size=batch, shuffle=True)
            planned = _plan(DPConfig(enabled=False), n, batch)
            assert planned == Release(0.0, 1 / len(loader), len(loader))


def test_the_dp_data_loader_samples_at_the_planned_rate() -> None:
    """The real loader (not just its sampler) for sizes where 1 / (1 / k) < k."""
    for n, batch in [(2976, 32), (93, 1), (1584, 16), (6720, 64), (1, 8)]:
        data = TensorDataset(torch.zeros(n, 1))
        loader = DPDataLoader.from_data_loader(DataLoader(data, batch_size=batch))
        planned = _plan(DP, n, batch)
        assert (loader.sample_rate, len(loader)) == (
            planned.sample_rate,
            planned.steps,
        )


@pytest.mark.parametrize("mode", list(GradSampleMode), ids=str)
def test_training_records_the_planned_release_where_the_sampler_rounds_down(
    mode: GradSampleMode,
) -> None:
    """2,976 records, batch 32: q = 1/93, 92 steps an epoch. The accountant of every
    mode must record (sigma, 1/93, 2 x 92), the plan: Opacus' make_private would
    record q = 1 / len(poisson_loader) = 1/92, and book-keeping mirrored it."""
    n, batch, epochs = 2976, 32, 2
    planned = _plan(DP, n, batch, epochs)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    data = TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,)))
    engine = PrivacyEngine(accountant="rdp")
    private = make_private(
        engine=engine,
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=batch),
        noise_multiplier=planned.noise_multiplier,
        max_grad_norm=1.0,
        mode=mode,
    )
    steps = 0
    for _ in range(epochs):  # the trainer's loop
        for x, y in private.data_loader:
            private.optimizer.zero_grad(set_to_none=True)
            if y.numel() == 0:
                _empty_step(private)
            else:
                private.backward(private.module(x), y)
                private.optimizer.step()
            steps += 1
    private.close()
    assert steps == planned.steps == 184
    assert _recorded_release(engine, private, steps) == planned


def test_a_site_round_of_744_records_at_batch_8_records_its_plan(
    tiny_model_dir,
) -> None:
    """``train_site`` itself (tiny BERT, LoRA, the default book-keeping mode; the
    Opacus modes are covered above) on 744 records at batch 8: q = 1/93, 92 steps.
    Before the fix the site refused every round on such data."""
    from fedshield.client.trainer import TrainConfig, train_site
    from fedshield.models import ModelConfig, load_model
    from fedshield.models.texts import LabeledTexts, tokenize

    n, batch = 744, 8
    loaded = load_model(ModelConfig(source=str(tiny_model_dir), lora_r=4))
    texts = tuple(f"note {i} {'ok' if i % 2 else 'bad'}" for i in range(n))
    labels = tuple(i % 2 for i in range(n))
    dataset = tokenize(LabeledTexts(texts, labels), loaded.tokenizer, max_length=8)
    planned = _plan(DP, n, batch)
    result = train_site(
        model=loaded.model,
        dataset=dataset,
        train_cfg=TrainConfig(batch_size=batch),
        dp_cfg=DP,
        mode=GradSampleMode.BOOKKEEPING,
        noise_multiplier=planned.noise_multiplier,
        seed=0,
        device=torch.device("cpu"),
    )
    assert result.release == planned == Release(1.0, 1 / 93, 92)
