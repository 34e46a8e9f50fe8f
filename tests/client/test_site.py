from pathlib import Path

import pytest

from fedshield.client.config import ClientConfig
from fedshield.client.data import SiteDataError
from fedshield.client.node import BudgetScope, NodeConfig
from fedshield.client.site import SiteFiles
from fedshield.common.config import ConfigError


def test_deployed_site_reads_its_own_files(tmp_path: Path, default_run_config) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngreat,fresh\nawful,rotten\n")
    held = tmp_path / "eval.jsonl"
    held.write_text('{"text": "fine", "label": 1}\n')
    cfg = ClientConfig.from_run_config(default_run_config)
    raw = {
        "data-path": str(train),
        "eval-data-path": str(held),
        "site-name": "clinic-a",
    }
    files = SiteFiles()
    node = files.node_config(raw, default_run_config)
    site = files.load(node, cfg, default_run_config, 7)
    assert site.name == "clinic-a"
    assert site.train.labels == (1, 0) and site.eval is not None
    assert site.eval.labels == (1,)


def test_node_without_data_says_how_to_configure(default_run_config) -> None:
    cfg = ClientConfig.from_run_config(default_run_config)
    with pytest.raises(SiteDataError, match="data-path"):
        SiteFiles().load(NodeConfig.parse({}), cfg, default_run_config, 1)


def test_a_misspelt_node_config_key_is_refused_with_a_suggestion() -> None:
    # a typo must never run the site without its budget
    with pytest.raises(ConfigError, match="Did you mean `max-epsilon`"):
        NodeConfig.parse({"data-path": "a.csv", "max-epsilom": 8})


def test_node_config_is_parsed_once_into_typed_fields() -> None:
    node = NodeConfig.parse(
        {
            "data-path": "~/a.csv",
            "max-epsilon": "8",
            "delta": 1e-6,
            "budget-scope": "site",
        }
    )
    assert node.data_path == Path("~/a.csv").expanduser()
    assert node.max_epsilon == 8.0 and node.delta == 1e-6
    assert node.budget_scope is BudgetScope.SITE and not node.simulated
    assert node.name(4) == "node-4"
    with pytest.raises(ConfigError, match="plain non-negative decimal"):
        NodeConfig.parse({"max-epsilon": "eight"})
    with pytest.raises(ConfigError, match="both"):
        NodeConfig.parse({"partition-id": 0})


@pytest.mark.parametrize("value", ["8_0", "\u0668", "1e-400", "-0", "inf", "nan", True])
def test_a_budget_that_float_would_bend_is_refused(value: object) -> None:
    # float() reads "8_0" as 80, Arabic-Indic eight as 8 and 1e-400 as 0 (no budget)
    with pytest.raises(ConfigError, match="max-epsilon"):
        NodeConfig.parse({"max-epsilon": value})


@pytest.mark.parametrize("value", [True, 1.9, "0.5", "-1"])
def test_a_partition_id_must_be_a_plain_integer(value: object) -> None:
    with pytest.raises(ConfigError, match="partition-id"):
        NodeConfig.parse({"partition-id": value, "num-partitions": 3})
