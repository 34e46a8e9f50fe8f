"""Adversarial training composes with DP-SGD without changing its guarantee
(privacy/adversarial/attacks.py argues it): the per-record gradient of the
adversarial objective, clipped by book-keeping or Opacus hooks, equals a loop over
records forwarded alone; the attack's inner passes add nothing to any gradient;
and a round's release (the ledger entry) is the clean run's.

Each test plays the coordinator too: it may set any adversarial.* value, and
none changes what a record can contribute (at most C) or what is accounted.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import LlamaConfig, LlamaForSequenceClassification

from fedshield.client.trainer import TrainConfig, adversarial_backward, train_site
from fedshield.models.embeddings import input_embedding, logits_of
from fedshield.privacy.adversarial import (
    AdversarialConfig,
    AdversarialMethod,
    BallNorm,
    attack_deltas,
    objective,
)
from fedshield.privacy.budget import plan_release
from fedshield.privacy.dp import (
    DPConfig,
    GradSampleMode,
    make_non_private,
    make_private,
)

from .test_bookkeeping import (
    REL_TOL,
    _assert_close,
    _grad,
    _norm,
    _tiny_bert,
    _tiny_lora,
)
from .test_bookkeeping_lm import MODELS as LM_MODELS
from .test_bookkeeping_lm import _causal_lm_loss, _decoder
from .test_dp import _tiny_dataset

LENGTHS = (9, 5, 3, 7, 8)


def _batch(vocab: int, *, token_types: bool, seed: int = 4):
    gen = torch.Generator().manual_seed(seed)
    b, t = len(LENGTHS), max(LENGTHS)
    mask = (torch.arange(t) < torch.tensor(LENGTHS)[:, None]).long()
    ids = torch.randint(1, vocab, (b, t), generator=gen).masked_fill(mask == 0, 0)
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": torch.arange(t).expand(b, t).contiguous(),
    }
    if token_types:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def _classifier(make, *, token_types: bool = True):
    def build():
        model = make()
        inputs = _batch(100, token_types=token_types)
        labels = torch.tensor([0, 1, 1, 0, 1])
        loss = lambda logits, y: F.cross_entropy(logits, y, reduction="none")  # noqa: E731
        return model, inputs, labels, loss

    return build


def _lm(name: str):
    def build():
        model = LM_MODELS[name]()
        inputs = _batch(128, token_types=False)
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        return model, inputs, labels, _causal_lm_loss

    return build


def _llama_classifier() -> nn.Module:
    """A decoder classifier: Hugging Face reads each record's logits at its last
    real token, which it finds from input_ids (the padding)."""
    return _decoder(
        LlamaConfig, LlamaForSequenceClassification, tie=False, num_labels=2
    )


CASES = {
    "bert-full": _classifier(_tiny_bert),
    "llama-classifier-full": _classifier(_llama_classifier, token_types=False),
    "bert-lora": _classifier(_tiny_lora),
    "llama-lora": _lm("llama-lora"),
    "llama-full": _lm("llama-full"),
}
METHODS = {
    "fgm-mixed": AdversarialConfig(method=AdversarialMethod.FGM, epsilon=0.3, mix=0.5),
    "freelb-linf": AdversarialConfig(
        method=AdversarialMethod.FREELB, epsilon=0.05, steps=3, norm=BallNorm.LINF
    ),
    "pgd-only": AdversarialConfig(
        method=AdversarialMethod.PGD, epsilon=0.3, steps=2, mix=1.0
    ),
}


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _deltas(model, inputs, labels, loss, cfg) -> list[Tensor]:
    embedding = input_embedding(model)
    logits = logits_of(model, inputs, embedding)
    with torch.no_grad():
        like = embedding(inputs["input_ids"])
    return attack_deltas(
        lambda d: loss(logits(d), labels),
        like,
        inputs["attention_mask"],
        cfg,
        generator=torch.Generator().manual_seed(7),
        params=_trainable(model),
    )


def _reference(model, inputs, labels, loss, cfg, deltas) -> list[tuple[Tensor, ...]]:
    """G_i of each record's objective, the record forwarded alone (padding cut)."""
    params, embedding = _trainable(model), input_embedding(model)
    grads = []
    for i, n in enumerate(LENGTHS):
        alone = {k: v[i : i + 1, :n].contiguous() for k, v in inputs.items()}
        logits = logits_of(model, alone, embedding)
        mine = labels[i : i + 1, :n] if labels.dim() == 2 else labels[i : i + 1]
        own = [d[i : i + 1, :n] for d in deltas]
        obj = objective(lambda d: loss(logits(d), mine), own, cfg.mix)  # noqa: B023
        grads.append(torch.autograd.grad(obj.sum(), params))
    return grads


