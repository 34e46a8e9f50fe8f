from pathlib import Path

import pytest
from fedshield.client.config import ClientConfig
from fedshield.client.data import SiteDataError
from fedshield.client.site import load_site


def test_deployed_site_reads_its_own_files(tmp_path: Path, default_run_config) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngreat,fresh\nawful,rotten\n")
    held = tmp_path / "eval.jsonl"
    held.write_text('{"text": "fine", "label": 1}\n')
    cfg = ClientConfig.from_run_config(default_run_config)
    site = load_site(
        {"data-path": str(train), "eval-data-path": str(held), "site-name": "clinic-a"},
        default_run_config,
        cfg,
        node_id=7,
    )
    assert site.name == "clinic-a"
    assert site.train.labels == (1, 0) and site.eval is not None
    assert site.eval.labels == (1,)


def test_simulated_sites_partition_the_default_pool(default_run_config) -> None:
    run_config = dict(default_run_config, **{"data.train-examples": 200})
    cfg = ClientConfig.from_run_config(run_config)
    sites = [
        load_site({"partition-id": k, "num-partitions": 3}, run_config, cfg, node_id=k)
        for k in range(3)
    ]
    assert [s.name for s in sites] == ["site-0", "site-1", "site-2"]
    assert sum(len(s.train) for s in sites) == 200
    texts = [t for s in sites for t in s.train.texts]
    assert len(texts) == 200


def test_node_without_data_says_how_to_configure(default_run_config) -> None:
    cfg = ClientConfig.from_run_config(default_run_config)
    with pytest.raises(SiteDataError, match="data-path"):
        load_site({}, default_run_config, cfg, node_id=1)
