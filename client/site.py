"""Where a deployed site's examples come from: its own files, named in its node
config (``data-path``, optional ``eval-data-path``), opened read-only.

The ClientApp takes its site-data loader as a parameter (:func:`client.app.client_app`);
this is the deployed one. The simulation wiring (``fedshield.simulations.apps``)
plugs in a loader that gives simulated sites their share of a dataset instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedshield.models.texts import LabeledTexts
from fedshield.privacy.audit.gradient_canaries import GradientCanaries

from .config import ClientConfig
from .data import SiteDataError, read_labeled_file
from .node import NodeConfig

__all__ = ["SiteData", "SiteFiles", "SiteSource"]

State = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class SiteData:
    """A site's examples. Set only by the simulation's loader, for the audit (a
    deployed site's, :class:`SiteFiles`, are always None, whatever the run config
    says): ``gradient_canaries``, white-box canaries for its DP-SGD steps, and
    ``after_scrubbing``, canary records appended to ``train`` after its PII
    scrubbing (``secret`` canaries)."""

    name: str
    train: LabeledTexts
    eval: LabeledTexts | None
    gradient_canaries: GradientCanaries | None = None
    after_scrubbing: LabeledTexts | None = None


class SiteSource(Protocol):
    """Where the ClientApp gets a site's settings and examples from."""

    def node_config(
        self, raw: Mapping[str, Any], run_config: Mapping[str, Any]
    ) -> NodeConfig:
        """The site's own settings, from ``context.node_config``."""
        ...

    def load(
        self,
        node: NodeConfig,
        cfg: ClientConfig,
        run_config: Mapping[str, Any],
        node_id: int,
    ) -> SiteData:
        """The site's train (and optional eval) examples."""
        ...

    def poison_update(
        self, node: NodeConfig, run_config: Mapping[str, Any], delta: State
    ) -> State:
        """The update the site sends for its computed ``delta``: ``delta`` itself,
        except at a simulated attacker (:mod:`fedshield.simulations.poison`)."""
        ...


class SiteFiles:
    """A deployed site: its node config as its operator wrote it, and the files
    it names."""

    def poison_update(
        self, node: NodeConfig, run_config: Mapping[str, Any], delta: State
    ) -> State:
        return delta  # a deployed site sends what it computed

    def node_config(
        self, raw: Mapping[str, Any], run_config: Mapping[str, Any]
    ) -> NodeConfig:
        return NodeConfig.parse(dict(raw))

    def load(
        self,
        node: NodeConfig,
        cfg: ClientConfig,
        run_config: Mapping[str, Any],
        node_id: int,
    ) -> SiteData:
        if node.data_path is None:
            raise SiteDataError(
                "This SuperNode has no training data configured: its node config has "
                "no `data-path`. Start it with `flower-supernode ... --node-config "
                "\"data-path='/path/site.csv'\"`."
            )
        columns = cfg.data  # the site's own encoding wins over the run's
        if node.data_encoding is not None:
            columns = dataclasses.replace(columns, encoding=node.data_encoding)
        return SiteData(
            name=node.name(node_id),
            train=read_labeled_file(node.data_path, columns),
            eval=read_labeled_file(node.eval_data_path, columns)
            if node.eval_data_path is not None
            else None,
        )
