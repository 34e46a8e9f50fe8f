"""The Flower components of fedshield's app bundle, wired to their data: the one
place where the apps meet the default dataset.

``pyproject.toml`` names these objects (``[tool.flwr.app.components]``), so both
``flwr run`` (simulation) and a deployed SuperNode load them:

- a **deployed site** (node config with ``data-path``) reads its own files, exactly
  as :class:`fedshield.client.site.SiteFiles` does;
- a **simulated site** (Flower sets ``partition-id``/``num-partitions``) gets its
  share of the packaged dataset (:mod:`fedshield.simulations.scenario`); with no
  operator of its own, its budget is the run's ``simulation.site-max-epsilon``, its
  policy accepts the run config and it releases ``simulation.site-release-metrics``;
- the **server** evaluates on ``data.test-path`` when set, else on the packaged
  dataset's test split.

Neither app imports this module or the scenarios: they take these loaders as
parameters (:func:`fedshield.client.app.client_app`,
:func:`fedshield.server.app.server_app`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedshield.client.app import client_app
from fedshield.client.config import ClientConfig
from fedshield.client.data import SiteDataConfig, SiteDataError, read_labeled_file
from fedshield.client.node import NodeConfig
from fedshield.client.policy import POLICY_KEYS, SitePolicy, parse_release
from fedshield.client.site import SiteData, SiteFiles
from fedshield.client.trainer import TrainConfig, train_site
from fedshield.common.config import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.models import ModelConfig, tasks
from fedshield.models.texts import LabeledTexts
from fedshield.privacy.dp import DPConfig, GradSampleMode
from fedshield.privacy.pii import PIIConfig
from fedshield.privacy.secagg import SecAggConfig
from fedshield.server.app import server_app
from fedshield.server.guard import RootData

from .faults import simulated_faults_mod
from .poison import PoisonConfig, attack_probes
from .scenario import Scenario
from .user_data import UserData

__all__ = ["SimulatedSites", "central_test", "clientapp", "serverapp"]

State = dict[str, torch.Tensor]


class SimulatedSites(SiteFiles):
    """Sites of Flower's simulation engine; a node with its own ``data-path``
    (a deployed site) keeps its files."""

    def node_config(
        self, raw: Mapping[str, Any], run_config: Mapping[str, Any]
    ) -> NodeConfig:
        node = super().node_config(raw, run_config)
        if not node.simulated:
            return node
        user = UserData.from_run_config(run_config)
        partition = node.partition_id
        if user is not None and partition is not None:
            # a site of data.sites-dir: its name, and its own <stem>.toml settings
            raw = {**user.site_config(partition), **raw}
            node = super().node_config(raw, run_config)
            name = user.site_name(partition)
            if name is not None:
                node = replace(node, site_name=name)
        parsed = RunConfig.parse(run_config)
        if node.max_epsilon is None:
            node = replace(node, max_epsilon=parsed["simulation.site-max-epsilon"])
        if node.delta is None:  # no operator: the run's delta is the site's
            node = replace(node, delta=parsed["dp.delta"])
        if not set(raw) & set(POLICY_KEYS):  # no operator: it accepts the run
            policy = SitePolicy.accepting(
                secagg=SecAggConfig.from_run_config(parsed),
                pii=PIIConfig.from_run_config(parsed),
                release=parse_release(
                    parsed["simulation.site-release-metrics"],
                    key="simulation.site-release-metrics",
                ),
            )
            node = replace(node, policy=policy)
        return node

    def load(
        self,
        node: NodeConfig,
        cfg: ClientConfig,
        run_config: Mapping[str, Any],
        node_id: int,
    ) -> SiteData:
        if node.data_path is not None or node.partition_id is None:
            return super().load(node, cfg, run_config, node_id)
        assert node.num_partitions is not None  # NodeConfig checks they come paired
        user = UserData.from_run_config(run_config)
        if user is not None:
            train = user.site(node.partition_id, node.num_partitions)
            site = SiteData(name=node.name(node_id), train=train, eval=None)
        else:
            scenario = Scenario.from_run_config(run_config)
            train, held = scenario.site(node.partition_id, node.num_partitions)
            site = SiteData(
                name=node.name(node_id),
                train=train,
                eval=held,
                gradient_canaries=scenario.gradient_canaries(
                    node.partition_id,
                    node.num_partitions,
                    clip_norm=cfg.dp.max_grad_norm,
                ),
                after_scrubbing=scenario.after_scrubbing(
                    node.partition_id, node.num_partitions
                ),
            )
        poison = PoisonConfig.from_run_config(run_config)
        if poison.attacks(node.partition_id):
            site = replace(
                site, train=poison.poison_data(site.train, node.partition_id)
            )
        return site

    def poison_update(
        self, node: NodeConfig, run_config: Mapping[str, Any], delta: State
    ) -> State:
        if not node.simulated:  # a deployed site: never, whatever the run config
            return delta
        poison = PoisonConfig.from_run_config(run_config)
        if not poison.attacks(node.partition_id):
            return delta
        return poison.poison_update(delta)


def central_test(test_path: str, run_config: Mapping[str, Any]) -> LabeledTexts:
    """The server's test set: ``data.test-path`` when set, else the held-out part
    of the user's data (``data.train-path`` / ``data.sites-dir``), else the
    packaged dataset's test split (the one the simulated sites' shares leave
    out)."""
    if test_path:
        return read_labeled_file(
            Path(test_path), SiteDataConfig.from_run_config(dict(run_config))
        )
    user = UserData.from_run_config(run_config)
    if user is not None:
        return user.central_test()
    return Scenario.from_run_config(run_config).central_test()


def root_data(root_path: str, run_config: Mapping[str, Any]) -> RootData:
    """The coordinator's root data for ``strategy.root-guard``, trained on with
    the run's local training (``train_site`` without DP)."""
    train = TrainConfig.from_run_config(run_config)
    model = ModelConfig.from_run_config(run_config)

    def train_root(net: torch.nn.Module, dataset: Any, seed: int) -> None:
        train_site(
            model=net,
            dataset=dataset,
            train_cfg=train,
            dp_cfg=DPConfig(enabled=False),
            mode=GradSampleMode.BOOKKEEPING,
            noise_multiplier=0.0,
            seed=seed,
            per_sample_loss=tasks.per_sample_loss(model),
        )

    return RootData(
        records=root_records(root_path, run_config),
        train=train_root,
        batch_size=train.batch_size,
    )


