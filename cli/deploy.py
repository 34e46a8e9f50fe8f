"""Operator commands for a deployed federation (docs/deployment.md).

Coordinator::

    fedshield federation init /srv/fed --name clinics --host fl.example.org \\
        --site north --site south                # CA, SuperLink cert, site kits
    fedshield superlink start /srv/fed          # TLS, node auth, no runtime installs
    fedshield federation register /srv/fed north   # its key may connect
    fedshield federation revoke /srv/fed north     # it may no longer
    fedshield federation add-site /srv/fed east --public-key east.pub
    fedshield federation sites /srv/fed            # names, keys, node ids, status
    fedshield federation run /srv/fed --run-config "out-dir='/srv/runs/r1' \\
        data.test-path='/srv/data/test.csv'"

Site::

    fedshield site keygen /etc/fedshield          # send supernode_key.pub
    fedshield site check --node-config "data-path='/data/notes.csv' max-epsilon=8"
    fedshield site start --superlink fl.example.org:9443 --ca ca.pem \\
        --key /etc/fedshield/supernode_key --node-config "..."
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedshield.common.config import ConfigError
from fedshield.deploy.federation import (
    DEFAULT_PORT,
    init_federation,
    load_federation,
    register,
    revoke,
    superlink_command,
)
from fedshield.deploy.site import (
    check_site,
    keygen,
    parse_node_config,
    reseal_secrets,
    run_supernode,
    supernode_command,
)
from fedshield.deploy.submit import flwr_run_command, prepare_run, typed_values
from fedshield.simulations.launcher import app_dir, override_pairs
from fedshield.simulations.superlink import venv_script

__all__ = ["federation_app", "site_app", "superlink_app"]

console = Console(soft_wrap=True)
federation_app = typer.Typer(
    help="The coordinator's federation: keys, sites, runs.", no_args_is_help=True
)
superlink_app = typer.Typer(help="The coordinator's SuperLink.", no_args_is_help=True)
site_app = typer.Typer(help="A data-owning site's SuperNode.", no_args_is_help=True)

FedDir = Annotated[Path, typer.Argument(help="The federation folder.")]


def _fail(err: Exception, code: int = 2) -> typer.Exit:
    console.print(f"[red]{escape(str(err))}[/red]")
    return typer.Exit(code)


@federation_app.command("init")
def init(
    root: FedDir,
    host: Annotated[
        list[str],
        typer.Option(
            "--host",
            help="A name or IP the sites reach the SuperLink at (repeat; the first "
            "is the address written into the connection). Loopback is always added.",
        ),
    ],
    name: Annotated[str, typer.Option(help="The federation's name.")] = "fedshield",
    port: Annotated[int, typer.Option(help="The SuperLink's port.")] = DEFAULT_PORT,
    site: Annotated[
        list[str] | None,
        typer.Option(
            "--site",
            help="A site to make a key kit for (repeat). Sites that make their own "
            "key join with `add-site --public-key` instead.",
        ),
    ] = None,
) -> None:
    """Create a federation: its CA, the SuperLink's certificate and connection,
    and a key kit per --site."""
    try:
        fed = init_federation(root, name, host, port, list(site or []))
    except ConfigError as err:
        raise _fail(err) from err
    console.print(f"Federation {fed.name!r} in {fed.root}: SuperLink at {fed.address}")
    console.print(f"  CA: {fed.ca_cert} (keep ca/ca.key offline from now on)")
    for n, s in fed.sites.items():
        console.print(f"  site {n}: kit {s.kit} (send it to the site, privately)")
    console.print(f"Next: fedshield superlink start {fed.root}")


@federation_app.command("add-site")
def add_site(
    root: FedDir,
    site: Annotated[str, typer.Argument(help="The new site's name.")],
    public_key: Annotated[
        Path | None,
        typer.Option(help="The site's supernode_key.pub (else a kit is made here)."),
    ] = None,
) -> None:
    """Add a site: its own public key, or a key kit made here."""
    try:
        fed = load_federation(root)
        made = fed.add_site(site, public_key)
    except ConfigError as err:
        raise _fail(err) from err
    where = f"kit {made.kit}" if made.kit else "its own key"
    console.print(
        f"Site {site} added ({where}). Register it: fedshield federation "
        f"register {fed.root} {site}"
    )


@federation_app.command("register")
def register_site(
    root: FedDir, site: Annotated[str, typer.Argument(help="The site's name.")]
) -> None:
    """Register a site's key with the running SuperLink: its SuperNode may connect."""
    try:
        fed = load_federation(root)
        node_id = register(fed, site, flwr=str(venv_script("flwr")))
    except ConfigError as err:
        raise _fail(err) from err
    console.print(f"Site {site} registered: node {node_id}.")


@federation_app.command("revoke")
def revoke_site(
    root: FedDir, site: Annotated[str, typer.Argument(help="The site's name.")]
) -> None:
    """Unregister a site's key: its SuperNode is disconnected and refused."""
    try:
        fed = load_federation(root)
        node_id = revoke(fed, site, flwr=str(venv_script("flwr")))
    except ConfigError as err:
        raise _fail(err) from err
    console.print(f"Site {site} revoked (was node {node_id}).")


@federation_app.command("sites")
def sites(root: FedDir) -> None:
    """The federation's sites: key, node id."""
    try:
        fed = load_federation(root)
    except ConfigError as err:
        raise _fail(err) from err
    for n, s in sorted(fed.sites.items()):
        state = f"node {s.node_id}" if s.node_id is not None else "not registered"
        console.print(f"{n}: {state}; key {s.public_key[:40]}...")


