"""Warm ClientApp processes for a deployed site: fork each message's ClientApp
from a process that has already imported fedshield, torch and transformers.

Flower's SuperExec starts a fresh ``flwr-clientapp`` process for every message a
site receives (about five per round under secure aggregation), and each one
spends 5-10 s of CPU importing torch, transformers, peft and fedshield before it
reads its message. ``fedshield site start`` therefore starts this server beside
the SuperNode: it imports all of that once, listens on a Unix socket in a folder
only the site's user can enter (``mkdtemp``, mode 0700), and forks one child per
message. The trusted ``flwr-clientapp`` shim (:mod:`.trusted_clientapp`) connects,
hands over its argument list, working directory and standard streams (the file
descriptors themselves, ``SCM_RIGHTS``), and then mirrors the child: it forwards
SIGTERM/SIGINT/SIGHUP to it and exits with its exit code; a child whose shim
vanishes stops itself. The child runs exactly what the cold path runs,
:func:`.trusted_clientapp.main`, so the site's own installed ClientApp and its
checks are unchanged, and every message still gets a process of its own: nothing
a message leaves in memory reaches the next one.

Why a server of our own: Flower 1.41's only warm executor pre-starts Kubernetes
pods, and ``multiprocessing``'s forkserver serves only its own Python parent, not
a process another program launched. Randomness stays private per child: every
secret the ClientApp draws (its DP seed, secure-aggregation keys and masks,
client-level noise) comes from ``os.urandom``/``secrets``, which do not repeat
across forks, and Python's ``random`` is reseeded in each child by the
interpreter; ``tests/deploy/test_warm_clientapp.py`` checks this.

When the server cannot be reached, belongs to another user, refuses, cannot
fork, or has stopped because fedshield was upgraded under it (its imported code
would be stale), the shim says so on stderr and runs the cold ``flwr-clientapp``
instead: slower, never different; nothing ran in the server for that message.
Linux only: ``site start`` uses it on Linux (``fork`` after importing torch and
the Objective-C runtime is unsafe on macOS), and the cold path elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

__all__ = ["PRELOAD", "SOCKET_NAME", "serve", "write_client"]

SOCKET_NAME = "clientapp.sock"
# what each ClientApp would import anyway; the model classes of transformers load
# lazily, so the two families the packaged models use are named
PRELOAD = (
    "fedshield.simulations.apps",
    "fedshield.deploy.trusted_clientapp",
    "flwr.supernode.cli",
    "flwr.supernode.runtime.run_clientapp",
    "transformers.models.bert.modeling_bert",
    "transformers.models.llama.modeling_llama",
)
_HEADER = struct.Struct("!I")
_MAX_REQUEST = 1 << 16


def _preload(modules: tuple[str, ...]) -> None:
    import importlib

    for name in modules:
        importlib.import_module(name)


def _child(
    conn: socket.socket, request: dict[str, object], entry: Callable[[], None]
) -> None:
    """In the forked child: become the shim's ClientApp process; never returns."""
    code = 1
    finished = threading.Event()
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _reseed()
        os.chdir(str(request["cwd"]))
        argv = request["argv"]
        assert isinstance(argv, list)
        sys.argv = ["flwr-clientapp", *map(str, argv)]
        conn.sendall(f"pid {os.getpid()}\n".encode())

        def watch() -> None:  # the shim is gone (killed outright): stop too
            try:
                conn.recv(1)
            except OSError:
                pass
            if not finished.is_set():
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True).start()
        entry()
        code = 0
    except SystemExit as done:
        code = (
            done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        )
    except BaseException:  # noqa: BLE001 - reported on the shim's stderr, then exit 1
        traceback.print_exc()
    finally:
        finished.set()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(f"exit {code}\n".encode())
        except BaseException:  # noqa: BLE001 - the shim may be gone
            pass
        os._exit(code)


