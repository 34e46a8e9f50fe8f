from pathlib import Path

import pytest

from client.accountant_store import AccountantStore
from client.config import ClientConfig
from client.data import SiteDataError
from client.site import load_site


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


def test_accountant_store_round_trip_under_state_dir(tmp_path: Path) -> None:
    store = AccountantStore.for_site(
        node_config={"state-dir": str(tmp_path)},
        train_config={"run-key": "abc123"},
        site="clinic-a",
    )
    assert store.load() is None
    store.save('{"mechanism": "rdp", "history": [[1.0, 0.1, 5]]}')
    assert store.path == tmp_path / "accountants" / "abc123.json"
    assert '"history"' in (store.load() or "")


def test_accountant_store_rejects_unsafe_run_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a safe file name"):
        AccountantStore(tmp_path, "../../etc/passwd")
    with pytest.raises(ValueError, match="not a safe file name"):
        AccountantStore(tmp_path, "")


def test_corrupt_accountant_file_is_kept_and_reported(tmp_path: Path) -> None:
    store = AccountantStore(tmp_path, "k")
    store.path.parent.mkdir(parents=True)
    store.path.write_text("{broken")
    with pytest.raises(ValueError, match="corrupt"):
        store.load()
    assert store.path.read_text() == "{broken"
