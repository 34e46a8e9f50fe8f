import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.common.config import ConfigError
from fedshield.privacy.client_dp import (
    ClientDPConfig,
    clip_update,
    l2_norm,
    noisy_mean,
    noisy_mean_of_sum,
    secure_normal,
)


def _update(scale: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(3, 4, generator=g) * scale,
        "b": torch.randn(5, generator=g) * scale,
    }


def _norm(update: dict[str, torch.Tensor]) -> float:
    """The L2 norm of all tensors as one vector, computed independently."""
    return float(torch.cat([t.double().flatten() for t in update.values()]).norm())


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(1e-4, 1e3),
    clip=st.floats(1e-3, 10.0),
    seed=st.integers(0, 1000),
)
def test_clipped_update_never_exceeds_the_norm_and_keeps_its_direction(
    scale: float, clip: float, seed: int
) -> None:
    update = _update(scale, seed)
    clipped, norm = clip_update(update, clip_norm=clip)
    assert norm == pytest.approx(_norm(update)) and l2_norm(update) == norm
    assert _norm(clipped) <= clip * (1 + 1e-5)
    if norm <= clip:
        assert all(torch.equal(clipped[k], update[k]) for k in update)
    else:
        ratio = clipped["a"].flatten()[0] / update["a"].flatten()[0]
        assert float(ratio) == pytest.approx(clip / norm, rel=1e-4)


def test_noisy_mean_has_the_documented_noise_and_rejects_unclipped_updates() -> None:
    clip, z, m = 0.5, 2.0, 4
    updates = [clip_update(_update(1.0, s), clip_norm=clip)[0] for s in range(m)]
    exact = {k: torch.stack([u[k] for u in updates]).mean(0) for k in updates[0]}
    errors = []
    for _ in range(400):
        out = noisy_mean(updates, clip_norm=clip, noise_multiplier=z)
        errors.append(torch.cat([(out[k] - exact[k]).flatten() for k in out]))
    err = torch.stack(errors)  # (400, 17)
    assert float(err.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(err.std()) == pytest.approx(z * clip / m, rel=0.05)
    with pytest.raises(ValueError, match="clip-norm"):
        noisy_mean([_update(10.0)], clip_norm=clip, noise_multiplier=z)


def test_secure_normal_is_standard_normal_and_never_repeats() -> None:
    x = secure_normal(torch.Size([200_001]), std=3.0)
    assert x.shape == (200_001,) and bool(x.isfinite().all())
    assert float(x.mean()) == pytest.approx(0.0, abs=0.03)
    assert float(x.std()) == pytest.approx(3.0, rel=0.01)
    # tail mass beyond 2 sigma: 4.55% for a Gaussian
    assert float((x.abs() > 6.0).float().mean()) == pytest.approx(0.0455, abs=0.003)
    y = secure_normal(torch.Size([16]), std=1.0)
    assert not torch.equal(y, secure_normal(torch.Size([16]), std=1.0))


def test_client_dp_config_explains_bad_values() -> None:
    with pytest.raises(ConfigError, match="client-dp.clip-norm"):
        ClientDPConfig(clip_norm=0.0)
    with pytest.raises(ConfigError, match="client-dp.noise-multiplier"):
        ClientDPConfig(enabled=True, noise_multiplier=0.0)
    with pytest.raises(ConfigError, match="client-dp.delta"):
        ClientDPConfig(delta=1.0)
    assert math.isclose(
        ClientDPConfig(enabled=False, noise_multiplier=0.0).clip_norm, 1.0
    )


def test_secure_normal_samples_are_uncorrelated_at_every_lag() -> None:
    """Box-Muller's two halves must not repeat or mirror each other: noise that
    repeats across coordinates cancels in their difference (or sum). The largest
    circular autocorrelation over all non-zero lags of 2^17 i.i.d. samples is about
    0.015 (maximum of 2^17 normals with std 2^-8.5); a repeat or mirror gives 0.5."""
    n = 2**17
    x = secure_normal(torch.Size([n]), std=1.0).double()
    x = x - x.mean()
    spectrum = torch.fft.rfft(x)
    acf = torch.fft.irfft(spectrum * spectrum.conj(), n=n) / float(x.pow(2).sum())
    assert float(acf[1:].abs().max()) < 0.04


def test_noise_is_independent_across_tensors_of_the_same_shape() -> None:
    """q/k/v or LoRA A matrices share a shape; shared noise would make their
    difference exact. Correlation of 10^5 independent pairs: std 0.003."""
    total = {"a": torch.zeros(100_000), "b": torch.zeros(100_000)}
    out = noisy_mean_of_sum(total, 1, clip_norm=1.0, noise_multiplier=1.0)
    corr = torch.corrcoef(torch.stack([out["a"], out["b"]]))[0, 1]
    assert abs(float(corr)) < 0.03
    assert float(out["a"].std()) == pytest.approx(1.0, rel=0.03)
