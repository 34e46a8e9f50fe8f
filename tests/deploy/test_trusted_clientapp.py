"""A site runs its own installed fedshield ClientApp: whatever the coordinator's
bundle names is never loaded, and a bundle of another app or version is refused."""

from __future__ import annotations

import subprocess

import pytest
from flwr.app import Message, RecordDict
from flwr.clientapp.client_app import ClientApp

from fedshield.deploy import trusted_clientapp
from fedshield.deploy.trusted_clientapp import (
    FAB_ID,
    BundleRefused,
    RefusingClientApp,
    installed_version,
    trusted_loader,
    write_shim,
)
from tests.subprocess_env import subprocess_env


def test_a_fedshield_bundle_loads_the_installed_clientapp_whatever_it_names() -> None:
    from fedshield.simulations.apps import clientapp

    # Flower would pass the bundle's own component and folder; both are ignored
    load = trusted_loader("evil:app", "/tmp/coordinator-bundle", True)
    app = load(FAB_ID, installed_version(), "ab" * 32)
    assert app is clientapp and isinstance(app, ClientApp)


@pytest.mark.parametrize(
    ("fab_id", "version"),
    [("evil/app", None), ("fedshield/fedshield", "0.0.0-other"), ("", None)],
)
@pytest.mark.usefixtures("task_identity")
def test_another_app_or_version_is_refused(fab_id, version) -> None:
    """The bundle is never imported; every message gets the refusal, which
    Flower passes on to the coordinator with its text."""
    app = trusted_loader()(fab_id, version or installed_version(), "cd" * 32)
    assert isinstance(app, RefusingClientApp)
    with pytest.raises(BundleRefused, match="Refused: nothing was run"):
        app(Message(RecordDict(), dst_node_id=1, message_type="train"), None)


def test_main_runs_flowers_clientapp_with_the_trusted_loader(monkeypatch) -> None:
    from flwr.supernode import cli
    from flwr.supernode.runtime import run_clientapp

    seen = []
    monkeypatch.setattr(cli, "flwr_clientapp", lambda: seen.append(1))
    original = run_clientapp.get_load_client_app_fn
    try:
        trusted_clientapp.main()
        assert seen == [1]
        assert run_clientapp.get_load_client_app_fn is trusted_loader
    finally:
        run_clientapp.get_load_client_app_fn = original


def test_the_shim_is_an_executable_flwr_clientapp(tmp_path) -> None:
    shim = write_shim(tmp_path)
    assert shim.name == "flwr-clientapp" and shim.stat().st_mode & 0o111
    done = subprocess.run(
        [str(shim), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "--runtime-api-address" in done.stdout
