"""White-box gradient canaries: placed, sampled and scored as the audit needs, set
only for simulated sites, and strong enough to catch a DP-SGD that adds 4x less
noise than it reports (while the honest one stays within its claim)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedshield.client.trainer import TrainConfig, train_site
from fedshield.common.config import ConfigError
from fedshield.models import FinetuneMode, ModelConfig, load_model
from fedshield.models.texts import LabeledTexts, tokenize
from fedshield.privacy.audit import (
    AuditConfig,
    CanaryInjector,
    Verdict,
    gradient_canary_scores,
    make_gradient_canaries,
)
from fedshield.privacy.dp import DPConfig, GradSampleMode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "broken_dp"))
from canary_round import canary_round  # noqa: E402  (test code, never packaged)


def test_sites_get_disjoint_reproducible_coordinates_and_half_are_included() -> None:
    sites = [
        make_gradient_canaries(
            count=500, seed=3, site_index=k, num_sites=3, clip_norm=1.0
        )
        for k in range(3)
    ]
    coords = [s.coordinates(10_000) for s in sites]
    assert len(np.unique(np.concatenate(coords))) == 1500
    again = make_gradient_canaries(
        count=500, seed=3, site_index=1, num_sites=3, clip_norm=1.0
    )
    assert again == sites[1] and np.array_equal(again.coordinates(10_000), coords[1])
    assert 200 < sum(sites[0].included) < 300
    assert sites[0].included != sites[1].included
    with pytest.raises(ValueError, match="distinct trainable values"):
        sites[0].coordinates(1000)
    with pytest.raises(ValueError, match="site_index"):
        make_gradient_canaries(
            count=5, seed=3, site_index=3, num_sites=3, clip_norm=1.0
        )


def _flat_grad(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).numpy()
            for p in model.parameters()
        ]
    )


def test_injector_adds_c_at_included_coordinates_at_the_step_rate() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.Linear(20, 2))
    canaries = make_gradient_canaries(
        count=100, seed=1, site_index=0, num_sites=1, clip_norm=0.5
    )
    total = sum(p.numel() for p in model.parameters())
    coords = canaries.coordinates(total)
    included = coords[np.asarray(canaries.included)]

    def injector(rate: float, *, mean: bool) -> CanaryInjector:
        return CanaryInjector(
            canaries,
            model,
            sample_rate=rate,
            generator=torch.Generator().manual_seed(0),
            per_record_mean=mean,
        )

    assert injector(1.0, mean=False).add(batch_size=8) == len(included)
    grad = _flat_grad(model)
    assert np.allclose(grad[included], 0.5) and np.count_nonzero(grad) == len(included)
    model.zero_grad(set_to_none=True)
    injector(1.0, mean=True).add(batch_size=8)  # without DP: a batch mean
    assert np.allclose(_flat_grad(model)[included], 0.5 / 8)
    sampled = injector(0.1, mean=False)
    counts = [sampled.add(batch_size=8) for _ in range(400)]
    assert np.mean(counts) == pytest.approx(0.1 * len(included), rel=0.15)


def test_scores_point_against_the_canary_gradient() -> None:
    initial = np.zeros(10)
    final = np.array([0, -0.5, 0, 0.2, 0, 0, 0, 0, 0, 0], dtype=float)
    assert np.array_equal(
        gradient_canary_scores(initial, final, np.array([1, 3])), [0.5, -0.2]
    )
    with pytest.raises(ValueError, match="same model"):
        gradient_canary_scores(initial, np.zeros(9), np.array([1]))


def test_only_simulated_sites_train_on_gradient_canaries(
    tiny_run_config: dict, tmp_path: Path
) -> None:
    """The coordinator's run config asks for gradient canaries; a deployed site
    (its own data-path) gets none, whatever the run config says."""
    from fedshield.client.config import ClientConfig
    from fedshield.client.node import NodeConfig
    from fedshield.common.run_config import RunConfig
    from fedshield.simulations.apps import SimulatedSites

    raw = {
        **tiny_run_config,
        "audit.canaries": 50,
        "audit.canary-kind": "gradient",
    }
    run_config = RunConfig(raw)
    cfg = ClientConfig.from_run_config(run_config)
    sites = SimulatedSites()
    simulated = sites.load(
        NodeConfig.parse({"partition-id": 1, "num-partitions": 2}), cfg, run_config, 7
    )
    assert simulated.gradient_canaries is not None
    assert simulated.gradient_canaries.site_index == 1
    data = tmp_path / "site.csv"
    data.write_text("text,label\n" + "".join(f"note {i},{i % 2}\n" for i in range(40)))
    deployed = sites.load(
        NodeConfig.parse({"data-path": str(data)}), cfg, run_config, 7
    )
    assert deployed.gradient_canaries is None


def test_hooks_mode_refuses_gradient_canaries(tiny_model_dir: Path) -> None:
    loaded, dataset = _model_and_data(tiny_model_dir, 40)
    canaries = make_gradient_canaries(
        count=10, seed=1, site_index=0, num_sites=1, clip_norm=1.0
    )
    with pytest.raises(ConfigError, match="hooks mode"):
        train_site(
            model=loaded.model,
            dataset=dataset,
            train_cfg=TrainConfig(batch_size=8, local_epochs=1),
            dp_cfg=DPConfig(max_grad_norm=1.0),
            mode=GradSampleMode.HOOKS,
            noise_multiplier=1.0,
            seed=0,
            canaries=canaries,
        )


def _model_and_data(model_dir: Path, n: int):  # type: ignore[no-untyped-def]
    """The tiny BERT fully trainable (~1M coordinates, most of them embedding rows
    no text touches: quiet coordinates, as in a real model) and n reviews."""
    loaded = load_model(ModelConfig(source=str(model_dir), finetune=FinetuneMode.FULL))
    texts = tuple(f"review {i} was {'great' if i % 2 else 'awful'}" for i in range(n))
    labels = tuple(i % 2 for i in range(n))
    return loaded, tokenize(
        LabeledTexts(texts=texts, labels=labels), loaded.tokenizer, max_length=16
    )


CLAIM, CANARIES = 2.0, 2000


def _audited_round(model_dir: Path, *, noise_factor: float) -> Verdict:
    """Train with DP-SGD calibrated to epsilon = CLAIM, gradient canaries in, the
    noise actually added scaled by ``noise_factor``; audit as `fedshield audit`
    does (the same scoring and test functions)."""
    from fedshield.simulations.audit.scoring import canary_test

    trained = canary_round(
        model_dir, noise_factor=noise_factor, canaries=CANARIES, claim=CLAIM
    )
    assert trained.recorded == trained.planned  # the accountant saw the full noise
    test = canary_test(
        scope="site-0",
        scores=trained.scores,
        included=trained.canaries.included,
        audit=AuditConfig(canaries=CANARIES, guess_fraction=0.2),
        claimed_epsilon=CLAIM,
        delta=1e-5,
        confidence=0.95,
    )
    assert test.canaries is not None and test.canaries.ceiling > CLAIM
    return test.verdict


def test_a_dp_sgd_with_4x_less_noise_than_it_reports_is_a_violation(
    tiny_model_dir: Path,
) -> None:
    """The issue's broken implementation: it claims epsilon 2 and adds a quarter
    of the noise. Measured: 377 of 400 guesses right, epsilon >= 2.43."""
    assert _audited_round(tiny_model_dir, noise_factor=0.25) is Verdict.VIOLATION


def test_the_honest_dp_sgd_stays_within_its_claim(tiny_model_dir: Path) -> None:
    """The control: the same round with the noise it reports (measured: 272 of
    400 right, epsilon >= 0.57 against the claimed 2, ceiling 4.84)."""
    assert _audited_round(tiny_model_dir, noise_factor=1.0) is Verdict.CONSISTENT


def test_scores_are_standardised_within_each_parameter_tensor() -> None:
    """Two tensors that moved differently (a LoRA B drifting off zero, an A
    under the data's gradient: another centre, another spread): raw movements
    rank by tensor, standardised ones by canary. The calibration reads where
    canaries are, never which were included."""
    rng = np.random.default_rng(0)
    sizes = [4000, 4000]
    initial = np.zeros(sum(sizes))
    centre = np.r_[np.full(4000, 8.0), np.zeros(4000)]
    spread = np.r_[np.full(4000, 3.0), np.ones(4000)]
    coords = rng.choice(initial.size, size=2000, replace=False)
    included = rng.random(2000) < 0.5
    push = np.zeros(initial.size)
    push[coords[included]] = 1.0  # an included canary moves its coordinate 1 sd
    final = -((rng.normal(size=initial.size) + push) * spread + centre)
    raw = gradient_canary_scores(initial, final, coords)
    std = gradient_canary_scores(initial, final, coords, sizes=sizes)

    def separation(scores: np.ndarray) -> float:
        return float(
            (scores[included].mean() - scores[~included].mean()) / scores.std()
        )

    assert separation(raw) < 0.4  # the tensors' offsets drown the canaries
    assert separation(std) > 0.8  # each canary against its own tensor
    in_small = coords >= 4000
    assert abs(np.median(std[in_small & ~included])) < 0.1  # centred per tensor
    with pytest.raises(ValueError, match="sum to"):
        gradient_canary_scores(initial, final, coords, sizes=[10])
