"""The DP-SGD noise, measured: its std must be sigma * C / E on every code path.

The accountant only *assumes* the noise; nothing else in the suite would notice if
the optimizer added a tenth of it (the weights still change, the ledger still
records sigma). Each test here takes DP steps whose clipped gradient sum is known
(zero, or tiny next to the noise), reads the gradient the optimizer actually
applies, and compares its empirical std with sigma * C / E, where E is Opacus'
expected batch size int(n * q). With 10^5 or more coordinates the estimate's
relative standard error is below 0.3 %, so a 4 % tolerance is over 13 standard
errors: deterministic in practice (fixed seeds where the RNG can be seeded), and
a wrong noise scale by any factor outside [0.96, 1.04] fails.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from fedshield.client.trainer import TrainConfig, _empty_step, train_site
from fedshield.models import FinetuneMode, ModelConfig, load_model
from fedshield.models.texts import LabeledTexts, tokenize
from fedshield.privacy.budget import plan_release
from fedshield.privacy.dp import DPConfig, GradSampleMode, make_private

SIGMA, CLIP = 1.3, 0.7
N, BATCH = 64, 8  # q = 1/8, expected batch E = int(64 / 8) = 8
E = 8
TOLERANCE = 0.04


def _wide_private(mode: GradSampleMode):
    """A bias-free wide linear layer (131,072 weights) under ``make_private``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512, bias=False))
    data = TensorDataset(torch.zeros(N, 256), torch.zeros(N, dtype=torch.long))
    engine = PrivacyEngine(accountant="rdp")
    private = make_private(
        engine=engine,
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        data_loader=DataLoader(data, batch_size=BATCH),
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        mode=mode,
    )
    return engine, private, model[0].weight


@pytest.mark.parametrize(
    "mode",
    [GradSampleMode.BOOKKEEPING, GradSampleMode.GHOST, GradSampleMode.HOOKS],
)
def test_zero_gradient_step_applies_noise_of_std_sigma_c_over_expected_batch(
    mode: GradSampleMode,
) -> None:
    """Zero inputs give every per-sample gradient of the weight exactly 0, so the
    applied gradient is the noise alone: N(0, (sigma C / E)^2) per coordinate."""
    engine, private, weight = _wide_private(mode)
    x, y = torch.zeros(BATCH, 256), torch.zeros(BATCH, dtype=torch.long)
    private.optimizer.zero_grad()
    private.backward(private.module(x), y)
    before = weight.detach().clone()
    private.optimizer.step()
    applied = before - weight.detach()  # SGD, lr 1: the noised, averaged gradient
    assert float(applied.mean()) == pytest.approx(0.0, abs=0.02 * SIGMA * CLIP / E)
    assert float(applied.std()) == pytest.approx(SIGMA * CLIP / E, rel=TOLERANCE)
    assert engine.accountant.history == [(SIGMA, 1 / 8, 1)]
    private.close()


@pytest.mark.parametrize(
    "mode",
    [GradSampleMode.BOOKKEEPING, GradSampleMode.GHOST, GradSampleMode.HOOKS],
    ids=str,
)
def test_empty_poisson_batch_applies_the_same_noise_as_any_step(
    mode: GradSampleMode,
) -> None:
    """An empty batch (HF models cannot forward B = 0) is a noise-only step in
    every mode: the Opacus ghost fallback and hooks mode too, which used to
    account the step and apply nothing (so what was accounted had not happened)."""
    engine, private, weight = _wide_private(mode)
    private.optimizer.zero_grad()
    before = weight.detach().clone()
    _empty_step(private)
    applied = before - weight.detach()
    assert float(applied.std()) == pytest.approx(SIGMA * CLIP / E, rel=TOLERANCE)
    assert engine.accountant.history == [(SIGMA, 1 / 8, 1)]
    private.close()


