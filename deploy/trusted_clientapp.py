"""The site runs its own installed fedshield ClientApp, never the coordinator's code.

Flower's ``flwr-clientapp`` (the process that runs a ClientApp for each message)
installs the app bundle (FAB) that ``flwr run`` shipped from the coordinator,
puts its folder on the import path, and loads whatever component its
``pyproject.toml`` names. The code that enforces a site's DP, budget, ledger,
scrubbing and policy would then come from the party those guarantees protect
against. Flower 1.41's ``--trusted-entities`` cannot help a private federation:
it accepts only bundles signed through the Flower Hub, and a locally built
bundle can never carry such a signature.

``fedshield site start`` therefore puts this entry point first on the
SuperNode's ``PATH`` under the name ``flwr-clientapp`` (Flower's SuperExec
launches that name). It is Flower's own ``flwr-clientapp`` with one change: the
loader ignores the bundle's components and its files, and loads
``fedshield.simulations.apps:clientapp`` from the site's installed package, after
checking that the run is a fedshield run of the installed version. A bundle that
names another app, or another fedshield version, is refused: the site answers
every message with the refusal (the coordinator sees it as the site's error,
with the reason) and runs nothing else.
The bundle's files are still unpacked by Flower, but nothing in them is imported.

What the coordinator still controls is the run config, which each site's policy
checks as untrusted input (:mod:`fedshield.client.policy`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.client_app import ClientApp, LoadClientAppError

__all__ = [
    "APP_REF",
    "FAB_ID",
    "BundleRefused",
    "RefusingClientApp",
    "installed_version",
    "main",
    "trusted_loader",
    "write_shim",
]

APP_REF = "fedshield.simulations.apps:clientapp"
FAB_ID = "fedshield/fedshield"  # "<publisher>/<name>" of fedshield's own bundle


def installed_version() -> str:
    return importlib.metadata.version("fedshield")


def trusted_loader(
    default_app_ref: str = "", app_path: str | None = None, multi_app: bool = True
) -> Callable[[str, str, str], ClientApp]:
    """A drop-in for Flower's ``get_load_client_app_fn``: its loader returns the
    installed fedshield ClientApp for a fedshield bundle of the installed version
    and refuses any other bundle. The arguments Flower passes are ignored."""
    del default_app_ref, app_path, multi_app
    version = installed_version()

    def load(fab_id: str, fab_version: str, fab_hash: str) -> ClientApp:
        if fab_id != FAB_ID or fab_version != version:
            return RefusingClientApp(
                f"This site runs only its own installed fedshield {version} "
                f"ClientApp; the coordinator's bundle is {fab_id!r} version "
                f"{fab_version!r} (hash {fab_hash[:12]}). Refused: nothing was run. "
                "Coordinator: submit fedshield's own app, of the version the "
                "sites installed (`fedshield federation run`)."
            )
        module_name, _, attribute = APP_REF.partition(":")
        app = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(app, ClientApp):
            raise LoadClientAppError(f"{APP_REF} is not a ClientApp.")
        return app

    return load


class BundleRefused(RuntimeError):
    """The coordinator's bundle is not one this site runs."""


class RefusingClientApp(ClientApp):
    """Stands in for a refused bundle's ClientApp: it answers every message with
    the refusal. Raising from the loader instead would reach the coordinator only
    as Flower's generic "exception ... when attempting to load `ClientApp`";
    an exception raised by the app reaches it with its text, so the coordinator
    learns why. Nothing of the bundle is imported either way."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def __call__(self, message: Message, context: Context) -> Message:
        sys.stderr.write(f"fedshield: {self.reason}\n")
        raise BundleRefused(self.reason)


def main() -> None:  # pragma: no cover - the process Flower's SuperExec launches
    """``flwr-clientapp`` with fedshield's trusted loader."""
    from flwr.supernode import cli
    from flwr.supernode.runtime import run_clientapp

    run_clientapp.get_load_client_app_fn = trusted_loader  # type: ignore[assignment]
    cli.flwr_clientapp()


def write_shim(folder: Path, warm_socket: Path | None = None) -> Path:
    """``folder/flwr-clientapp``: runs :func:`main` with this Python, or, with
    ``warm_socket``, has the site's warm ClientApp server fork it
    (:mod:`.warm_clientapp`; the cold path when that server cannot be reached).
    Put ``folder`` first on the SuperNode's PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "flwr-clientapp"
    if warm_socket is None:
        module = "fedshield.deploy.trusted_clientapp"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
    else:
        from .warm_clientapp import write_client

        client = write_client(folder, warm_socket)
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I "{client}" "$@"\n')
    shim.chmod(0o755)
    return shim


if __name__ == "__main__":  # pragma: no cover
    main()