def _private(model: nn.Module, mode: GradSampleMode, clip: float):
    data = DataLoader(TensorDataset(torch.zeros(20, 1)), batch_size=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' secure-RNG advice
        engine = PrivacyEngine(accountant="rdp")
    return make_private(
        engine=engine,
        module=model,
        optimizer=torch.optim.SGD(_trainable(model), lr=1.0),
        data_loader=data,
        noise_multiplier=1.0,
        max_grad_norm=clip,
        mode=mode,
        several_calls=True,
    )


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", [GradSampleMode.BOOKKEEPING, GradSampleMode.HOOKS])
def test_adversarial_objective_is_clipped_per_record_exactly(
    mode, case, method
) -> None:
    cfg = METHODS[method]
    model, inputs, labels, loss = CASES[case]()
    model.train()  # dropout is 0 in the tiny models: both sides see the same function
    deltas = _deltas(model, inputs, labels, loss, cfg)
    grads = _reference(model, inputs, labels, loss, cfg, deltas)
    norms = torch.stack([_norm(g) for g in grads])
    clip = norms.median().item()

    private = _private(model, mode, clip)
    private.optimizer.zero_grad(set_to_none=True)
    embedding = input_embedding(model)
    logits = logits_of(private.module, inputs, embedding)

    def loss_of(d: Tensor | None) -> Tensor:
        return loss(logits(d), labels)

    with private.attack_context():  # the trainer's inner passes: nothing captured
        again = attack_deltas(
            loss_of,
            embedding(inputs["input_ids"]).detach(),
            inputs["attention_mask"],
            cfg,
            generator=torch.Generator().manual_seed(7),
            params=_trainable(model),
        )
    for a, d in zip(again, deltas, strict=True):
        torch.testing.assert_close(a, d)
    private.backward_losses(objective(loss_of, deltas, cfg.mix))
    _assert_clipped_per_record(model, mode, grads, norms, clip)
    private.close()


def _assert_clipped_per_record(model, mode, grads, norms, clip: float) -> None:
    """Book-keeping: its per-record norms and clipped sum are the loop's; Opacus
    hooks: its per-sample gradients (summed over the step's model calls) are."""
    params = _trainable(model)
    if mode is GradSampleMode.BOOKKEEPING:
        bk_norms = norms_from_bookkeeping(model)
        torch.testing.assert_close(bk_norms, norms, rtol=REL_TOL, atol=0)
        want = [torch.zeros_like(p) for p in params]
        for g_i, norm in zip(grads, norms, strict=True):
            factor = min(1.0, clip / (norm.item() + 1e-6))
            for acc, g in zip(want, g_i, strict=True):
                acc += factor * g
        _assert_close([_grad(p) for p in params], want)
    else:
        per_sample = [p.grad_sample.flatten(1) for p in params]
        got = torch.cat(per_sample, dim=1).norm(dim=1)
        torch.testing.assert_close(got, norms, rtol=REL_TOL, atol=0)


def _trainer_step(private, model, inputs, labels, loss, cfg) -> float:
    """The trainer's own adversarial step on the batch."""
    private.optimizer.zero_grad(set_to_none=True)
    return adversarial_backward(
        private,
        model,
        inputs,
        labels,
        per_sample_loss=loss,
        cfg=cfg,
        params=_trainable(model),
        generator=torch.Generator().manual_seed(7),
        precision=contextlib.nullcontext(),
    )


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", [GradSampleMode.BOOKKEEPING, GradSampleMode.HOOKS])
def test_the_trainers_fgm_step_is_clipped_per_record_exactly(mode, case) -> None:
    """The trainer's own step (adversarial_backward). Under book-keeping, FGM with a
    clean part takes its direction from the clean part's backward and clips the two
    backward passes' per-record sum once; under Opacus hooks, which would clip each
    pass as a sample of its own, it keeps the separate attack pass. Either way each
    record contributes its objective's gradient, clipped once."""
    cfg = METHODS["fgm-mixed"]
    model, inputs, labels, loss = CASES[case]()
    model.train()
    deltas = _deltas(model, inputs, labels, loss, cfg)
    grads = _reference(model, inputs, labels, loss, cfg, deltas)
    norms = torch.stack([_norm(g) for g in grads])
    clip = norms.median().item()

    private = _private(model, mode, clip)
    assert (private.backward_parts is not None) == (mode is GradSampleMode.BOOKKEEPING)
    mean = _trainer_step(private, model, inputs, labels, loss, cfg)
    plain = logits_of(model, inputs, input_embedding(model))
    want_mean = objective(lambda d: loss(plain(d), labels), deltas, cfg.mix).mean()
    assert math.isclose(mean, want_mean.item(), rel_tol=1e-6)
    _assert_clipped_per_record(model, mode, grads, norms, clip)
    private.close()


def test_fgm_without_dp_is_the_mean_objectives_gradient() -> None:
    """Without DP the two backward passes accumulate the mean objective's gradient."""
    cfg = METHODS["fgm-mixed"]
    model, inputs, labels, loss = CASES["bert-lora"]()
    model.train()
    deltas = _deltas(model, inputs, labels, loss, cfg)
    grads = _reference(model, inputs, labels, loss, cfg, deltas)
    params = _trainable(model)
    loader = DataLoader(TensorDataset(torch.zeros(20, 1)), batch_size=5)
    private = make_non_private(
        module=model, optimizer=torch.optim.SGD(params, lr=1.0), data_loader=loader
    )
    _trainer_step(private, model, inputs, labels, loss, cfg)
    want = [sum(g[j] for g in grads) / len(grads) for j in range(len(params))]
    _assert_close([_grad(p) for p in params], want)


def test_backward_parts_refuses_an_empty_or_ragged_objective() -> None:
    model, inputs, labels, loss = CASES["bert-lora"]()
    private = _private(model, GradSampleMode.BOOKKEEPING, clip=1.0)
    assert private.backward_parts is not None
    with pytest.raises(RuntimeError, match="at least one backward_part"):
        with private.backward_parts():
            pass
    logits = private.module(**inputs).logits
    per_record = loss(logits, labels)
    with pytest.raises(ValueError, match="same records"):
        with private.backward_parts() as backward_part:
            backward_part(per_record[:3].clone())
            backward_part(per_record[3:].clone())
    assert all(p.grad is None for p in _trainable(model))  # nothing half-clipped
    private.close()


def norms_from_bookkeeping(model: nn.Module) -> Tensor:
    from fedshield.privacy.bookkeeping.hooks import attached_clipper

    clipper = attached_clipper(model)
    assert clipper is not None and clipper.last_per_sample_norms is not None
    return clipper.last_per_sample_norms


def _round(tiny_model_dir, adversarial: AdversarialConfig | None, seed: int = 3):
    dp = DPConfig(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
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
        train_cfg=TrainConfig(local_epochs=2, batch_size=8, lr=1e-3),
        dp_cfg=dp,
        mode=GradSampleMode.BOOKKEEPING,
        noise_multiplier=planned.noise_multiplier,
        seed=seed,
        device=torch.device("cpu"),
        adversarial=adversarial,
    )
    return planned, result


@pytest.mark.parametrize(
    "cfg",
    [
        AdversarialConfig(method=AdversarialMethod.PGD, steps=2),
        # a coordinator's extreme settings: the largest ball, adversarial loss only
        AdversarialConfig(method=AdversarialMethod.FREELB, epsilon=10.0, mix=1.0),
    ],
    ids=["pgd", "freelb-extreme"],
)
def test_a_round_releases_exactly_what_the_clean_round_releases(
    tiny_model_dir, cfg
) -> None:
    clean_plan, clean = _round(tiny_model_dir, None)
    plan, adversarial = _round(tiny_model_dir, cfg)
    assert adversarial.release == clean.release == plan == clean_plan
    assert math.isfinite(adversarial.mean_loss)
    assert adversarial.mean_loss != clean.mean_loss  # it did train on another loss


def test_opacus_ghost_gives_way_to_hooks_when_the_model_is_called_several_times():
    """Ghost clipping's second backward assumes one model call per step: an
    adversarial objective under it would be clipped wrongly, so hooks take over."""
    model, inputs, labels, loss = CASES["bert-lora"]()
    private = _private(model, GradSampleMode.GHOST, clip=1.0)
    assert private.mode is GradSampleMode.HOOKS
    private.close()