def root_records(root_path: str, run_config: Mapping[str, Any]) -> LabeledTexts:
    """The coordinator's root records: its own file, else (a simulation on the
    packaged dataset only) ``strategy.root-examples`` snippets from the end of the
    population split, which no simulated site, test set, probe or audit canary
    holds (canaries are drawn from its start)."""
    if root_path:
        path = Path(root_path)
        if not path.is_absolute() or not path.is_file():
            raise ConfigError(
                f"Expected strategy.root-data-path to be an absolute path to the "
                f"coordinator's labelled file (CSV/TSV/JSONL with the run's text and "
                f"label columns) on this host; found {root_path!r}, which "
                + ("is not absolute." if not path.is_absolute() else "is no file.")
            )
        try:
            return read_labeled_file(
                path, SiteDataConfig.from_run_config(dict(run_config))
            )
        except SiteDataError as err:
            raise ConfigError(f"strategy.root-data-path: {err}") from err
    if UserData.from_run_config(run_config) is not None or run_config.get(
        "data.test-path"
    ):
        raise ConfigError(
            "strategy.root-guard needs root data the coordinator holds itself: set "
            "strategy.root-data-path to a labelled file (the run's text and label "
            "columns) no site contributed. The packaged snippets stand in for it "
            "only in a simulation on the packaged dataset; found data.train-path, "
            "data.sites-dir or data.test-path set."
        )
    population = Scenario.from_run_config(run_config).data.split().population
    wanted = int(run_config["strategy.root-examples"])
    if wanted > len(population):
        raise ConfigError(
            f"strategy.root-examples = {wanted}, but only {len(population)} packaged "
            "snippets are outside the sites' pool and the test set; lower it, or "
            "lower data.train-examples / data.test-examples."
        )
    return population.subset(list(range(len(population) - wanted, len(population))))


clientapp = client_app(sites=SimulatedSites(), faults=simulated_faults_mod)
serverapp = server_app(
    central_test=central_test, probes=attack_probes, root_data=root_data
)
