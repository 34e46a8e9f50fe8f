"""Embedding-space attacks: they raise each record's loss, stay in their ball, never
move padding, attack each record on its own, and bad settings are refused clearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from fedshield.common.config import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.models.embeddings import input_embedding, logits_of
from fedshield.privacy.adversarial import (
    AdversarialConfig,
    AdversarialMethod,
    BallNorm,
    attack_deltas,
    ball_radius,
    objective,
    project,
    random_start,
)

from .test_bookkeeping import _tiny_bert, _trainable

LENGTHS = (9, 5, 3, 7)  # right padding to T = 9


def _batch(seed: int = 2) -> tuple[dict[str, Tensor], Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, t = len(LENGTHS), max(LENGTHS)
    mask = (torch.arange(t) < torch.tensor(LENGTHS)[:, None]).long()
    ids = torch.randint(1, 100, (b, t), generator=gen).masked_fill(mask == 0, 0)
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "position_ids": torch.arange(t).expand(b, t).contiguous(),
    }
    return inputs, torch.tensor([0, 1, 1, 0])


def _loss_of(model: nn.Module, inputs: dict[str, Tensor], labels: Tensor):
    logits = logits_of(model, inputs, input_embedding(model))
    return lambda delta: F.cross_entropy(logits(delta), labels, reduction="none")


def _cfg(method: str, norm: str = "l2", **kw: float) -> AdversarialConfig:
    return AdversarialConfig(
        method=AdversarialMethod(method), norm=BallNorm(norm), **kw
    )


def _like(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return input_embedding(model)(inputs["input_ids"])


def _in_ball(delta: Tensor, mask: Tensor, cfg: AdversarialConfig) -> None:
    pad = mask == 0
    assert torch.all(delta[pad] == 0), "padding moved"
    if cfg.norm is BallNorm.LINF:
        assert delta.abs().max().item() <= cfg.epsilon * (1 + 1e-9)
    else:
        norms = delta.flatten(1).norm(dim=1)
        radius = ball_radius(mask, cfg.epsilon).flatten().to(norms)
        assert torch.all(norms <= radius * (1 + 1e-9))


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_attack_raises_every_records_loss_and_stays_in_its_ball(method, norm) -> None:
    model = _tiny_bert().eval()
    inputs, labels = _batch()
    loss_of = _loss_of(model, inputs, labels)
    cfg = _cfg(method, norm, epsilon=0.05, steps=4)
    params = [p for _, p in _trainable(model)]
    deltas = attack_deltas(
        loss_of,
        _like(model, inputs),
        inputs["attention_mask"],
        cfg,
        generator=torch.Generator().manual_seed(0),
        params=params,
    )
    assert len(deltas) == (cfg.steps if method == "freelb" else 1)
    assert all(p.requires_grad for p in params), "attack must thaw what it froze"
    clean = loss_of(None).detach()
    for delta in deltas:
        _in_ball(delta, inputs["attention_mask"], cfg)
    attacked = loss_of(deltas[-1]).detach()
    assert torch.all(attacked > clean), (clean, attacked)
    if method == "freelb":  # the ascent keeps climbing from its random start
        assert torch.all(attacked > loss_of(deltas[0]).detach())


def test_attack_runs_with_parameters_frozen_and_leaves_no_gradient() -> None:
    model = _tiny_bert().train()
    inputs, labels = _batch()
    loss_of = _loss_of(model, inputs, labels)
    params = [p for _, p in _trainable(model)]
    seen: list[bool] = []
    model.classifier.register_forward_hook(
        lambda m, a, o: seen.append(m.weight.requires_grad)
    )
    attack_deltas(
        loss_of,
        _like(model, inputs),
        inputs["attention_mask"],
        _cfg("pgd", steps=2),
        generator=torch.Generator().manual_seed(0),
        params=params,
    )
    assert seen == [False, False]
    assert all(p.grad is None for p in params)


def test_each_record_is_attacked_as_if_alone() -> None:
    """FGM of a padded batch equals FGM of each record forwarded alone: the
    perturbation of record i depends on record i only (the privacy argument)."""
    model = _tiny_bert().eval()
    inputs, labels = _batch()
    cfg = _cfg("fgm", epsilon=0.1)
    gen = torch.Generator().manual_seed(0)
    batch = attack_deltas(
        _loss_of(model, inputs, labels),
        _like(model, inputs),
        inputs["attention_mask"],
        cfg,
        generator=gen,
    )[0]
    for i, n in enumerate(LENGTHS):
        alone = {k: v[i : i + 1, :n].contiguous() for k, v in inputs.items()}
        own = attack_deltas(
            _loss_of(model, alone, labels[i : i + 1]),
            _like(model, alone),
            alone["attention_mask"],
            cfg,
            generator=gen,
        )[0]
        torch.testing.assert_close(batch[i : i + 1, :n], own, rtol=1e-7, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(1e-3, 1e3),
    epsilon=st.floats(1e-3, 10.0),
    norm=st.sampled_from(["l2", "linf"]),
    seed=st.integers(0, 2**16),
)
def test_project_lands_in_the_ball_and_is_idempotent(
    scale, epsilon, norm, seed
) -> None:
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(6) < torch.tensor([6, 2, 4])[:, None]).long()
    delta = torch.randn((3, 6, 5), generator=gen, dtype=torch.float64) * scale
    cfg = _cfg("pgd", norm, epsilon=epsilon)
    once = project(delta, mask, cfg)
    _in_ball(once, mask, cfg)
    torch.testing.assert_close(project(once, mask, cfg), once)
    start = random_start(delta, mask, cfg, gen)
    _in_ball(start, mask, cfg)
    assert start.dtype == delta.dtype


def test_objective_mixes_clean_and_adversarial_losses() -> None:
    """(1 - mix) * clean + mix * the mean over the attack's points."""
    clean = torch.tensor([1.0, 2.0])
    at = {0.0: torch.tensor([3.0, 4.0]), 1.0: torch.tensor([5.0, 8.0])}

    def loss_of(delta: Tensor | None) -> Tensor:
        return clean if delta is None else at[float(delta.sum())]

    d0, d1 = torch.zeros(1), torch.ones(1)
    torch.testing.assert_close(
        objective(loss_of, [d0, d1], 0.25),
        0.75 * clean + 0.25 * torch.tensor([4.0, 6.0]),
    )
    torch.testing.assert_close(objective(loss_of, [d0], 1.0), at[0.0])
    torch.testing.assert_close(objective(loss_of, [], 0.5), clean)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("adversarial.epsilon", -0.1, ["adversarial.epsilon", "(0, 10]"]),
        ("adversarial.epsilon", 0.0, ["adversarial.epsilon", "(0, 10]"]),
        ("adversarial.steps", 0, ["adversarial.steps", "[1, 50]"]),
        # a coordinator's overflow: a radius that turns long records into NaN
        ("adversarial.epsilon", 1e38, ["adversarial.epsilon", "(0, 10]"]),
        ("adversarial.alpha", 1e30, ["adversarial.alpha", "[0, 10]"]),
        ("adversarial.steps", 10**6, ["adversarial.steps", "[1, 50]"]),
        ("adversarial.method", "fgsm", ["adversarial.method", "'fgm'"]),
        ("adversarial.norm", "l1", ["adversarial.norm", "'l2'"]),
        ("adversarial.mix", 0.0, ["adversarial.mix", "(0, 1]"]),
        ("adversarial.alpha", -1.0, ["adversarial.alpha", "[0, 10]"]),
    ],
)
def test_bad_settings_are_refused_naming_the_key(key, value, words) -> None:
    with pytest.raises(ConfigError) as err:
        AdversarialConfig.from_run_config(RunConfig.parse({key: value}))
    for word in words:
        assert word in str(err.value)


def test_step_size_defaults() -> None:
    assert _cfg("fgm", epsilon=0.2).step_size == 0.2
    assert _cfg("pgd", epsilon=0.2, steps=5).step_size == pytest.approx(0.1)
    assert _cfg("freelb", epsilon=0.2, steps=5, alpha=0.03).step_size == 0.03
    assert not _cfg("off").enabled
