"""``dp.target-epsilon`` at a site: the sigma it trains with covers the whole planned
run (``num-server-rounds`` x local epochs), so the run ends at the target, not past it.
The release is rebuilt from what the site reports and composed independently."""

from __future__ import annotations

from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from .site_round import train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_target_epsilon_run_reaches_the_target_after_its_planned_rounds(
    tmp_path: Path, tiny_run_config, epochs: int
) -> None:
    cfg = {
        **tiny_run_config,
        "pii.mode": "off",
        "secagg.enabled": False,
        "num-server-rounds": 3,
        "train.local-epochs": epochs,
        "dp.target-epsilon": 4.0,
    }
    reply = train_reply(tmp_path, cfg, records=24)
    metrics = reply.content.metric_records["metrics"]
    sigma, q, steps = (
        float(metrics["noise-multiplier"]),
        float(metrics["sample-rate"]),
        int(metrics["steps"]),
    )
    assert q == 1 / 3 and steps == 3 * epochs  # 24 records, batch 8
    assert 3.9 < _epsilon(sigma, q, 3 * steps) <= 4.0  # after the 3 planned rounds
    # and the site's ledger spent one round's worth of it (a fresh site)
    assert float(metrics["epsilon"]) == pytest.approx(_epsilon(sigma, q, steps))


def _epsilon(sigma: float, q: float, steps: int) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    return accountant.get_epsilon(1e-5)
