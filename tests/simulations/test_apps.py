"""The simulation wiring: simulated sites get their share of the packaged data and
the run's stand-in budget; a node with its own files keeps them."""

from pathlib import Path

import pytest

from fedshield.client.config import ClientConfig
from fedshield.common.config import ConfigError
from fedshield.simulations.apps import SimulatedSites


def test_simulated_sites_partition_the_default_pool(default_run_config) -> None:
    run_config = dict(default_run_config, **{"data.train-examples": 200})
    cfg = ClientConfig.from_run_config(run_config)
    sites = SimulatedSites()
    shares = []
    for k in range(3):
        node = sites.node_config({"partition-id": k, "num-partitions": 3}, run_config)
        shares.append(sites.load(node, cfg, run_config, k))
    assert [s.name for s in shares] == ["site-0", "site-1", "site-2"]
    assert sum(len(s.train) for s in shares) == 200


def test_a_simulated_site_takes_the_runs_stand_in_budget(default_run_config) -> None:
    run_config = dict(default_run_config, **{"simulation.site-max-epsilon": 3.0})
    sites = SimulatedSites()
    node = sites.node_config({"partition-id": 0, "num-partitions": 2}, run_config)
    assert node.max_epsilon == 3.0
    own = sites.node_config(
        {"partition-id": 0, "num-partitions": 2, "max-epsilon": 1.0}, run_config
    )
    assert own.max_epsilon == 1.0  # a budget in the node config wins


def test_a_node_with_its_own_file_is_never_treated_as_simulated(
    tmp_path: Path, default_run_config
) -> None:
    """A node with a deployed site's file and a partition is refused: otherwise
    the run's simulation settings (budgets, policies, poisoning) would reach a
    real site's data."""
    data = tmp_path / "own.csv"
    data.write_text("text,label\nmine,fresh\n")
    sites = SimulatedSites()
    raw = {"partition-id": 1, "num-partitions": 2, "data-path": str(data)}
    with pytest.raises(ConfigError, match="a node is one or the other"):
        sites.node_config(raw, default_run_config)