@federation_app.command("run")
def run(
    root: FedDir,
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--run-config",
            help="Run config overrides (key=value; strings in single quotes).",
        ),
    ] = None,
) -> None:
    """Submit a run to the federation's SuperLink and follow it; exits non-zero
    unless the run completes (the summary says ``completed``)."""
    from .main import follow_run  # cli.main imports this module

    try:
        fed = load_federation(root)
        prepared = prepare_run(
            override_pairs(list(run_config or [])), signing_key=fed.checkpoint_key
        )
        command, env = flwr_run_command(
            fed, prepared, flwr=str(venv_script("flwr")), app=app_dir()
        )
    except ConfigError as err:
        raise _fail(err) from err
    console.print(f"Central test data: {prepared.test_records} records")
    console.print(f"Run output: {prepared.out} (on the SuperLink's host)")
    raise typer.Exit(follow_run(command, env, app_dir(), prepared.out))


@superlink_app.command("start")
def start_superlink(
    root: FedDir,
    bind: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")
    ] = "0.0.0.0",
) -> None:
    """Run the SuperLink in the foreground (TLS, SuperNode authentication, no
    runtime dependency installation, state in superlink/state.db)."""
    try:
        fed = load_federation(root)
        cmd = superlink_command(
            fed, bind=bind, executable=str(venv_script("flower-superlink"))
        )
    except ConfigError as err:
        raise _fail(err) from err
    console.print(f"$ {' '.join(cmd)}")
    env = dict(os.environ)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    os.execve(cmd[0], cmd, env)


NodeConfigOpt = Annotated[
    str,
    typer.Option(
        "--node-config",
        help="The site's node config (key=value; strings in quotes), as "
        "flower-supernode takes it.",
    ),
]
RunConfigOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--run-config",
        help="The run's data.*/model.* settings, if not the defaults (the check "
        "reads the data with them).",
    ),
]


@site_app.command("keygen")
def site_keygen(
    folder: Annotated[Path, typer.Argument(help="Where to write the key pair.")],
) -> None:
    """Make the site's SuperNode key pair (supernode_key stays here, 0600;
    send supernode_key.pub to the coordinator)."""
    try:
        key = keygen(folder)
    except ConfigError as err:
        raise _fail(err) from err
    console.print(f"Private key: {key.private_path} (never leaves this machine)")
    console.print(f"Public key:  {key.public_path} (send it to the coordinator)")


def _checked(node_config: str, run_config: list[str] | None) -> None:
    raw = parse_node_config(node_config)
    result = check_site(raw, typed_values(override_pairs(list(run_config or []))))
    extra = (
        f", eval {result.eval_records} records"
        if result.eval_records is not None
        else ""
    )
    console.print(
        f"Site {result.site}: {result.records} training records{extra}; state dir "
        f"{result.state_dir} (writable); policy: {result.node.policy}"
    )
    secrets = ", ".join(f"{k} {v}" for k, v in result.secrets.items())
    console.print(f"Secrets at rest: {secrets}")


@site_app.command("check")
def site_check(node_config: NodeConfigOpt, run_config: RunConfigOpt = None) -> None:
    """Check a node config before starting: the data parses, the state dir is
    writable, the policy is valid."""
    try:
        _checked(node_config, run_config)
    except ConfigError as err:
        raise _fail(err) from err


StateDirArg = Annotated[
    Path, typer.Argument(help="The site's state dir (node config `state-dir`).")
]


def _resealed(state_dir: Path, *, to_sealed: bool) -> None:
    try:
        done = reseal_secrets(state_dir.expanduser(), to_sealed=to_sealed)
    except ConfigError as err:
        raise _fail(err) from err
    for name, what in done.items():
        console.print(escape(f"{state_dir / name}: {what}"))


@site_app.command("seal-secrets")
def site_seal_secrets(state_dir: StateDirArg) -> None:
    """Seal the site's ledger and pseudonym keys with the passphrase in
    FEDSHIELD_SECRETS_PASSPHRASE (the keys stay the same)."""
    _resealed(state_dir, to_sealed=True)


@site_app.command("unseal-secrets")
def site_unseal_secrets(state_dir: StateDirArg) -> None:
    """Store the site's sealed keys in clear again (mode 0600), opened with the
    passphrase in FEDSHIELD_SECRETS_PASSPHRASE; to change the passphrase, unseal
    with the old one and seal with the new."""
    _resealed(state_dir, to_sealed=False)


@site_app.command("start")
def site_start(
    superlink: Annotated[str, typer.Option(help="The SuperLink's host:port.")],
    ca: Annotated[Path, typer.Option(help="The federation's ca.pem.")],
    key: Annotated[Path, typer.Option(help="The site's supernode_key.")],
    node_config: NodeConfigOpt,
    run_config: RunConfigOpt = None,
    port: Annotated[
        int, typer.Option(help="The SuperNode's local port (127.0.0.1).")
    ] = 9094,
    warm: Annotated[
        bool,
        typer.Option(
            help="Fork each message's ClientApp from a process that imported "
            "fedshield once (--no-warm: a fresh process per message, 5-10 s more "
            "each)."
        ),
    ] = True,
) -> None:
    """Check the node config, then run the SuperNode in the foreground with TLS
    and the site's key."""
    try:
        _checked(node_config, run_config)
        cmd = supernode_command(
            superlink=superlink,
            root_certificates=ca,
            key=key,
            node_config=node_config,
            port=port,
            executable=str(venv_script("flower-supernode")),
        )
        code = run_supernode(cmd, key=key, superlink=superlink, warm=warm)
    except ConfigError as err:
        raise _fail(err) from err
    raise typer.Exit(code)
