"""Each simulation's SuperLink gets a free port and a private FLWR_HOME whose
config.toml points at it; it is stopped with all its processes however the run
ends; a SuperLink that does not come up is reported with its log. A fake
``flower-superlink`` (a small HTTP server that, like the real one, starts a child in
its own session) stands in; tests/test_simulation_isolation.py runs the real one."""

from __future__ import annotations

import os
import socket
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from fedshield.simulations import superlink
from fedshield.simulations.process_tree import Proc, descendants, is_alive
from fedshield.simulations.superlink import LaunchError, private_superlink

FAKE = """
import http.server, os, socket, subprocess, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
mode = os.environ.get("FAKE_MODE", "serve")
print("fake superlink", mode, port, flush=True)
if mode == "exit":
    sys.exit(3)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

try:
    server = http.server.HTTPServer(("127.0.0.1", port), Health)
except OSError as err:
    print(f"[Errno 98] {err}: address already in use", flush=True)
    sys.exit(1)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                 start_new_session=True)  # a SuperExec-like child, left behind
if mode == "hang":
    time.sleep(300)  # bound but never answering
server.serve_forever()
"""


@pytest.fixture()
def fake_superlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake_superlink.py"
    script.write_text(FAKE)
    monkeypatch.setattr(
        superlink,
        "superlink_command",
        lambda port: [sys.executable, str(script), "--port", str(port)],
    )
    return tmp_path


def _tree(pid: int) -> set[Proc]:
    """The SuperLink (a child of this test) and every process below it."""
    root = {p for p in descendants(os.getpid()) if p.pid == pid}
    assert root, f"process {pid} is not running"
    return root | descendants(pid)


def _healthy(address: str) -> bool:
    with urllib.request.urlopen(f"http://{address}/health", timeout=5) as response:
        return bool(response.status == 200)


def test_two_superlinks_run_side_by_side_each_with_its_port_and_home(
    fake_superlink: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")  # would open 9093
    log_a, log_b = fake_superlink / "a" / "superlink.log", fake_superlink / "b.log"
    with private_superlink(log_path=log_a, cwd=fake_superlink) as a:
        with private_superlink(log_path=log_b, cwd=fake_superlink) as b:
            assert a.address != b.address and a.flwr_home != b.flwr_home
            assert _healthy(a.address) and _healthy(b.address)
            for link in (a, b):
                config = tomllib.loads((link.flwr_home / "config.toml").read_text())
                assert config["superlink"]["default"] == link.connection
                assert config["superlink"][link.connection] == {
                    "address": link.address,
                    "insecure": True,
                }
                assert link.env["FLWR_HOME"] == str(link.flwr_home)
                assert link.env["PATH"].startswith(str(Path(sys.executable).parent))
                assert link.env["RAY_ADDRESS"] == "local"
                assert "FLWR_INTERNAL_GRPC_CONTROL_API" not in link.env
            procs_b = _tree(b.pid)
        assert not any(is_alive(p) for p in procs_b)
        assert not b.flwr_home.exists()
        assert _healthy(a.address)  # the other one is untouched
    assert "fake superlink serve" in log_a.read_text()


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_superlink_and_its_children_are_stopped_when_the_run_fails(
    fake_superlink: Path, interrupt: type[BaseException]
) -> None:
    with pytest.raises(interrupt):
        with private_superlink(
            log_path=fake_superlink / "superlink.log", cwd=fake_superlink
        ) as link:
            procs = _tree(link.pid)
            assert len(procs) == 2  # it and its SuperExec-like child
            raise interrupt()
    assert not any(is_alive(p) for p in procs)
    assert not link.flwr_home.exists()


def test_superlink_that_exits_while_starting_is_reported_with_its_log(
    fake_superlink: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "exit")
    log = fake_superlink / "superlink.log"
    with pytest.raises(LaunchError, match="exited with code 3") as err:
        with private_superlink(log_path=log, cwd=fake_superlink):
            pytest.fail("the block must not run")
    assert str(log) in str(err.value)
    assert "fake superlink exit" in log.read_text()


def test_superlink_that_never_answers_times_out_and_is_stopped(
    fake_superlink: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "hang")
    started: list[set[Proc]] = []
    real_wait = superlink._wait_healthy

    def watching_wait(proc, url, log_path, timeout) -> None:  # noqa: ANN001
        try:
            real_wait(proc, url, log_path, timeout)
        finally:
            started.append(_tree(proc.pid))

    monkeypatch.setattr(superlink, "_wait_healthy", watching_wait)
    log = fake_superlink / "superlink.log"
    with pytest.raises(LaunchError, match=r"did not answer .* within 1 s") as err:
        with private_superlink(log_path=log, cwd=fake_superlink, startup_timeout=1.0):
            pytest.fail("the block must not run")
    assert str(log) in str(err.value)
    (procs,) = started
    assert procs and not any(is_alive(p) for p in procs)


def test_a_port_taken_before_the_superlink_binds_it_is_replaced(
    fake_superlink: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, superlink.free_port()])
        monkeypatch.setattr(superlink, "free_port", lambda: next(ports))
        with private_superlink(
            log_path=fake_superlink / "superlink.log", cwd=fake_superlink
        ) as link:
            assert link.address != f"127.0.0.1:{taken}"
            assert _healthy(link.address)


def test_free_port_can_be_bound_on_localhost() -> None:
    port = superlink.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_the_real_superlink_is_started_for_simulation_without_installs() -> None:
    command = superlink.superlink_command(41234)
    assert Path(command[0]) == Path(sys.executable).parent / "flower-superlink"
    flags = command[1:]
    for flag in (
        "--insecure",
        "--simulation",
        "--disable-runtime-dependency-installation",
    ):
        assert flag in flags
    assert flags[flags.index("--isolation") + 1] == "subprocess"
    assert flags[flags.index("--host") + 1] == "127.0.0.1"
    assert flags[flags.index("--port") + 1] == "41234"
    # no other listener: health server, legacy gRPC Control API, on-disk state
    for absent in ("--health-server-address", "--control-api-address", "--database"):
        assert absent not in flags


def test_a_ray_address_is_checked_before_anything_starts() -> None:
    from fedshield.simulations.superlink import _environment, check_ray_address

    with pytest.raises(LaunchError, match="HOST:PORT"):
        check_ray_address("ray-head")
    with pytest.raises(LaunchError, match="No Ray head answers"):
        check_ray_address(f"127.0.0.1:{superlink.free_port()}", timeout=2)
    with socket.socket() as head:  # something listens: taken as the head
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        assert check_ray_address(f" {address} ") == address
    home = Path("/nonexistent-flwr-home")
    assert _environment(home)["RAY_ADDRESS"] == "local"  # never a stray cluster
    assert _environment(home, address)["RAY_ADDRESS"] == address
