"""The coordinator cannot regenerate a site's DP noise.

DP-SGD's noise and Poisson sampling come from torch's generator, seeded per round
by ``client.app.training_seed``. If that seed followed from what the coordinator
knows (the run config's ``seed``, the site's name, the round), the coordinator
could replay the site's randomness and subtract the noise from the update. Under
DP the seed is 63 bits from the OS CSPRNG; only non-private runs are reproducible.
The attack here: the coordinator sends the same round twice to a site with the
same data and compares the updates, and tries every seed it could derive.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from fedshield.client.app import training_seed
from fedshield.client.config import ClientConfig

from .site_round import reply_update, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def _derivable_seeds(cfg: ClientConfig, site: str, server_round: int) -> set[int]:
    """Seeds a coordinator could compute from what it sent."""
    digest = hashlib.sha256(f"{cfg.seed}/{site}/{server_round}".encode()).digest()
    return {cfg.seed, server_round, int.from_bytes(digest[:8], "big") >> 1}


def test_dp_seed_is_fresh_each_round_and_not_derivable(tiny_run_config) -> None:
    cfg = ClientConfig.from_run_config(tiny_run_config)
    assert cfg.dp.enabled
    seeds = [training_seed(cfg, "site-a", 1) for _ in range(8)]
    assert len(set(seeds)) == 8  # 63 random bits: a repeat has probability 3e-18
    assert not set(seeds) & _derivable_seeds(cfg, "site-a", 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_non_private_seed_is_reproducible_per_site_and_round(tiny_run_config) -> None:
    cfg = ClientConfig.from_run_config({**tiny_run_config, "dp.enabled": False})
    assert training_seed(cfg, "site-a", 1) == training_seed(cfg, "site-a", 1)
    assert training_seed(cfg, "site-a", 1) != training_seed(cfg, "site-b", 1)
    assert training_seed(cfg, "site-a", 1) != training_seed(cfg, "site-a", 2)


@pytest.mark.parametrize("dp", [True, False], ids=["dp", "non-private"])
def test_replaying_a_round_reproduces_the_update_only_without_dp(
    tmp_path: Path, tiny_run_config, dp: bool
) -> None:
    cfg = {
        **tiny_run_config,
        "dp.enabled": dp,
        "secagg.enabled": False,
        "pii.mode": "off",
    }
    first = reply_update(train_reply(tmp_path / "first", cfg))
    second = reply_update(train_reply(tmp_path / "second", cfg))
    same = all(torch.equal(first[k], second[k]) for k in first)
    assert same is not dp


def test_dp_seed_has_the_full_63_bits(tiny_run_config) -> None:
    """A short seed is a small search for the coordinator. Of 8 seeds of 63 random
    bits, all stay below 2^56 with probability 2^-56."""
    cfg = ClientConfig.from_run_config(tiny_run_config)
    seeds = [training_seed(cfg, "site-a", 1) for _ in range(8)]
    assert max(s.bit_length() for s in seeds) > 56
