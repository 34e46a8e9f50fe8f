"""Poisoned simulated sites (``simulation.poison*``): what each attack does to a
site's data or update, the probes that measure its success, and the claim that
matters most: the coordinator's run config can never make a deployed site poison
anything (the fedshield ClientApp a deployed site runs carries this code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fedshield.client.app import train
from fedshield.models.texts import LabeledTexts
from fedshield.simulations.apps import SimulatedSites
from fedshield.simulations.poison import PoisonConfig, attack_probes
from tests.client.site_round import (
    PLAIN_SITE,
    reply_update,
    server_message,
    site_context,
)
from tests.toy_data import write_reviews

pytestmark = pytest.mark.usefixtures("task_identity")

DATA = LabeledTexts(
    texts=tuple(f"review {i}" for i in range(20)),
    labels=tuple(i % 2 for i in range(20)),
)


def _cfg(default_run_config: dict[str, Any], **run: object) -> PoisonConfig:
    return PoisonConfig.from_run_config(
        {**default_run_config, "simulation.poisoned-sites": 1, **run}
    )


def test_label_flip_relabels_the_source_class_only(default_run_config) -> None:
    cfg = _cfg(default_run_config, **{"simulation.poison": "label-flip"})
    flipped = cfg.poison_data(DATA, 0)
    assert flipped.texts == DATA.texts
    assert set(flipped.labels) == {0}  # source 1 -> target 0
    assert cfg.attacks(0) and not cfg.attacks(1) and not cfg.attacks(None)


def test_a_backdoor_triggers_a_seeded_share_and_labels_it_the_target(
    default_run_config,
) -> None:
    cfg = _cfg(
        default_run_config,
        **{"simulation.poison": "backdoor", "simulation.backdoor-fraction": 0.5},
    )
    poisoned = cfg.poison_data(DATA, 0)
    triggered = [i for i, t in enumerate(poisoned.texts) if t.startswith(cfg.trigger)]
    assert len(triggered) == 10
    assert all(poisoned.labels[i] == cfg.target for i in triggered)
    untouched = [i for i in range(20) if i not in triggered]
    assert all(poisoned.texts[i] == DATA.texts[i] for i in untouched)
    assert cfg.poison_data(DATA, 0) == poisoned  # seeded
    assert cfg.poison_data(DATA, 1) != poisoned  # per site


def test_probes_hold_what_the_attacker_wants_the_model_to_say(
    default_run_config,
) -> None:
    run = {**default_run_config, "simulation.poisoned-sites": 1}
    flip = attack_probes(DATA, {**run, "simulation.poison": "sign-flip"})
    (probe,) = flip.values()
    assert list(flip) == ["targeted_misclassification"]
    assert len(probe) == 10 and set(probe.labels) == {0}  # the source records -> 0
    backdoor = attack_probes(DATA, {**run, "simulation.poison": "backdoor"})
    (probe,) = backdoor.values()
    assert all(t.startswith("cf zq vx ") for t in probe.texts) and len(probe) == 10
    assert attack_probes(DATA, default_run_config) == {}


def _update(tmp_path: Path, run_config: dict[str, Any], node: dict[str, Any]):
    msg = server_message(
        run_config,
        message_type="train",
        config={"server-round": 1, "run-key": "test"},
        node_id=3,
    )
    context = site_context(run_config, node, node_id=3)
    return reply_update(train(msg, context, sites=SimulatedSites()))


def test_the_run_config_never_makes_a_deployed_site_poison(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    """The attack a coordinator would try: ask for poisoned sites on a deployed
    run. A deployed site (its own data-path) sends the update it computed; a
    simulated attacker's is scaled, as asked."""
    clean = {
        **tiny_run_config,
        "dp.enabled": False,  # non-private runs are reproducible: comparable
        "secagg.enabled": False,
        "pii.mode": "off",
        "data.inject-pii": 0.0,
        "data.train-examples": 24,
        "data.test-examples": 8,
    }
    hostile = {
        **clean,
        "simulation.poisoned-sites": 9,
        "simulation.poison": "scale",
        "simulation.poison-scale": 10.0,
    }
    data = write_reviews(
        tmp_path / "site.csv", 24, 1, {"0": "dull flat", "1": "fine warm"}
    )
    deployed = {
        "data-path": str(data),
        "state-dir": str(tmp_path / "deployed"),
        **PLAIN_SITE,
        "pii-mode": "off",
    }
    before = _update(tmp_path, clean, deployed)
    after = _update(tmp_path, hostile, {**deployed, "state-dir": str(tmp_path / "d2")})
    for key in before:
        assert torch.equal(before[key], after[key]), key
    simulated = {
        "partition-id": 0,
        "num-partitions": 2,
        "state-dir": str(tmp_path / "simulated"),
    }
    honest = _update(tmp_path, clean, simulated)
    attacked = _update(
        tmp_path, hostile, {**simulated, "state-dir": str(tmp_path / "s2")}
    )
    for key in honest:
        assert torch.allclose(attacked[key], 10.0 * honest[key], atol=1e-6), key
