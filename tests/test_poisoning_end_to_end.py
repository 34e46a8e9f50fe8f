"""A poisoning attack that succeeds without a defence and is blunted with one:
the real ServerApp main and the real fedshield ClientApp (the one deployed sites
run, with its mods) in one process, 5 simulated sites of toy reviews, a tiny
BERT, no DP and no secure aggregation (the robust strategies need each update).
Site 0 sends its update sign-flipped and scaled ×10: with FedAvg the model is
driven away from the honest sites' and the targeted misclassification rises;
with the coordinate-wise median it learns as the honest sites teach it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, RecordDict

from fedshield.server.app import run_server
from fedshield.simulations.apps import central_test, clientapp, root_data
from fedshield.simulations.poison import attack_probes
from tests.server.grid import InMemoryGrid
from tests.toy_data import write_reviews

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("task_identity")]

WORDS = {"0": "dull flat boring awful", "1": "fine warm lovely great"}
SITES = 5


class Simulated(InMemoryGrid):
    """Each node a simulated site (partition id) answering through the ClientApp."""

    def __init__(self, run_config: dict[str, Any]) -> None:
        super().__init__(range(1, SITES + 1), run_config)
        for i, node in enumerate(self.nodes):
            self.contexts[node].node_config.update(
                {"partition-id": i, "num-partitions": SITES}
            )

    def reply(self, msg: Message, node: int) -> Message:
        return clientapp(msg, self.contexts[node])


def _run(tmp_path: Path, base: dict[str, Any], name: str, **run: Any) -> dict:
    out = tmp_path / name
    config = {**base, "out-dir": str(out), **run}
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config
    )
    run_server(
        Simulated(config),
        context,
        central_test=central_test,
        probes=attack_probes,
        root_data=root_data,
    )
    return json.loads((out / "summary.json").read_text())


def test_a_sign_flipping_site_wins_against_fedavg_and_loses_against_the_median(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    for k in range(SITES):
        write_reviews(sites / f"site{k}.csv", 48, seed=k, words=WORDS, length=4)
    test = write_reviews(tmp_path / "test.csv", 60, seed=99, words=WORDS, length=4)
    base = {
        **tiny_run_config,
        "data.sites-dir": str(sites),
        "data.test-path": str(test),
        "data.label-names": "0,1",
        "num-server-rounds": 3,
        "dp.enabled": False,
        "secagg.enabled": False,
        "pii.mode": "off",
        "train.local-epochs": 2,
        "train.lr": 0.005,
        "min-train-sites": 3,  # the median needs 3 to be more than a mean
        "simulation.poison": "sign-flip",
        "simulation.poison-scale": 10.0,
    }
    clean = _run(tmp_path, base, "clean")
    attacked = _run(tmp_path, base, "fedavg", **{"simulation.poisoned-sites": 1})
    defended = _run(
        tmp_path,
        base,
        "median",
        **{"simulation.poisoned-sites": 1, "strategy.name": "fedmedian"},
    )
    # measured: clean 1.0; FedAvg 0.117 (misclassification 1.0); median 1.0 (0.0)
    assert clean["rounds"][-1]["accuracy"] >= 0.9
    assert attacked["rounds"][-1]["accuracy"] <= 0.7  # the attack works
    assert defended["rounds"][-1]["accuracy"] >= 0.9  # and the median blunts it
    hit = attacked["rounds"][-1]["attack"]["targeted_misclassification"]
    held = defended["rounds"][-1]["attack"]["targeted_misclassification"]
    assert hit >= 0.5 > held
    assert "attack" not in clean["rounds"][-1]  # nothing measured without attackers
