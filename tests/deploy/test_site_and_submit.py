"""Checks before anything starts: a site's node config (data, state dir, policy)
and a deployed run's config (out-dir, central test data) fail on the machine
that owns them, with what was expected, what was found and what to do."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from fedshield.common.config import ConfigError
from fedshield.deploy.federation import Federation
from fedshield.deploy.pki import make_site_key
from fedshield.deploy.site import (
    check_site,
    parse_node_config,
    supernode_command,
    supernode_path,
)
from fedshield.deploy.submit import flwr_run_command, prepare_run


def _csv(path, rows=("good film,1", "bad film,0")):
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def test_a_good_node_config_is_checked_and_reports_what_it_read(tmp_path) -> None:
    data = _csv(tmp_path / "train.csv")
    raw = parse_node_config(
        f"data-path='{data}' site-name='north' state-dir='{tmp_path / 'state'}' "
        "max-epsilon=8"
    )
    result = check_site(raw)
    assert result.records == 2 and result.site == "north"
    assert result.state_dir == tmp_path / "state" and result.state_dir.is_dir()
    assert result.node.max_epsilon == 8


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("max-epsilon=8", "Expected `data-path`"),
        ("data-path='{missing}'", "missing.csv"),
        ("data-path='{data}' max-epsilom=8", "Did you mean `max-epsilon`"),
        ("data-path='{data}' partition-id=0 num-partitions=2", "simulation"),
        ("data-path='{data}' require-secagg=maybe", "require-secagg"),
        ("data-path='{data} max-epsilon=8", "key=value"),
    ],
)
def test_a_bad_node_config_is_refused_before_start(tmp_path, config, message) -> None:
    data = _csv(tmp_path / "train.csv")
    text = config.format(data=data, missing=tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match=message):
        check_site(parse_node_config(text))


def test_the_data_is_read_with_the_runs_columns(tmp_path) -> None:
    data = tmp_path / "notes.csv"
    data.write_text("note,label\nfine,1\n")
    raw = parse_node_config(f"data-path='{data}' state-dir='{tmp_path / 's'}'")
    with pytest.raises(ConfigError, match="text"):
        check_site(raw)
    assert check_site(raw, {"data.text-column": "note"}).records == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_state_dir_is_refused(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    data = _csv(tmp_path / "train.csv")
    raw = parse_node_config(f"data-path='{data}' state-dir='{locked / 'state'}'")
    with pytest.raises(ConfigError, match="writable"):
        check_site(raw)


def test_an_unwritable_state_dir_is_refused_even_as_root(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    data = _csv(tmp_path / "train.csv")
    raw = parse_node_config(f"data-path='{data}' state-dir='{blocker / 'state'}'")
    with pytest.raises(ConfigError, match="writable"):
        check_site(raw)


def test_the_supernode_runs_with_tls_and_the_sites_key(tmp_path) -> None:
    key = make_site_key(tmp_path / "k")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cmd = supernode_command(
        superlink="fl.example.org:9443",
        root_certificates=ca,
        key=key.private_path,
        node_config="data-path='/d.csv'",
    )
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--root-certificates") + 1] == str(ca)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key.private_path)
    assert "--allow-runtime-dependency-installation" not in cmd
    key.private_path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        supernode_command(
            superlink="x:1", root_certificates=ca, key=key.private_path, node_config=""
        )
    with pytest.raises(ConfigError, match="CA certificate"):
        supernode_command(
            superlink="x:1",
            root_certificates=tmp_path / "none.pem",
            key=key.private_path,
            node_config="",
        )
    assert stat.S_IMODE(key.public_path.stat().st_mode) == 0o644


def test_the_supernode_finds_flowers_commands_without_an_activated_venv(
    tmp_path, monkeypatch
) -> None:
    # `.venv/bin/fedshield site start` with the venv never activated: the
    # SuperNode starts `flower-superexec` by name, and must find this
    # environment's; the trusted `flwr-clientapp` shim still comes first
    shims = tmp_path / "shims"
    path = supernode_path(shims, "/usr/bin")
    parts = path.split(os.pathsep)
    assert parts[0] == str(shims) and parts[-1] == "/usr/bin"
    assert str(Path(sys.executable).parent) in parts
    # an environment without Flower is refused before anything starts
    bare = tmp_path / "bare" / "bin"
    bare.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bare / "python"))
    with pytest.raises(ConfigError, match="flower-superexec"):
        supernode_path(shims, str(tmp_path / "nothing"))


def test_a_deployed_run_needs_central_test_data(tmp_path) -> None:
    with pytest.raises(ConfigError, match="central test data"):
        prepare_run({"out-dir": f"'{tmp_path / 'r'}'"})
    with pytest.raises(ConfigError, match="central test data"):  # not instead
        prepare_run({"out-dir": f"'{tmp_path / 'r'}'", "fraction-evaluate": "0.5"})


def test_out_dir_and_test_path_are_made_absolute_and_checked(tmp_path) -> None:
    _csv(tmp_path / "test.csv")
    prepared = prepare_run(
        {"out-dir": "'runs/r1'", "data.test-path": "'test.csv'"}, cwd=tmp_path
    )
    assert prepared.out == tmp_path / "runs/r1"
    assert prepared.overrides["out-dir"] == f"'{tmp_path / 'runs/r1'}'"
    assert prepared.overrides["data.test-path"] == f"'{tmp_path / 'test.csv'}'"
    assert prepared.test_records == 2
    assert "checkpoint.signing-key" not in prepared.overrides
    fed = Federation(root=tmp_path, name="clinics", hosts=["fl.example.org"], port=9443)
    # `federation run` signs the checkpoints with the federation's key, unless
    # the run names its own (made absolute like the other paths)
    base = {"out-dir": "'runs/r2'", "data.test-path": "'test.csv'"}
    signed = prepare_run(base, cwd=tmp_path, signing_key=fed.checkpoint_key)
    assert signed.overrides["checkpoint.signing-key"] == f"'{fed.checkpoint_key}'"
    own = prepare_run(
        {**base, "checkpoint.signing-key": "'keys/k.pem'"},
        cwd=tmp_path,
        signing_key=fed.checkpoint_key,
    )
    assert own.overrides["checkpoint.signing-key"] == f"'{tmp_path / 'keys/k.pem'}'"
    cmd, env = flwr_run_command(fed, prepared, flwr="flwr", app=tmp_path)
    assert cmd[:5] == ["flwr", "run", str(tmp_path), "clinics", "--stream"]
    assert env["FLWR_HOME"] == str(tmp_path / "flwr-home")


def test_the_root_guard_needs_the_coordinators_own_file_made_absolute(
    tmp_path,
) -> None:
    _csv(tmp_path / "test.csv")
    _csv(tmp_path / "root.csv")
    base = {"out-dir": "'runs/r1'", "data.test-path": "'test.csv'"}
    guard = {**base, "strategy.root-guard": "true"}
    with pytest.raises(ConfigError, match="coordinator's own root data"):
        prepare_run(guard, cwd=tmp_path)
    with pytest.raises(ConfigError, match="strategy.root-data-path"):
        prepare_run({**guard, "strategy.root-data-path": "'nope.csv'"}, cwd=tmp_path)
    ok = prepare_run({**guard, "strategy.root-data-path": "'root.csv'"}, cwd=tmp_path)
    assert ok.overrides["strategy.root-data-path"] == f"'{tmp_path / 'root.csv'}'"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.test-path": "'/t.csv'"}, "Expected `out-dir`"),
        ({"out-dir": "'/r'", "data.test-path": "'/nowhere/test.csv'"}, "test.csv"),
        ({"out-dir": "'/r'", "dp.target-epsilonn": "8"}, "dp.target-epsilon"),
        ({"out-dir": "'/r'", "num-server-rounds": "0"}, "num-server-rounds"),
        ({"out-dir": "/r"}, "TOML value"),
    ],
)
def test_a_bad_run_config_is_refused_before_submission(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        prepare_run(overrides)


def test_a_folder_holding_a_run_is_never_overwritten(tmp_path) -> None:
    _csv(tmp_path / "test.csv")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text("{}")
    runs = {"out-dir": f"'{tmp_path / 'r'}'", "data.test-path": "'test.csv'"}
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run(runs, cwd=tmp_path)
    with pytest.raises(ConfigError, match="no checkpoint.pt"):
        prepare_run({**runs, "resume": "true"}, cwd=tmp_path)


def test_run_config_values_are_read_as_flower_reads_them() -> None:
    """site check and federation run type --run-config values as TOML, as flwr
    does: a number stays a number, a quoted string a string."""
    from fedshield.deploy.submit import typed_values

    got = typed_values({"model.num-labels": "3", "data.text-column": "'note'"})
    assert got == {"model.num-labels": 3, "data.text-column": "note"}
    with pytest.raises(ConfigError, match="`data.text-column`"):
        typed_values({"data.text-column": "note"})


def test_the_connection_names_the_federation_and_its_ca(tmp_path) -> None:
    import tomllib

    from fedshield.deploy.federation import init_federation

    fed = init_federation(tmp_path / "f", "clinics", ["fl.example.org"], 9443, [])
    config = tomllib.loads((fed.flwr_home / "config.toml").read_text())
    assert config["superlink"]["default"] == "clinics"
    entry = config["superlink"]["clinics"]
    assert entry == {
        "address": "fl.example.org:9443",
        "root-certificates": str(fed.ca_cert),
    }
