"""A causal-LM site as the coordinator could try to misuse it: the run config
asks for secret canaries (records appended to a site's training data after its
scrubbing); only simulated sites plant them, never a deployed one. And a site's
text reaches training scrubbed, whatever task the run trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedshield.client.app import _with_late_records
from fedshield.client.config import ClientConfig
from fedshield.client.node import NodeConfig
from fedshield.common.config import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.models import write_tiny_causal_lm
from fedshield.privacy.audit import SECRET_FORMAT
from fedshield.simulations.apps import SimulatedSites
from fedshield.simulations.scenario import Scenario


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return write_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "llama")


def _run(default_run_config: dict, tiny_lm: Path, **extra) -> RunConfig:
    return RunConfig(
        {
            **default_run_config,
            "model.task": "causal-lm",
            "model.source": str(tiny_lm),
            "data.train-examples": 60,
            "data.test-examples": 20,
            "data.inject-pii": 0.0,
            **extra,
        }
    )


def test_only_simulated_sites_plant_secret_canaries(
    default_run_config: dict, tiny_lm: Path, tmp_path: Path
) -> None:
    run = _run(
        default_run_config,
        tiny_lm,
        **{"audit.canaries": 30, "audit.canary-kind": "secret"},
    )
    cfg = ClientConfig.from_run_config(run)
    sites = SimulatedSites()
    simulated = sites.load(
        NodeConfig.parse({"partition-id": 0, "num-partitions": 2}), cfg, run, 3
    )
    late = simulated.after_scrubbing
    assert late is not None and 0 < len(late) < 30  # about half included
    assert all(t.startswith(SECRET_FORMAT.prefix) for t in late.texts)
    trained = _with_late_records(simulated)
    assert trained.train.texts[-len(late) :] == late.texts  # appended, last
    data = tmp_path / "notes.txt"
    data.write_text("".join(f"note {i}\n" for i in range(40)), encoding="utf-8")
    deployed = sites.load(NodeConfig.parse({"data-path": str(data)}), cfg, run, 3)
    assert deployed.after_scrubbing is None and deployed.gradient_canaries is None
    assert _with_late_records(deployed).train == deployed.train
    assert len(deployed.train) == 40


def test_a_canary_kind_the_task_cannot_score_is_refused(
    default_run_config: dict, tiny_lm: Path
) -> None:
    with pytest.raises(ConfigError, match="needs labels"):
        Scenario.from_run_config(
            _run(
                default_run_config,
                tiny_lm,
                **{"audit.canaries": 10, "audit.canary-kind": "mislabelled"},
            )
        )
    with pytest.raises(ConfigError, match="causal LM"):
        Scenario.from_run_config(
            RunConfig(
                {
                    **default_run_config,
                    "audit.canaries": 10,
                    "audit.canary-kind": "secret",
                }
            )
        )


@pytest.mark.usefixtures("task_identity")
def test_secret_canaries_longer_than_max_length_are_refused(
    default_run_config: dict, tiny_lm: Path, tmp_path: Path
) -> None:
    """A truncated secret would rank nothing: the site refuses before training."""
    from fedshield.client.app import train

    from .site_round import server_message, site_context

    run = dict(
        _run(
            default_run_config,
            tiny_lm,
            **{
                "audit.canaries": 10,
                "audit.canary-kind": "secret",
                "model.max-length": 12,
                "secagg.enabled": False,
                "pii.mode": "off",
            },
        )
    )
    msg = server_message(
        run, message_type="train", config={"server-round": 1, "run-key": "k"}, node_id=3
    )
    node = {"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="secret canaries take up to"):
        train(msg, site_context(run, node, node_id=3), sites=SimulatedSites())