def test_clipped_signal_is_bounded_by_c_per_sample_beside_the_noise() -> None:
    """Same layer, large inputs: each per-sample gradient is clipped to C, so the
    applied gradient is (sum of B clipped gradients + noise) / E and the signal's
    norm is at most B * C / E, however large the raw gradients are."""
    engine, private, weight = _wide_private(GradSampleMode.BOOKKEEPING)
    gen = torch.Generator().manual_seed(3)
    x = 100.0 * torch.randn(BATCH, 256, generator=gen)
    y = torch.randint(0, 512, (BATCH,), generator=gen)
    private.optimizer.zero_grad()
    private.backward(private.module(x), y)
    clipped_sum = weight.grad.norm()  # book-keeping leaves sum_i c_i g_i here
    assert 0.5 * CLIP < float(clipped_sum) <= BATCH * CLIP * 1.001
    w = weight.detach().clone().requires_grad_()
    raw = torch.autograd.grad(F.cross_entropy(x @ w.T, y, reduction="sum"), w)[0]
    assert float(raw.norm()) > 10 * BATCH * CLIP  # so clipping did the bounding
    private.close()


def _full_model_and_data(model_dir, n: int):
    """The tiny BERT, fully trainable (~1M coordinates), and n labelled reviews."""
    loaded = load_model(ModelConfig(source=str(model_dir), finetune=FinetuneMode.FULL))
    texts = tuple(f"review {i} was {'great' if i % 2 else 'awful'}" for i in range(n))
    dataset = tokenize(
        LabeledTexts(texts=texts, labels=tuple(i % 2 for i in range(n))),
        loaded.tokenizer,
        max_length=16,
    )
    return loaded, dataset


def _dp_round(loaded, dataset, *, mode: GradSampleMode, seed: int, epochs: int = 1):
    """One real DP-SGD round of ``train_site`` at sigma SIGMA, C CLIP, BATCH."""
    return train_site(
        model=loaded.model,
        dataset=dataset,
        train_cfg=TrainConfig(batch_size=BATCH, local_epochs=epochs),
        dp_cfg=DPConfig(noise_multiplier=SIGMA, max_grad_norm=CLIP),
        mode=mode,
        noise_multiplier=SIGMA,
        seed=seed,
        device=torch.device("cpu"),
    )


