"""The site's warm ClientApp server: each message's ClientApp is forked from one
process that imported fedshield once. The shim must behave as the process it
stands for (argv, working directory, standard streams, exit code, signals), a
child must not outlive its shim, and no two children may share the randomness a
coordinator could exploit: a forked ClientApp that repeated its parent's DP seed,
noise or mask keys would let the coordinator subtract them."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedshield.deploy.trusted_clientapp import write_shim
from fedshield.deploy.warm_clientapp import SOCKET_NAME
from tests.subprocess_env import REPO, subprocess_env

ENTRY = Path(__file__).with_name("warm_entry.py")


@pytest.fixture
def shims() -> Iterator[Path]:
    # a short path: a Unix socket's path is limited to ~100 bytes
    folder = Path(tempfile.mkdtemp(prefix="fs-warm-"))
    try:
        yield folder
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


@dataclass
class Warm:
    shim: Path
    proc: subprocess.Popen[str]
    version: Path  # its text: what the server takes for fedshield's version


@pytest.fixture
def warm(shims: Path) -> Iterator[Warm]:
    sock = shims / SOCKET_NAME
    version = shims / "version"
    version.write_text("1.0")
    proc = subprocess.Popen(
        [sys.executable, str(ENTRY), str(sock), str(version)],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert "ready" in proc.stdout.readline()
        yield Warm(write_shim(shims, sock), proc, version)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


@pytest.fixture
def server(warm: Warm) -> Path:
    return warm.shim


def _run(shim: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(shim), *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_forked_clientapp_sees_the_shims_arguments_folder_and_streams(
    server: Path, tmp_path: Path
) -> None:
    done = _run(server, "--token", "abc", "exit", "3", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    seen = json.loads(done.stdout)
    assert seen["argv"] == ["flwr-clientapp", "--token", "abc", "exit", "3"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["pid"] != os.getpid()
    assert "to stderr" in done.stderr
    assert _run(server, "ok", cwd=tmp_path).returncode == 0


def test_no_two_forked_clientapps_share_their_secret_randomness(
    server: Path, tmp_path: Path
) -> None:
    """The attack: the coordinator knows the ClientApps are forks of one process;
    had they inherited one RNG state, it would learn the second site's (or
    round's) DP seed, noise and mask keys from the first."""
    draws = [json.loads(_run(server, cwd=tmp_path).stdout) for _ in range(3)]
    for key in ("pid", "dp_seed", "noise", "urandom", "random", "numpy", "torch"):
        values = [json.dumps(d[key]) for d in draws]
        assert len(set(values)) == 3, (key, values)


def _sleeping(shim: Path, cwd: Path) -> tuple[subprocess.Popen[str], int]:
    """A shim whose forked ClientApp sleeps; and that child's pid."""
    proc = subprocess.Popen(
        [str(shim), "sleep", "60"],
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().split()[1])


def test_a_signal_to_the_shim_reaches_its_clientapp(
    server: Path, tmp_path: Path
) -> None:
    proc, child = _sleeping(server, tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM  # the shim mirrors its child
    _gone(child)


def test_a_clientapp_whose_shim_is_killed_outright_stops(
    server: Path, tmp_path: Path
) -> None:
    proc, child = _sleeping(server, tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    _gone(child)


def _gone(pid: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"the forked ClientApp {pid} outlived its shim")


def test_without_its_server_the_shim_says_so_and_runs_the_cold_clientapp(
    shims: Path, tmp_path: Path
) -> None:
    shim = write_shim(shims, shims / SOCKET_NAME)  # no server listens there
    done = subprocess.run(
        [str(shim), "--help"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "cannot be reached" in done.stderr
    assert "--runtime-api-address" in done.stdout  # Flower's flwr-clientapp ran


def test_the_socket_is_the_site_users_alone(server: Path) -> None:
    sock = server.with_name(SOCKET_NAME)
    assert sock.stat().st_mode & 0o077 == 0
    assert server.parent.stat().st_mode & 0o077 == 0


def test_a_malformed_request_leaves_no_descriptor_to_later_clientapps(
    server: Path, tmp_path: Path
) -> None:
    before = json.loads(_run(server, cwd=tmp_path).stdout)["fds"]
    marker = (tmp_path / "marker").open("w")
    for body in (b"not json", b'{"argv": "x"}', b'{"argv": [1], "cwd": "/"}'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(server.with_name(SOCKET_NAME)))
            fd = marker.fileno()
            socket.send_fds(conn, [struct.pack("!I", len(body)) + body], [fd, fd, fd])
            assert conn.recv(16) == b""  # refused: nothing started
    marker.close()
    after = json.loads(_run(server, cwd=tmp_path).stdout)["fds"]
    assert after == before


def test_after_an_upgrade_the_server_stops_and_the_shim_goes_cold(
    warm: Warm, tmp_path: Path
) -> None:
    """Code imported before an upgrade is stale: the next message must not run
    it. The server stops; the shim starts the cold ClientApp (Flower's, here
    given the probe's arguments, which it rejects: what matters is which ran)."""
    warm.version.write_text("2.0")
    done = _run(warm.shim, "ok", cwd=tmp_path)
    assert "did not take this message (it started nothing)" in done.stderr
    assert '"pid"' not in done.stdout  # the probe never ran
    assert warm.proc.wait(timeout=30) == 0
    again = _run(warm.shim, "ok", cwd=tmp_path)
    assert "cannot be reached" in again.stderr
