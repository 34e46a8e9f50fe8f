"""A private Flower SuperLink for one simulation, started and always stopped by us.

``flwr run`` on its own starts one machine-wide local SuperLink (Runtime/Control HTTP
API on 127.0.0.1:39091, state under ``~/.flwr``) and reuses it for every later run,
whoever started it and from whichever Python environment. Two simulations, or a
simulation beside a user's own SuperLink, then share or fight over it. Each
``fedshield simulate`` therefore starts its own SuperLink:

- ``FLWR_HOME`` is a fresh temporary directory holding a ``config.toml`` whose one
  connection (``[superlink.fedshield]``) points at that SuperLink by explicit
  address, so ``flwr run APP fedshield`` never starts or touches the shared one;
- it listens on one free port on 127.0.0.1. In Flower 1.41 that single HTTP port
  serves the Runtime, Control and Fleet APIs; ``--simulation`` starts no Fleet
  API, no health server is requested, the legacy gRPC Control API opens only with
  ``FLWR_INTERNAL_GRPC_CONTROL_API=1`` (removed from its environment), and SuperExec,
  ``flwr-simulation`` and Ray bind no fixed ports;
- ``--disable-runtime-dependency-installation``: the apps run in this environment
  (its ``bin`` first on ``PATH``), never in one that ``uv sync`` would build by
  downloading torch again; ``RAY_ADDRESS=local`` keeps Ray from joining a cluster
  that ``ray start`` left on the machine, unless the user names one
  (``fedshield simulate --ray-address HOST:PORT``: the ClientApps then run on that
  cluster's workers);
- its state is in memory (it lives exactly as long as the run); its output and that
  of its SuperExec go to a log file in the run's directory.

It is stopped with its whole process tree (process_tree.py) when the ``with`` block
ends, however it ends; Ctrl-C during that teardown is ignored so it cannot be cut
short. Should this process be killed outright, the kernel kills the SuperLink
(``PR_SET_PDEATHSIG``, Linux); its SuperExec and ``flwr-simulation`` watch their
parent's pid and exit, and Ray's processes die with ``flwr-simulation``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .process_tree import dies_with_parent, terminate_tree

__all__ = [
    "CONNECTION",
    "LaunchError",
    "answers_health",
    "PrivateSuperLink",
    "free_port",
    "private_superlink",
    "superlink_command",
    "venv_script",
    "write_connection",
]

CONNECTION = "fedshield"  # the connection name in the private config.toml
HOST = "127.0.0.1"
START_ATTEMPTS = 3  # a free port can be taken by someone else before we bind it
# the legacy gRPC APIs that would open fixed ports (9093, 9092) if enabled
_GRPC_SWITCHES = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")


class LaunchError(RuntimeError):
    """The simulation cannot be started; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class PrivateSuperLink:
    """A running private SuperLink: where it listens and how to reach it."""

    address: str  # "127.0.0.1:PORT"
    flwr_home: Path  # holds config.toml with the connection `connection`
    log_path: Path
    pid: int
    env: dict[str, str] = field(repr=False)  # for `flwr` commands and the apps
    connection: str = CONNECTION


def venv_script(name: str) -> Path:
    """The console script ``name`` of this environment (else the one on PATH)."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return script
    found = shutil.which(name)
    if found is None:
        raise LaunchError(
            f"The `{name}` command is not installed in this environment "
            f"({sys.prefix}). Install fedshield's dependencies (`make install`)."
        )
    return Path(found)


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on at the moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_ray_address(address: str, timeout: float = 5.0) -> str:
    """``address`` (``HOST:PORT`` of an existing Ray cluster's head, as ``ray start
    --head`` prints it), checked to answer; raises :class:`LaunchError` otherwise."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LaunchError(
            f"Expected --ray-address as HOST:PORT of a Ray head (what `ray start "
            f"--head --port PORT` prints as its address); found {address!r}."
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise LaunchError(
            f"No Ray head answers at {address} ({err}). Start one there with `ray "
            f"start --head --port {port}` from this Python environment (every node "
            "of the cluster needs fedshield installed), or leave --ray-address out "
            "to run on a private Ray on this machine."
        ) from err
    return address.strip()