def _record_applied_gradients(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Every gradient AdamW is asked to apply, flattened, one tensor per step."""
    seen: list[torch.Tensor] = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads = [
            p.grad.detach().flatten()
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        seen.append(torch.cat(grads))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return seen


@pytest.mark.parametrize(
    "mode", [GradSampleMode.BOOKKEEPING, GradSampleMode.GHOST], ids=str
)
def test_site_training_round_adds_the_noise_its_ledger_release_claims(
    tiny_model_dir, monkeypatch: pytest.MonkeyPatch, mode: GradSampleMode
) -> None:
    """A real ``train_site`` round (tiny BERT, full fine-tuning, ~1M trainable
    coordinates): the gradient each step hands to AdamW has std sigma C / E, the
    sigma of the release the round reports (the one its ledger entry gets).
    The clipped signal (norm <= B C / E) adds at most (B C / E)^2 / d to the
    variance, under 0.01 % here."""
    n = 40
    loaded, dataset = _full_model_and_data(tiny_model_dir, n)
    dp = DPConfig(noise_multiplier=SIGMA, max_grad_norm=CLIP)
    planned = plan_release(
        dp,
        num_examples=n,
        batch_size=BATCH,
        local_epochs=1,
        planned_rounds=1,
        server_round=1,
        delta=dp.delta,
        history=[],
    )
    seen = _record_applied_gradients(monkeypatch)
    assert planned.noise_multiplier == SIGMA  # what _dp_round trains with
    result = _dp_round(loaded, dataset, mode=mode, seed=5)
    assert result.release == planned and result.release.noise_multiplier == SIGMA
    expected_batch = int(n / 5)  # q = 1 / len(loader) = 1/5
    assert len(seen) == result.steps == 5
    for grad in seen:
        assert grad.numel() > 900_000
        assert float(grad.std()) == pytest.approx(
            SIGMA * CLIP / expected_batch, rel=TOLERANCE
        )


def test_non_private_round_adds_no_noise(tiny_model_dir, monkeypatch) -> None:
    """The control for the test above: without DP the applied gradient is the plain
    mean gradient: its std over all coordinates (most of them embedding rows no
    text uses) stays far below sigma C / E (measured: under a tenth of it)."""
    loaded, dataset = _full_model_and_data(tiny_model_dir, 16)
    seen = _record_applied_gradients(monkeypatch)
    train_site(
        model=loaded.model,
        dataset=dataset,
        train_cfg=TrainConfig(batch_size=8),
        dp_cfg=DPConfig(enabled=False),
        mode=GradSampleMode.BOOKKEEPING,
        noise_multiplier=0.0,
        seed=5,
        device=torch.device("cpu"),
    )
    assert seen and all(float(g.std()) < 0.25 * SIGMA * CLIP / 8 for g in seen)


def _noise_of_a_round(model_dir, monkeypatch, *, seed: int, mode: GradSampleMode):
    """The gradients (noise-dominated, ~1M coordinates) of a 3-step round at
    ``seed``, with q = 1 (8 records, batch 8): every batch holds every record, so
    nothing but the seed can make two rounds' random streams differ."""
    loaded, dataset = _full_model_and_data(model_dir, 8)
    seen = _record_applied_gradients(monkeypatch)
    _dp_round(loaded, dataset, mode=mode, seed=seed, epochs=3)
    monkeypatch.undo()
    return seen


def test_the_noise_follows_the_rounds_secret_seed_and_nothing_else(
    tiny_model_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site's seed is its secret (client.app.training_seed): with another seed
    every step's noise must be independent. If any noise source ignored the seed
    (a fixed generator, a constant global seed), the coordinator could regenerate
    it; the two rounds' gradients would then correlate near 1. Independent noise on
    ~10^6 coordinates correlates within +-0.005 (1 standard error 0.001). Opacus'
    own modes draw from the same global generator the trainer seeds."""
    mode = GradSampleMode.BOOKKEEPING
    first = _noise_of_a_round(tiny_model_dir, monkeypatch, seed=11, mode=mode)
    second = _noise_of_a_round(tiny_model_dir, monkeypatch, seed=12, mode=mode)
    assert len(first) == len(second) == 3
    for a, b in zip(first, second, strict=True):
        corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
        assert abs(float(corr)) < 0.02
    again = _noise_of_a_round(tiny_model_dir, monkeypatch, seed=11, mode=mode)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize(
    "mode", [GradSampleMode.BOOKKEEPING, GradSampleMode.GHOST], ids=str
)
def test_site_training_draws_poisson_batches(
    tiny_model_dir, mode: GradSampleMode
) -> None:
    """The accountant assumes Poisson subsampling: every record joins each batch
    independently with rate q. Fixed-size shuffled batches would void the
    amplification the epsilon counts on. 40 records at q = 1/5 over 3 epochs: 15
    batches; all of size 8 has probability 0.156^15 < 1e-12 under Poisson."""
    loaded, dataset = _full_model_and_data(tiny_model_dir, 40)
    sizes: list[int] = []

    def record(_module, _args, kwargs):
        sizes.append(int(kwargs["input_ids"].shape[0]))

    handle = loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    result = _dp_round(loaded, dataset, mode=mode, seed=3, epochs=3)
    handle.remove()
    assert result.steps == 15 and result.release.sample_rate == 1 / 5
    assert len(sizes) <= 15  # an empty Poisson batch has no forward
    assert len(set(sizes)) > 1, sizes  # not fixed-size batches
    assert 0.5 * 8 < sum(sizes) / 15 < 1.5 * 8  # the expected batch is q n = 8