def _reseed() -> None:
    """Fresh seeds from the OS for numpy's and torch's global generators: a fork
    would otherwise repeat the server's state in every child. (Nothing secret is
    drawn from them today: the DP seed, masks and noise come from ``secrets`` and
    ``os.urandom``; this keeps it so for code that might.)"""
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def _peer_uid(conn: socket.socket) -> int | None:
    """The connecting process's user id (Linux ``SO_PEERCRED``), else None."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _receive(
    conn: socket.socket, deadline_s: float = 10.0
) -> tuple[dict[str, object], list[int]]:
    """The shim's request and its three descriptors, within ``deadline_s`` in all;
    on any failure the descriptors received are closed (no later child inherits
    them) and the error raised."""
    deadline = time.monotonic() + deadline_s
    conn.settimeout(deadline_s)
    data, fds, _flags, _addr = socket.recv_fds(conn, _MAX_REQUEST, 3)
    try:
        if len(data) < _HEADER.size or len(fds) != 3:
            raise ValueError("expected a length-prefixed request and three descriptors")
        (size,) = _HEADER.unpack_from(data)
        if size > _MAX_REQUEST:
            raise ValueError(f"a request of {size} bytes; at most {_MAX_REQUEST}")
        while len(data) < _HEADER.size + size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the request took over {deadline_s:.0f} s")
            conn.settimeout(left)
            more = conn.recv(_MAX_REQUEST)
            if not more:
                raise ValueError("the request was cut short")
            data += more
        request = json.loads(data[_HEADER.size : _HEADER.size + size])
        if (
            not isinstance(request, dict)
            or not isinstance(request.get("argv"), list)
            or not all(isinstance(a, str) for a in request["argv"])
            or not isinstance(request.get("cwd"), str)
        ):
            raise ValueError("expected {'argv': [str, ...], 'cwd': str}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, list(fds)


def serve(
    sock_path: Path,
    entry: Callable[[], None] | None = None,
    preload: tuple[str, ...] = PRELOAD,
    version: Callable[[], str] | None = None,
) -> None:
    """Import ``preload``, listen on ``sock_path`` and fork a child running
    ``entry`` (default: the trusted ``flwr-clientapp``) for each connection of
    this user. ``version`` (default: fedshield's installed version) is read at
    start and before every fork: once the installed package changed, the
    imported code is stale, so the server stops and the shims start cold
    ClientApps of the new version."""
    _preload(preload)
    from .trusted_clientapp import installed_version, main

    entry = main if entry is None else entry
    version = installed_version if version is None else version
    started_with = version()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket itself: this user only, as its folder
    try:
        server.bind(str(sock_path))
    finally:
        os.umask(old)
    server.listen(16)
    _say(f"warm ClientApp server ready on {sock_path}")
    while True:
        conn, _ = server.accept()
        try:
            uid = _peer_uid(conn)
            if uid is not None and uid != os.getuid():
                raise PermissionError(f"a process of user {uid} connected")
            request, fds = _receive(conn)
        except (OSError, ValueError) as err:
            _say(f"warm ClientApp server: request refused ({err})", sys.stderr)
            conn.close()
            continue
        now = version()
        if now != started_with:
            _say(
                f"fedshield changed from {started_with} to {now} since this warm "
                "ClientApp server started; it stops, and each message's ClientApp "
                "starts cold (restart `fedshield site start` to have it warm again)",
                sys.stderr,
            )
            for fd in fds:
                os.close(fd)
            conn.close()  # no "pid" line: the shim runs the cold ClientApp
            server.close()
            return
        try:
            pid = os.fork()
        except OSError as err:
            _say(f"warm ClientApp server: cannot fork ({err})", sys.stderr)
            pid = -1
        if pid == 0:  # the child
            server.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            _child(conn, request, entry)
        conn.close()
        for fd in fds:
            os.close(fd)


def _say(text: str, stream: TextIO = sys.stdout) -> None:
    stream.write(f"fedshield: {text}\n")
    stream.flush()


# The shim's side: stdlib only, so that it starts in milliseconds. It is written
# next to the `flwr-clientapp` shim and run with `python -I`.
_CLIENT = r"""
import json, os, signal, socket, struct, sys

SOCK = {sock!r}
COLD = [sys.executable, "-m", "fedshield.deploy.trusted_clientapp"]


def cold(why):
    sys.stderr.write(
        "fedshield: the site's warm ClientApp server at %s did not take this "
        "message (%s); starting a cold ClientApp (slower, same code)\n" % (SOCK, why)
    )
    sys.stderr.flush()
    os.execv(sys.executable, COLD + sys.argv[1:])


try:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(SOCK)
except OSError as err:
    cold("cannot be reached: %s" % err)
option = getattr(socket, "SO_PEERCRED", None)
if option is not None:
    creds = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    if struct.unpack("3i", creds)[1] != os.getuid():
        cold("its socket belongs to another user")
body = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}).encode()
try:
    socket.send_fds(conn, [struct.pack("!I", len(body)) + body], [0, 1, 2])
except OSError as err:
    cold("cannot be written to: %s" % err)
replies = conn.makefile("rb")
line = replies.readline().split()
if len(line) != 2 or line[0] != b"pid":
    cold("it started nothing")  # refused, stopping, or cannot fork: nothing ran
pid = int(line[1])
forwarded = []


def forward(signum, frame):
    forwarded.append(signum)
    try:
        os.kill(pid, signum)
    except OSError:
        pass


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, forward)
line = replies.readline().split()
if len(line) == 2 and line[0] == b"exit":
    sys.exit(int(line[1]))
if forwarded:  # the child died of the signal: so does its shim
    signal.signal(forwarded[-1], signal.SIG_DFL)
    os.kill(os.getpid(), forwarded[-1])
sys.exit(1)
"""


def write_client(folder: Path, sock_path: Path) -> Path:
    """``folder/warm_client.py``: the shim's side of :func:`serve`."""
    path = folder / "warm_client.py"
    path.write_text(_CLIENT.format(sock=str(sock_path)))
    return path


def main() -> None:  # pragma: no cover - started by `fedshield site start`
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fedshield.deploy.warm_clientapp SOCKET")
    serve(Path(sys.argv[1]))


if __name__ == "__main__":  # pragma: no cover
    main()
