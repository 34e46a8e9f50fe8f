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

import csv
import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.app import train, training_seed
from client.config import ClientConfig
from models import arrays_to_state, load_model, state_to_arrays, trainable_state
from models.config import ModelConfig

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


def _update(tmp_path: Path, run_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The update the real train handler sends for round 1 on a fixed file."""
    tmp_path.mkdir(parents=True)
    data = tmp_path / "site.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(
            (f"review {i}: {'fine' if i % 2 else 'dull'}", i % 2) for i in range(24)
        )
    torch.manual_seed(0)  # the same global model for both calls
    loaded = load_model(ModelConfig.from_run_config(run_config))
    msg = Message(
        content=RecordDict(
            {
                "arrays": state_to_arrays(trainable_state(loaded.model)),
                "config": ConfigRecord({"server-round": 1, "run-key": "replay"}),
            }
        ),
        dst_node_id=3,
        message_type="train",
    )
    context = Context(
        run_id=1,
        node_id=3,
        node_config={"data-path": str(data), "state-dir": str(tmp_path / "state")},
        state=RecordDict(),
        run_config=run_config,
    )
    reply = train(msg, context)
    return arrays_to_state(reply.content.array_records["arrays"], what="update")


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
    first = _update(tmp_path / "first", cfg)
    second = _update(tmp_path / "second", cfg)
    same = all(torch.equal(first[k], second[k]) for k in first)
    assert same is not dp
