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

When the server cannot be reached the shim says so on stderr and runs the cold
``flwr-clientapp`` instead: slower, never different. Unix only (``fork``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

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
        os.chdir(str(request["cwd"]))
        argv = request["argv"]
        assert isinstance(argv, list)
        sys.argv = ["flwr-clientapp", *map(str, argv)]
        conn.sendall(f"{os.getpid()}\n".encode())

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
            conn.sendall(f"{code}\n".encode())
        except BaseException:  # noqa: BLE001 - the shim may be gone
            pass
        os._exit(code)


def _receive(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    conn.settimeout(10)
    data, fds, _flags, _addr = socket.recv_fds(conn, _MAX_REQUEST, 3)
    if len(data) < _HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("expected a length-prefixed request and three descriptors")
    (size,) = _HEADER.unpack_from(data)
    while len(data) < _HEADER.size + size:
        more = conn.recv(_MAX_REQUEST)
        if not more:
            break
        data += more
    request = json.loads(data[_HEADER.size : _HEADER.size + size])
    if not isinstance(request, dict) or not isinstance(request.get("argv"), list):
        raise ValueError("expected {'argv': [...], 'cwd': ...}")
    conn.settimeout(None)
    return request, list(fds)


def serve(
    sock_path: Path,
    entry: Callable[[], None] | None = None,
    preload: tuple[str, ...] = PRELOAD,
) -> None:
    """Import ``preload``, listen on ``sock_path`` and fork a child running
    ``entry`` (default: the trusted ``flwr-clientapp``) for each connection."""
    _preload(preload)
    if entry is None:
        from .trusted_clientapp import main

        entry = main
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket itself: this user only, as its folder
    try:
        server.bind(str(sock_path))
    finally:
        os.umask(old)
    server.listen(16)
    sys.stdout.write(f"fedshield: warm ClientApp server ready on {sock_path}\n")
    sys.stdout.flush()
    while True:
        conn, _ = server.accept()
        try:
            request, fds = _receive(conn)
        except (OSError, ValueError) as err:
            sys.stderr.write(f"fedshield: warm ClientApp server: bad request ({err})\n")
            conn.close()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child
            server.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            _child(conn, request, entry)
        conn.close()
        for fd in fds:
            os.close(fd)


# The shim's side: stdlib only, so that it starts in milliseconds. It is written
# next to the `flwr-clientapp` shim and run with `python -I`.
_CLIENT = r"""
import json, os, signal, socket, struct, sys

SOCK = {sock!r}
COLD = [sys.executable, "-m", "fedshield.deploy.trusted_clientapp"]


def cold(why):
    sys.stderr.write(
        "fedshield: the site's warm ClientApp server at %s cannot be reached (%s); "
        "starting a cold ClientApp (slower, same code)\n" % (SOCK, why)
    )
    sys.stderr.flush()
    os.execv(sys.executable, COLD + sys.argv[1:])


try:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(SOCK)
except OSError as err:
    cold(err)
body = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}).encode()
socket.send_fds(conn, [struct.pack("!I", len(body)) + body], [0, 1, 2])
replies = conn.makefile("rb")
line = replies.readline()
if not line.strip():
    sys.exit(1)  # the server refused the request or died; it says why in its log
pid = int(line)


forwarded = []


def forward(signum, frame):
    forwarded.append(signum)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, forward)
line = replies.readline()
if line.strip():
    sys.exit(int(line))
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
