"""The root guard (``strategy.root-guard``, :mod:`server.guard`) under secure
aggregation, where the robust strategies cannot run: the real ServerApp main and
the real fedshield ClientApp (with its secure-aggregation mod) in one process, 5
simulated sites of toy reviews, a tiny BERT, no DP. Site 0 sends its update
sign-flipped and scaled x10 inside the masked sum. FedAvg follows it below chance;
with the guard the server never applies a mean that points away from its own root
update, so the attack gains nothing. Its cost on a clean run is measured too: the
honest rounds are applied and the model learns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_poisoning_end_to_end import SITES, WORDS, _run
from tests.toy_data import write_reviews

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("task_identity")]


def test_a_sign_flipping_site_inside_the_secure_sum_gains_nothing_against_the_guard(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    for k in range(SITES):
        write_reviews(sites / f"site{k}.csv", 48, seed=k, words=WORDS, length=4)
    test = write_reviews(tmp_path / "test.csv", 60, seed=99, words=WORDS, length=4)
    root = write_reviews(tmp_path / "root.csv", 32, seed=77, words=WORDS, length=4)
    base = {
        **tiny_run_config,
        "data.sites-dir": str(sites),
        "data.test-path": str(test),
        "data.label-names": "0,1",
        "num-server-rounds": 3,
        "dp.enabled": False,
        "secagg.enabled": True,
        "pii.mode": "off",
        "train.local-epochs": 2,
        "train.lr": 0.005,
        "min-train-sites": 3,
        "simulation.poison": "sign-flip",
        "simulation.poison-scale": 10.0,
        "strategy.root-data-path": str(root),
    }
    guarded = {"strategy.root-guard": True}
    clean = _run(tmp_path, base, "clean", **guarded)
    attacked = _run(tmp_path, base, "fedavg", **{"simulation.poisoned-sites": 1})
    defended = _run(
        tmp_path, base, "guard", **{"simulation.poisoned-sites": 1, **guarded}
    )
    initial = defended["initial"]["accuracy"]
    # the cost: on honest sites every round's mean is applied and the model learns
    assert clean["rounds"][-1]["accuracy"] >= 0.9
    assert all(r["guard"]["action"] != "rejected" for r in clean["rounds"])
    assert all(r["guard"]["cosine"] > 0 for r in clean["rounds"])
    # the attack works against FedAvg under secure aggregation ...
    assert attacked["rounds"][-1]["accuracy"] <= 0.7
    assert "guard" not in attacked["rounds"][-1]
    # ... and gains nothing against the guard: every poisoned mean is refused
    assert [r["guard"]["action"] for r in defended["rounds"]] == ["rejected"] * 3
    assert all(r["guard"]["cosine"] < 0 for r in defended["rounds"])
    assert defended["rounds"][-1]["accuracy"] == pytest.approx(initial)
    hit = attacked["rounds"][-1]["attack"]["targeted_misclassification"]
    held = defended["rounds"][-1]["attack"]["targeted_misclassification"]
    assert held < hit
