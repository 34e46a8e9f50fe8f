"""Client-level DP at the site: the update that leaves is clipped to S.

The server's noise z S only protects a site if the site's whole update has L2 norm
at most S. Under secure aggregation the server cannot check that (it sees only the
masked vector), so the site's own train handler must clip, and leave room for the
stochastic rounding of the quantizer. These tests run the real ``@app.train``
handler of a deployed-style site (tiny BERT, PII scrubbing off for speed) and read
the update it hands on: to the server in the clear, or to the secagg mod.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedshield.privacy.secagg import SecAggConfig

from .site_round import reply_update, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def _update_norm(site_dir: Path, run_config: dict[str, Any]) -> tuple[float, int]:
    """L2 norm (computed here, not by the code under test) and size of the update
    the site's train handler produces."""
    delta = reply_update(train_reply(site_dir, run_config))
    flat = torch.cat([t.flatten().double() for t in delta.values()])
    return float(flat.norm()), flat.numel()


@pytest.fixture()
def clip_run_config(tiny_run_config) -> dict[str, Any]:
    return {
        **tiny_run_config,
        "pii.mode": "off",
        "dp.noise-multiplier": 0.5,
        "train.head-lr": 0.5,  # a large update, far above the clip norm
    }


def test_site_clips_its_whole_update_to_the_client_level_norm(
    tmp_path: Path, clip_run_config
) -> None:
    raw, _ = _update_norm(
        tmp_path / "raw", {**clip_run_config, "secagg.enabled": False}
    )
    clip = 0.01
    assert raw > 10 * clip  # the control: unclipped, the update is far larger
    clipped, _ = _update_norm(
        tmp_path / "clipped",
        {
            **clip_run_config,
            "secagg.enabled": False,
            "client-dp.enabled": True,
            "client-dp.clip-norm": clip,
        },
    )
    assert clipped == pytest.approx(clip, rel=1e-4)


def test_under_secure_aggregation_the_site_leaves_room_for_quantization(
    tmp_path: Path, clip_run_config
) -> None:
    """The masked sum adds stochastic rounding of up to 2 clip-range / levels per
    coordinate; the site clips to S minus that bound, so the quantized update
    still has norm <= S."""
    clip = 0.05
    cfg = {
        **clip_run_config,
        "secagg.enabled": True,
        "client-dp.enabled": True,
        "client-dp.clip-norm": clip,
    }
    norm, numel = _update_norm(tmp_path, cfg)
    q = SecAggConfig.from_run_config(cfg).quantizer
    room = math.sqrt(numel) * 2 * q.clip_range / q.levels
    assert 0 < room < clip
    assert norm == pytest.approx(clip - room, rel=1e-4)
