import json
import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedshield.client.trainer import TrainConfig, train_site
from fedshield.common.config import ConfigError
from fedshield.models import FinetuneMode, ModelConfig, load_model
from fedshield.models.texts import LabeledTexts, tokenize
from fedshield.privacy.budget import (
    Release,
    accountant_of,
    compose_epsilon,
    plan_release,
)
from fedshield.privacy.dp import (
    AccountantKind,
    DPConfig,
    GradSampleMode,
    accountant_to_json,
    default_grad_sample_mode,
    noise_for_target_epsilon,
)

# Opacus 1.6 RDPAccountant, sigma=1.0, q=0.01, 1000 steps, delta=1e-5.
RDP_REFERENCE_EPSILON = 2.1013652716430564


def test_rdp_epsilon_matches_fixed_reference() -> None:
    eps = compose_epsilon(
        [Release(1.0, 0.01, 1000)], delta=1e-5, accountant=AccountantKind.RDP
    )
    assert eps == pytest.approx(RDP_REFERENCE_EPSILON, rel=1e-9)


def test_accountant_json_keeps_the_composed_history() -> None:
    acc = accountant_of(
        AccountantKind.RDP, [Release(0.8, 0.2, 10), Release(1.1, 0.05, 7)]
    )
    state = json.loads(accountant_to_json(acc))
    assert state == {"mechanism": "rdp", "history": [[0.8, 0.2, 10], [1.1, 0.05, 7]]}


def test_target_epsilon_noise_meets_the_target_over_the_planned_run() -> None:
    sigma = noise_for_target_epsilon(
        target_epsilon=4.0,
        delta=1e-5,
        sample_rate=0.05,
        steps=60,
        accountant=AccountantKind.RDP,
    )
    acc = RDPAccountant()
    acc.history = [(sigma, 0.05, 60)]
    eps = acc.get_epsilon(1e-5)
    assert eps <= 4.0
    assert eps > 3.9  # Opacus' search tolerance is 0.01


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_grad_norm": 0.0}, "max-grad-norm"),
        ({"delta": 1.0}, "dp.delta"),
        ({"noise_multiplier": -1.0}, "noise-multiplier"),
        ({"target_epsilon": -2.0}, "target-epsilon"),
    ],
)
def test_dp_config_rejects_bad_values(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        DPConfig(**kwargs)


def test_default_modes_follow_the_measurements() -> None:
    # benchmarks/results/dp_overhead.json: book-keeping fastest (or tied) for both
    assert default_grad_sample_mode(FinetuneMode.LORA) is GradSampleMode.BOOKKEEPING
    assert default_grad_sample_mode(FinetuneMode.FULL) is GradSampleMode.BOOKKEEPING


def _toy_private(model: torch.nn.Module, mode: GradSampleMode, n: int = 16):
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from fedshield.privacy.dp import make_private

    data = TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,)))
    engine = PrivacyEngine(accountant="rdp")
    private = make_private(
        engine=engine,
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        mode=mode,
    )
    return engine, private


def test_unsupported_layer_falls_back_to_opacus_ghost() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 2)
    )
    engine, private = _toy_private(model, GradSampleMode.BOOKKEEPING)
    assert private.mode is GradSampleMode.GHOST
    x, y = torch.randn(4, 4), torch.randint(0, 2, (4,))
    private.optimizer.zero_grad()
    private.backward(private.module(x), y)
    private.optimizer.step()
    assert len(engine.accountant.history) == 1


@pytest.mark.parametrize("mode", list(GradSampleMode), ids=str)
def test_empty_poisson_batch_is_a_noise_only_step_that_is_accounted(
    mode: GradSampleMode,
) -> None:
    """In every mode, the Opacus ones included (the ghost fallback used to account
    the step and apply nothing)."""
    from fedshield.client.trainer import _empty_step

    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    engine, private = _toy_private(model, mode)
    before = model[0].weight.detach().clone()
    private.optimizer.zero_grad()
    _empty_step(private)
    assert engine.accountant.history == [(1.0, 0.25, 1)]
    assert not torch.equal(model[0].weight, before)  # noise was applied
    private.close()


def _tiny_dataset(model_dir, n: int = 40):
    loaded = load_model(ModelConfig(source=str(model_dir), lora_r=4))
    texts = tuple(
        f"review number {i} was {'great' if i % 2 else 'awful'}" for i in range(n)
    )
    data = LabeledTexts(texts=texts, labels=tuple(i % 2 for i in range(n)))
    return loaded, tokenize(data, loaded.tokenizer, max_length=16)


def test_training_records_exactly_the_planned_release(tiny_model_dir) -> None:
    """The accountant of a real DP-SGD round records the (sigma, q, steps) that
    plan_release fixed before training, so the budget check holds for it."""
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    train = TrainConfig(local_epochs=2, batch_size=8, lr=1e-3)
    loaded, dataset = _tiny_dataset(tiny_model_dir)
    planned = plan_release(
        dp,
        num_examples=len(dataset),
        batch_size=8,
        local_epochs=2,
        planned_rounds=1,
        server_round=1,
        delta=dp.delta,
        history=[],
    )
    result = train_site(
        model=loaded.model,
        dataset=dataset,
        train_cfg=train,
        dp_cfg=dp,
        mode=GradSampleMode.BOOKKEEPING,
        noise_multiplier=planned.noise_multiplier,
        seed=1,
        device=torch.device("cpu"),
    )
    assert result.release == planned == Release(1.0, 8 / 40, 10)
    assert math.isfinite(result.mean_loss)


def test_non_private_training_records_a_non_private_release(tiny_model_dir) -> None:
    loaded, dataset = _tiny_dataset(tiny_model_dir)
    result = train_site(
        model=loaded.model,
        dataset=dataset,
        train_cfg=TrainConfig(batch_size=8),
        dp_cfg=DPConfig(enabled=False),
        mode=GradSampleMode.HOOKS,
        noise_multiplier=0.0,
        seed=0,
        device=torch.device("cpu"),
    )
    assert result.release == Release(0.0, 1 / 5, 5) and not result.release.private
    assert result.steps == 5 and math.isfinite(result.mean_loss)


def test_a_tied_trainable_weight_falls_back_to_opacus_hooks_not_ghost() -> None:
    """Book-keeping refuses a weight two layers share; Opacus ghost would fail at
    the first forward, its hooks mode clips the shared weight exactly."""
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, trainable

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.head = emb, head

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(ids)).mean(dim=1)

    engine, private = _toy_private(Tied(), GradSampleMode.BOOKKEEPING)
    assert private.mode is GradSampleMode.HOOKS
    ids, y = torch.randint(0, 10, (4, 3)), torch.randint(0, 10, (4,))
    private.optimizer.zero_grad()
    private.backward(private.module(ids), y)
    private.optimizer.step()
    assert len(engine.accountant.history) == 1
