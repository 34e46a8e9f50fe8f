"""``flwr run`` is pointed at the simulation's own SuperLink by connection name, in
that SuperLink's FLWR_HOME, with the run config and the number of sites; Ctrl-C's
``flwr stop`` goes to the same SuperLink."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

from fedshield.simulations import launcher
from fedshield.simulations.superlink import PrivateSuperLink


def _superlink(tmp_path: Path) -> PrivateSuperLink:
    return PrivateSuperLink(
        address="127.0.0.1:40001",
        flwr_home=tmp_path / "home",
        log_path=tmp_path / "superlink.log",
        pid=0,
        env={"FLWR_HOME": str(tmp_path / "home"), "PATH": "/usr/bin"},
    )


def test_flwr_run_targets_the_private_superlink_with_config_and_sites(
    tmp_path: Path,
) -> None:
    link = _superlink(tmp_path)
    launch = launcher.flwr_command(
        superlink=link, overrides=["a=1 b=2", "out-dir='/x'"], num_sites=3
    )
    flwr, *args = launch.command
    assert Path(flwr).name == "flwr"
    assert args == [
        "run",
        str(launcher.app_dir()),
        "fedshield",
        "--stream",
        "--run-config",
        "a=1 b=2 out-dir='/x'",
        "--federation-config",
        "num-supernodes=3",
    ]
    assert launch.env["FLWR_HOME"] == str(tmp_path / "home")
    assert launch.connection == link.connection == "fedshield"
    assert launch.cwd == launcher.app_dir()


def test_overrides_of_one_table_in_separate_items_all_reach_the_run(
    tmp_path: Path,
) -> None:
    """flwr merges separate --run-config items table by table: the later
    ``audit.canary-kind`` item would drop the earlier ``audit.canaries``."""
    from flwr.common.config import parse_config_args

    launch = launcher.flwr_command(
        superlink=_superlink(tmp_path),
        overrides=["audit.canaries=30 eval.prompts='a b|c'", "audit.canary-kind='x'"],
        num_sites=2,
    )
    args = launch.command
    items = [args[i + 1] for i, a in enumerate(args) if a == "--run-config"]
    parsed = parse_config_args(items)
    assert parsed["audit.canaries"] == 30 and parsed["audit.canary-kind"] == "x"
    assert parsed["eval.prompts"] == "a b|c"


def test_a_key_given_twice_keeps_its_last_value(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    launch = launcher.flwr_command(
        superlink=_superlink(tmp_path),
        overrides=[
            'num-server-rounds=2 eval.prompts="It\'s a|b c"',
            "num-server-rounds=5",
        ],
        num_sites=2,
    )
    args = launch.command
    items = [args[i + 1] for i, a in enumerate(args) if a == "--run-config"]
    parsed = parse_config_args(items)
    assert parsed["num-server-rounds"] == 5 and parsed["eval.prompts"] == "It's a|b c"


def test_started_run_id_is_the_last_one_flwr_printed(tmp_path: Path) -> None:
    log = tmp_path / "flwr.log"
    assert launcher.started_run_id(log) is None  # no log yet
    log.write_text("Successfully started run 12\n...\nSuccessfully started run 345\n")
    assert launcher.started_run_id(log) == 345


def test_stop_run_asks_the_same_superlink_and_gives_up_on_a_hang(
    tmp_path: Path, monkeypatch
) -> None:
    launch = launcher.flwr_command(
        superlink=_superlink(tmp_path), overrides=[], num_sites=2
    )
    calls: list[tuple[list[str], dict[str, str]]] = []

    def hanging_run(argv: list[str], **kwargs) -> None:
        calls.append((argv, kwargs["env"]))
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    monkeypatch.setattr(launcher.subprocess, "run", hanging_run)
    launcher.stop_run(launch, 7)  # the hang is swallowed: teardown follows anyway
    ((argv, env),) = calls
    assert argv[1:] == ["stop", "7", "fedshield"]
    assert env["FLWR_HOME"] == str(tmp_path / "home")


def test_the_sites_resources_reach_flowers_simulation_config(tmp_path: Path) -> None:
    """What Ray reserves per site (--client-cpus/--client-gpus), as flwr reads it."""
    from flwr.cli.run.run import _parse_federation_config_overrides

    launch = launcher.flwr_command(
        superlink=_superlink(tmp_path),
        overrides=[],
        num_sites=4,
        client_cpus=1,
        client_gpus=0.25,
    )
    federation = launch.command[launch.command.index("--federation-config") + 1]
    no_options = SimpleNamespace(options=None)  # a connection without `options.`
    config = _parse_federation_config_overrides([federation], no_options)
    assert config.num_supernodes == 4
    assert config.client_resources_num_cpus == 1
    assert config.client_resources_num_gpus == 0.25
