"""A data-owning site's SuperNode: its key, a check of its node config before
anything starts, and ``flower-supernode`` with TLS and its key.

``fedshield site keygen DIR`` makes the site's key pair (the private key never
leaves the site; ``supernode_key.pub`` goes to the coordinator).
``fedshield site check --node-config "..."`` reads the node config as the
ClientApp will (unknown keys refused, the site policy parsed), then checks what
would otherwise fail only in round 1: the data file exists, is readable and
parses (with the columns the run will use), the eval file too, and the state dir
(ledger, signing key, scrub cache) is writable. ``fedshield site start`` runs the
same check, then ``flower-supernode`` connected with TLS (the federation's CA)
and SuperNode authentication (the site's key); when the SuperLink refuses the
key, it says so and what to do, instead of Flower's bare "Failed to activate
SuperNode". The SuperNode runs the site's own installed fedshield ClientApp,
never code from the coordinator's app bundle (:mod:`.trusted_clientapp`).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from fedshield.client.config import ClientConfig
from fedshield.client.data import SiteDataError
from fedshield.client.node import NodeConfig
from fedshield.client.release import site_state_dir
from fedshield.client.site import SiteFiles
from fedshield.common.config import ConfigError
from fedshield.common.sealing import (
    PASSPHRASE_ENV,
    SealingError,
    is_sealed,
    passphrase,
    read_secret,
    reseal_file,
)
from fedshield.common.storage import read_key_file
from fedshield.privacy.ledger import KEY_NAME as LEDGER_KEY_NAME
from fedshield.privacy.pii.scrubber import KEY_NAME as PII_KEY_NAME
from fedshield.simulations.process_tree import dies_with_parent

from .pki import SiteKey, make_site_key
from .trusted_clientapp import write_shim
from .warm_clientapp import SOCKET_NAME

__all__ = [
    "SECRET_FILES",
    "SiteCheck",
    "check_site",
    "keygen",
    "parse_node_config",
    "reseal_secrets",
    "secrets_status",
    "site_start_args",
    "supernode_command",
]

# the site's secrets in its state dir (common.sealing): the ledger's signing key
# and the pseudonym key. The SuperNode's own key stays in clear: Flower reads it.
SECRET_FILES = (LEDGER_KEY_NAME, PII_KEY_NAME)

# what flower-supernode prints when the SuperLink does not know the node's key
_REFUSED = ("Failed to activate SuperNode", "code: 2004")


def keygen(folder: Path) -> SiteKey:
    return make_site_key(folder)


def parse_node_config(text: str) -> dict[str, Any]:
    """``--node-config`` as Flower's SuperNode parses it (TOML-typed values)."""
    try:
        parsed = parse_config_args([text]) if text.strip() else {}
    except Exception as err:  # flwr raises ValueError or tomli's error
        raise ConfigError(
            f"Expected a node config of key=value pairs (strings in quotes, e.g. "
            f"\"data-path='/data/notes.csv' max-epsilon=8\"); found {text!r}: {err}"
        ) from err
    return dict(parsed)


@dataclass(frozen=True)
class SiteCheck:
    node: NodeConfig
    site: str
    state_dir: Path
    records: int
    eval_records: int | None
    secrets: dict[str, str]  # file name -> "sealed", "in clear" or "not made yet"


def _writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".check-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"Expected the site's state dir {folder} to be writable (it holds the "
            f"privacy ledger, its signing key and the scrub cache); it is not: "
            f"{err}. Set `state-dir` in the node config to a folder this user owns."
        ) from err


