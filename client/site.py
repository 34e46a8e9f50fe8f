"""Where a site's examples come from: its own file (deployment) or, in simulation,
its partition of the embedded default dataset.

Node config keys (``flower-supernode --node-config "..."``):
    data-path       CSV/TSV/JSONL training file of this site (read-only).
    eval-data-path  optional held-out file for ``@app.evaluate``.
    site-name       optional label used in summaries (default: node-<id>).
In simulation Flower sets ``partition-id`` / ``num-partitions`` instead; the site
then trains on its Dirichlet/IID share of the default dataset's train pool and
evaluates on its IID share of the central test split (public data, no privacy cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ClientConfig
from .data import LabeledTexts, SiteDataError, read_labeled_file

__all__ = ["SiteData", "load_site", "site_name"]


@dataclass(frozen=True)
class SiteData:
    name: str
    train: LabeledTexts
    eval: LabeledTexts | None


def site_name(node_config: dict[str, Any], node_id: int) -> str:
    if "site-name" in node_config:
        return str(node_config["site-name"])
    if "partition-id" in node_config:
        return f"site-{int(node_config['partition-id'])}"
    return f"node-{node_id}"


def load_site(
    node_config: dict[str, Any],
    run_config: dict[str, Any],
    cfg: ClientConfig,
    node_id: int,
) -> SiteData:
    name = site_name(node_config, node_id)
    if "data-path" in node_config:
        eval_path = node_config.get("eval-data-path")
        return SiteData(
            name=name,
            train=read_labeled_file(Path(str(node_config["data-path"])), cfg.data),
            eval=read_labeled_file(Path(str(eval_path)), cfg.data)
            if eval_path
            else None,
        )
    if "partition-id" in node_config and "num-partitions" in node_config:
        # Simulation only: the embedded default dataset stands in for site files.
        from fedshield.simulations.scenario import simulated_site

        train, evaluation = simulated_site(
            partition_id=int(node_config["partition-id"]),
            num_partitions=int(node_config["num-partitions"]),
            run_config=run_config,
        )
        return SiteData(name=name, train=train, eval=evaluation)
    raise SiteDataError(
        "This SuperNode has no training data configured: its node config has neither "
        "`data-path` nor simulation partition keys. Start it with "
        "`flower-supernode ... --node-config \"data-path='/path/site.csv'\"`."
    )
