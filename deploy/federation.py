"""The coordinator's federation folder: its keys, its SuperLink, its sites.

``fedshield federation init DIR --host superlink.example.org --site a --site b``
makes, in DIR::

    federation.json          name, address, hosts, sites (public key, node id)
    ca/ca.pem, ca/ca.key     the TLS CA (ca.key 0600: keep it offline afterwards)
    superlink/server.pem     the SuperLink's certificate (SANs: --host + loopback)
    superlink/server.key     0600
    superlink/state.db       the SuperLink's database (registered nodes, runs)
    flwr-home/config.toml    the `flwr` connection [superlink.<name>] (address,
                             root-certificates): FLWR_HOME for flwr run/supernode
    sites/<site>/            a site kit, for sites that do not make their own key:
                             supernode_key (0600), supernode_key.pub, ca.pem

A site that makes its own key (``fedshield site keygen``) sends only
``supernode_key.pub``; ``fedshield federation add-site DIR NAME --public-key FILE``
takes it. Registering (``register``) and revoking (``revoke``) go through
Flower's Control API (``flwr supernode register/unregister``), with this folder's
connection.

The SuperLink (:func:`superlink_command`) runs with TLS, SuperNode authentication
on (only registered keys connect), runtime dependency installation off (the
apps run in the installed environment) and its state in ``superlink/state.db``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedshield.common.config import ConfigError
from fedshield.common.storage import atomic_write_json
from fedshield.simulations.superlink import answers_health, write_connection

from .pki import (
    make_ca,
    make_server_certificate,
    make_site_key,
    read_public_key,
)

__all__ = [
    "DEFAULT_PORT",
    "Federation",
    "Site",
    "flwr_env",
    "init_federation",
    "load_federation",
    "register",
    "revoke",
    "wait_for_superlink",
]

DEFAULT_PORT = 9443
MANIFEST = "federation.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"Expected a {kind} name of letters, digits, '.', '_' or '-' (at most "
            f"64, starting with a letter or digit); found {name!r}."
        )
    return name


@dataclass
class Site:
    public_key: str  # the OpenSSH line registered with the SuperLink
    node_id: int | None = None  # set once registered
    kit: str | None = None  # the kit folder, when the coordinator made the key

    def to_json(self) -> dict[str, Any]:
        return {"public_key": self.public_key, "node_id": self.node_id, "kit": self.kit}


@dataclass
class Federation:
    root: Path
    name: str
    hosts: list[str]
    port: int
    sites: dict[str, Site] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.hosts[0]}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def superlink_dir(self) -> Path:
        return self.root / "superlink"

    @property
    def database(self) -> Path:
        return self.superlink_dir / "state.db"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def checkpoint_key(self) -> Path:
        """The key that signs the coordinator's checkpoints (made by the first
        run; the run config's ``checkpoint.signing-key``)."""
        return self.root / "coordinator" / "checkpoint_key.pem"

    def save(self) -> None:
        atomic_write_json(
            self.root / MANIFEST,
            {
                "name": self.name,
                "hosts": self.hosts,
                "port": self.port,
                "sites": {n: s.to_json() for n, s in self.sites.items()},
            },
        )

    def site(self, name: str) -> Site:
        if name not in self.sites:
            known = ", ".join(sorted(self.sites)) or "none"
            raise ConfigError(
                f"Expected a site of federation {self.name!r} named {name!r}; the "
                f"sites are: {known}. Add it with `fedshield federation add-site "
                f"{self.root} {name}`."
            )
        return self.sites[name]

    def add_site(self, name: str, public_key: Path | None = None) -> Site:
        """A new site: its own public key (``public_key``), or a kit made here."""
        _check_name("site", name)
        if name in self.sites:
            raise ConfigError(
                f"Expected a new site name; {name!r} is already in federation "
                f"{self.name!r}. Revoke and remove it first to change its key."
            )
        if public_key is not None:
            line = read_public_key(public_key)
            kit = None
        else:
            folder = self.root / "sites" / name
            key = make_site_key(folder)
            shutil.copyfile(self.ca_cert, folder / "ca.pem")
            line, kit = key.public_line, str(folder)
        if any(s.public_key == line for s in self.sites.values()):
            raise ConfigError(
                f"Expected each site to have its own key; the key given for {name!r} "
                "is already another site's."
            )
        site = Site(public_key=line, kit=kit)
        self.sites[name] = site
        self.save()
        return site


def _write_connection(fed: Federation) -> Path:
    """``flwr-home/config.toml``: the one connection ``[superlink.<name>]``."""
    return write_connection(
        fed.flwr_home, fed.address, name=fed.name, root_certificates=fed.ca_cert
    )