def check_site(
    node_config: Mapping[str, Any], run_config: Mapping[str, Any] | None = None
) -> SiteCheck:
    """What would fail in round 1, checked now (``run_config``: the run's data.*
    and model.* settings when they are not the defaults)."""
    node = NodeConfig.parse(dict(node_config))
    if node.simulated:
        raise ConfigError(
            "Expected a deployed site's node config; found `partition-id`, which "
            "only Flower's simulation engine sets."
        )
    if node.data_path is None:
        raise ConfigError(
            "Expected `data-path` in the node config (the site's CSV/TSV/JSONL "
            "training file); found none."
        )
    run = dict(run_config or {})
    try:  # the ClientApp's own reading of a deployed site's files
        data = SiteFiles().load(node, ClientConfig.from_run_config(run), run, 0)
    except SiteDataError as err:
        raise ConfigError(str(err)) from err
    site = node.site_name or "this site"
    state = site_state_dir(node, {}, site)
    _writable(state)
    return SiteCheck(
        node=node,
        site=site,
        state_dir=state,
        records=len(data.train),
        eval_records=None if data.eval is None else len(data.eval),
        secrets=secrets_status(state),
    )


def secrets_status(state_dir: Path) -> dict[str, str]:
    """Each site secret's form at rest; every existing one is opened, so a wrong
    or missing passphrase fails now rather than in round 1."""
    status = {}
    for name in SECRET_FILES:
        path = state_dir / name
        secret = read_secret(path, error=ConfigError, why="it is a site secret")
        if secret is None:
            status[name] = "not made yet"
        else:
            status[name] = "sealed" if is_sealed(path.read_bytes()) else "in clear"
    return status


def reseal_secrets(state_dir: Path, *, to_sealed: bool) -> dict[str, str]:
    """Seal the site's existing secrets with the passphrase in
    ``FEDSHIELD_SECRETS_PASSPHRASE`` (``to_sealed``), or open them back to clear.
    The keys stay the same: the ledger verifies as before and pseudonyms do not
    change. Returns what happened to each file."""
    try:
        secret_passphrase = passphrase()
    except SealingError as err:
        raise ConfigError(str(err)) from err
    if secret_passphrase is None:
        raise ConfigError(
            f"Expected the passphrase in {PASSPHRASE_ENV}; found it unset. Set it "
            "(the SuperNode's environment needs the same value afterwards)."
        )
    if not state_dir.is_dir():
        raise ConfigError(f"Expected a site state dir at {state_dir}; found nothing.")
    done = {}
    for name in SECRET_FILES:
        path = state_dir / name
        if not path.exists():
            done[name] = "not made yet" + (
                " (made sealed on first use while the passphrase is set)"
                if to_sealed
                else ""
            )
            continue
        try:
            changed = reseal_file(
                path, to_sealed=to_sealed, secret_passphrase=secret_passphrase
            )
        except SealingError as err:
            raise ConfigError(str(err)) from err
        form = "sealed" if to_sealed else "in clear"
        done[name] = form if changed else f"already {form}"
    return done


def supernode_command(
    *,
    superlink: str,
    root_certificates: Path,
    key: Path,
    node_config: str,
    port: int = 9094,
    executable: str = "flower-supernode",
) -> list[str]:
    """``flower-supernode`` with TLS (``root_certificates``: the federation's CA)
    and the site's key; runtime dependency installation stays off (its default)."""
    if not root_certificates.is_file():
        raise ConfigError(
            f"Expected the federation's CA certificate at {root_certificates}; found "
            "nothing. The coordinator sends ca.pem with the federation's address."
        )
    read_key_file(
        key,
        error=ConfigError,
        why="anyone who reads it can connect as this site",
    )
    if not key.is_file():
        raise ConfigError(
            f"Expected the site's private key at {key}; found nothing. Make one "
            "with `fedshield site keygen DIR` and send DIR/supernode_key.pub to "
            "the coordinator."
        )
    return [
        executable,
        "--superlink",
        superlink,
        "--root-certificates",
        str(root_certificates),
        "--auth-supernode-private-key",
        str(key),
        "--node-config",
        node_config,
        "--isolation",
        "subprocess",
        "--port",
        str(port),
    ]


def site_start_args(address: str, kit: Path, node_config: str, port: int) -> list[str]:
    """``fedshield site start`` arguments for the site whose kit (``ca.pem``,
    ``supernode_key``) is in ``kit``, its SuperNode on local ``port``."""
    return [
        "site",
        "start",
        "--superlink",
        address,
        "--ca",
        str(kit / "ca.pem"),
        "--key",
        str(kit / "supernode_key"),
        "--node-config",
        node_config,
        "--port",
        str(port),
    ]