def _environment(flwr_home: Path, ray_address: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GRPC_SWITCHES}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"  # no network look-up per process
    # flwr-simulation's ray.init() reads it: a private Ray, or the cluster given
    env["RAY_ADDRESS"] = ray_address or "local"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def write_connection(
    flwr_home: Path,
    address: str,
    *,
    name: str = CONNECTION,
    root_certificates: Path | None = None,
) -> Path:
    """``FLWR_HOME/config.toml`` with one default connection ``name`` to
    ``address``: TLS verified against ``root_certificates`` (an absolute path, as
    flwr requires), or plain HTTP without them (a loopback simulation)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    transport = (
        "insecure = true\n"
        if root_certificates is None
        else f'root-certificates = "{root_certificates.resolve()}"\n'
    )
    config = flwr_home / "config.toml"
    config.write_text(
        f'[superlink]\ndefault = "{name}"\n\n'
        f'[superlink.{name}]\naddress = "{address}"\n{transport}'
    )
    return config


def superlink_command(port: int) -> list[str]:
    """The ``flower-superlink`` invocation for a private simulation SuperLink."""
    return [
        str(venv_script("flower-superlink")),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--disable-runtime-dependency-installation",
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def answers_health(url: str, *, cafile: Path | None = None) -> bool:
    """Whether the SuperLink's health server answers 200 at ``url`` (no proxy;
    with ``cafile``, over TLS verified with that CA)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if cafile is not None:
        context = ssl.create_default_context(cafile=str(cafile))
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _port_taken(log_path: Path, offset: int) -> bool:
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return False
    return "address already in use" in text.lower()


def _start(
    env: dict[str, str], log_path: Path, cwd: Path, timeout: float
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the SuperLink on a free port; return it once its health check passes."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                superlink_command(port),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, not it: we stop it
                # SIGKILL: on SIGTERM it would wait for open streams to close
                preexec_fn=dies_with_parent(signal.SIGKILL),
            )
        try:
            _wait_healthy(proc, f"http://{HOST}:{port}/health", log_path, timeout)
        except BaseException as err:
            terminate_tree(proc)
            retry = isinstance(err, LaunchError) and attempt < START_ATTEMPTS
            if retry and _port_taken(log_path, offset):
                continue
            raise
        return proc, port
    raise AssertionError("unreachable")  # pragma: no cover


def _wait_healthy(
    proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not answers_health(url):
        if proc.poll() is not None:
            raise LaunchError(
                f"The private Flower SuperLink exited with code {proc.returncode} "
                f"while starting (expected it to answer on {url}). Its log, "
                f"{log_path}, says why; fix that and run again."
            )
        if time.monotonic() > deadline:
            raise LaunchError(
                f"The private Flower SuperLink did not answer on {url} within "
                f"{timeout:.0f} s. Its log: {log_path}. On a busy machine, run again."
            )
        time.sleep(0.2)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def private_superlink(
    *,
    log_path: Path,
    cwd: Path,
    startup_timeout: float = 60.0,
    ray_address: str = "",
) -> Iterator[PrivateSuperLink]:
    """Run a private simulation SuperLink for the duration of the ``with`` block.

    ``log_path`` receives the SuperLink's (and its SuperExec's) output, appended;
    ``cwd`` is its working directory, inherited by the ServerApp and ClientApps.
    ``ray_address``: the head of an existing Ray cluster that the simulation's
    ClientApps run on (checked with :func:`check_ray_address` first); "" = a
    private Ray on this machine, started and stopped with the run.
    Raises LaunchError, naming the log, when it does not become healthy within
    ``startup_timeout`` seconds.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if ray_address:
        ray_address = check_ray_address(ray_address)
    flwr_home = Path(tempfile.mkdtemp(prefix="fedshield-flwr-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        env = _environment(flwr_home, ray_address)
        proc, port = _start(env, log_path, cwd, startup_timeout)
        address = f"{HOST}:{port}"
        write_connection(flwr_home, address)
        yield PrivateSuperLink(
            address=address,
            flwr_home=flwr_home,
            log_path=log_path,
            pid=proc.pid,
            env=env,
        )
    finally:
        with _sigint_ignored():
            if proc is not None:
                terminate_tree(proc)
            shutil.rmtree(flwr_home, ignore_errors=True)