def init_federation(
    root: Path, name: str, hosts: list[str], port: int, sites: list[str]
) -> Federation:
    """A new federation folder (refused where one exists)."""
    _check_name("federation", name)
    if (root / MANIFEST).exists():
        raise ConfigError(
            f"Expected no federation at {root}; found {root / MANIFEST}. fedshield "
            "never overwrites a federation's keys: choose another folder, or use "
            "`fedshield federation add-site` to add sites to this one."
        )
    if not 1 <= port <= 65535:
        raise ConfigError(f"Expected a TCP port in 1..65535; found {port}.")
    if len(set(sites)) != len(sites):
        raise ConfigError(f"Expected distinct site names; found {sites}.")
    root.mkdir(parents=True, exist_ok=True)
    ca = make_ca(root / "ca", name)
    make_server_certificate(ca, root / "superlink", hosts)
    fed = Federation(root=root.resolve(), name=name, hosts=list(hosts), port=port)
    fed.save()
    _write_connection(fed)
    for site in sites:
        fed.add_site(site)
    return fed


def load_federation(root: Path) -> Federation:
    path = root / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"Expected a federation folder at {root} (with {MANIFEST}); found "
            "none. Create one with `fedshield federation init`."
        )
    raw = json.loads(path.read_text())
    return Federation(
        root=root.resolve(),
        name=raw["name"],
        hosts=list(raw["hosts"]),
        port=int(raw["port"]),
        sites={n: Site(**s) for n, s in raw.get("sites", {}).items()},
    )


def flwr_env(fed: Federation) -> dict[str, str]:
    """The environment for ``flwr`` commands on this federation's connection."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(fed.flwr_home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    return env


def superlink_command(
    fed: Federation, *, bind: str = "0.0.0.0", executable: str = "flower-superlink"
) -> list[str]:
    """``flower-superlink`` with TLS, SuperNode auth, no runtime installs, and its
    state in the federation's database."""
    folder = fed.superlink_dir
    return [
        executable,
        "--ssl-ca-certfile",
        str(fed.ca_cert),
        "--ssl-certfile",
        str(folder / "server.pem"),
        "--ssl-keyfile",
        str(folder / "server.key"),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--isolation",
        "subprocess",
        "--database",
        str(fed.database),
        "--host",
        bind,
        "--port",
        str(fed.port),
    ]


def _flwr(
    fed: Federation, args: list[str], *, flwr: str = "flwr", timeout: float = 60.0
) -> dict[str, Any]:
    """A ``flwr`` CLI command on this federation's connection, its JSON output."""
    cmd = [flwr, *args, fed.name, "--format", "json"]
    try:
        proc = subprocess.run(
            cmd, env=flwr_env(fed), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        raise ConfigError(
            f"`{' '.join(cmd)}` got no answer from the SuperLink at {fed.address} "
            f"within {timeout:.0f} s. Is it running (`fedshield superlink start "
            f"{fed.root}`), and does {fed.address} reach it?"
        ) from err
    text = proc.stdout.strip()
    try:
        out: dict[str, Any] = json.loads(text[text.index("{") :]) if text else {}
    except ValueError:
        out = {}
    if proc.returncode != 0 or not out.get("success", False):
        detail = out.get("error-message") or proc.stderr.strip() or text
        raise ConfigError(
            f"`{' '.join(cmd)}` failed against the SuperLink at {fed.address}: "
            f"{detail}. Check that it runs (`fedshield superlink start "
            f"{fed.root}`) and that {fed.ca_cert} is the CA its certificate is "
            "signed by."
        )
    return out


def register(fed: Federation, name: str, *, flwr: str = "flwr") -> int:
    """Register site ``name``'s public key; returns (and records) its node id."""
    site = fed.site(name)
    if site.node_id is not None:
        raise ConfigError(
            f"Site {name!r} is already registered (node {site.node_id}). Revoke it "
            "first to register it again."
        )
    tmp = fed.root / f".{name}.pub"
    tmp.write_text(site.public_key + "\n")
    try:
        out = _flwr(fed, ["supernode", "register", str(tmp)], flwr=flwr)
    finally:
        tmp.unlink(missing_ok=True)
    site.node_id = int(out["node-id"])
    fed.save()
    return site.node_id


def revoke(fed: Federation, name: str, *, flwr: str = "flwr") -> int:
    """Unregister site ``name``: its SuperNode is refused from now on."""
    site = fed.site(name)
    if site.node_id is None:
        raise ConfigError(
            f"Site {name!r} is not registered; there is nothing to revoke."
        )
    node_id = site.node_id
    _flwr(fed, ["supernode", "unregister", str(node_id)], flwr=flwr)
    site.node_id = None
    fed.save()
    return node_id


def wait_for_superlink(
    fed: Federation, proc: subprocess.Popen[bytes] | None = None, timeout: float = 120
) -> None:
    """Until the federation's SuperLink (``proc``, when this process started it)
    answers on its port over TLS, verified with the federation's CA."""
    # loopback is in the certificate's names whatever the hosts are
    url = f"https://localhost:{fed.port}/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ConfigError(
                f"The SuperLink exited with code {proc.returncode} before it "
                "answered; see its output."
            )
        if answers_health(url, cafile=fed.ca_cert):
            return
        time.sleep(0.5)
    raise ConfigError(
        f"Expected the SuperLink on port {fed.port} to answer over TLS within "
        f"{timeout:.0f} s; it did not. Is `fedshield superlink start {fed.root}` "
        "running on this host?"
    )