def _stop_group(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM to the SuperNode's process group, up to ``grace`` seconds for the
    SuperNode to exit, then SIGKILL to whatever is left of the group: its
    SuperExec outlives a SuperNode that exits and would retry forever."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if sig is signal.SIGTERM:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass


def supernode_path(shims: Path, path: str) -> str:
    """The SuperNode's ``PATH``: the trusted ``flwr-clientapp`` shim first, then
    this environment's console scripts, then ``path``. The SuperNode starts
    ``flower-superexec`` by name; with a virtual environment that was never
    activated (``.venv/bin/fedshield site start``), it would not find it and would
    hang after its traceback. Raises :class:`ConfigError` when it is nowhere."""
    path = os.pathsep.join([str(shims), str(Path(sys.executable).parent), path])
    if shutil.which("flower-superexec", path=path) is None:
        raise ConfigError(
            "Expected Flower's `flower-superexec` command beside this Python "
            f"({Path(sys.executable).parent}) or on PATH; found neither. Install "
            "fedshield with its dependencies (`make install`, or `pip install "
            "fedshield`) in the environment that runs `fedshield site start`."
        )
    return path


def _start_warm_server(shims: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The site's warm ClientApp server (:mod:`.warm_clientapp`), its socket in
    ``shims`` (mode 0700: this user only); its output goes to ours."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedshield.deploy.warm_clientapp",
            str(shims / SOCKET_NAME),
        ],
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # one group: the server and the children it forks
        preexec_fn=dies_with_parent(signal.SIGTERM),
    )


def run_supernode(
    command: list[str], *, key: Path, superlink: str, warm: bool = True
) -> int:
    """Run ``command`` (the SuperNode) in the foreground, its output passed
    through, and stop its whole process group when it ends. A refused key is
    explained and ends the run (Flower's SuperExec would otherwise retry
    forever). ``warm``: each message's ClientApp is forked from a process that
    has imported fedshield already (:mod:`.warm_clientapp`) instead of started
    cold. Returns the SuperNode's exit code (2 for a refused key)."""
    if warm and sys.platform != "linux":  # fork after torch: unsafe on macOS
        sys.stdout.write(
            "fedshield: warm ClientApps are Linux only; each message's ClientApp "
            "starts cold here.\n"
        )
        warm = False
    env = dict(os.environ)
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    # Flower's SuperExec launches `flwr-clientapp` by name: ours comes first, and
    # runs the site's installed fedshield ClientApp, never the bundle's code
    shims = Path(tempfile.mkdtemp(prefix="fedshield-site-"))
    try:
        write_shim(shims, shims / SOCKET_NAME if warm else None)
        env["PATH"] = supernode_path(shims, env.get("PATH", ""))
    except ConfigError:
        shutil.rmtree(shims, ignore_errors=True)
        raise
    warm_server = _start_warm_server(shims, env) if warm else None
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        bufsize=1,
        start_new_session=True,  # one group: the SuperNode and its SuperExec
        preexec_fn=dies_with_parent(signal.SIGTERM),  # this process killed outright
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    refused = False

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # systemd's SIGTERM: stop the group, then exit

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None:
                    break  # exited; its SuperExec may hold the pipe open
                continue
            if line is None:
                break
            sys.stdout.write(line)
            sys.stdout.flush()
            if any(mark in line for mark in _REFUSED):
                refused = True
                break
    except KeyboardInterrupt:
        pass
    finally:
        _stop_group(proc)
        if warm_server is not None:
            _stop_group(warm_server)
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(shims, ignore_errors=True)
    code = proc.wait()
    if refused:
        pub = key.with_name(key.name + ".pub")
        sys.stderr.write(
            f"\nThe SuperLink at {superlink} refused this site's key: no registered "
            f"SuperNode has the public key of {key} (it was never registered, or it "
            f"was revoked). Send {pub} to the coordinator, who registers it with "
            "`fedshield federation register DIR SITE`, then start again.\n"
        )
        return 2
    return code
