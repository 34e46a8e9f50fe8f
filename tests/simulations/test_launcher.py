"""The CLI refuses to reuse a local SuperLink that would run the app wrongly."""

import os
import subprocess
import sys

import pytest
from fedshield.simulations import launcher


def test_superlink_from_another_environment_is_refused(monkeypatch) -> None:
    other = subprocess.Popen(["sleep", "30"])  # argv[0] outside this environment
    try:
        monkeypatch.setattr(launcher, "_superlink_pids", lambda: [other.pid])
        with pytest.raises(launcher.LaunchError, match=f"kill {other.pid}"):
            launcher.check_local_superlink()
    finally:
        other.kill()
        other.wait()


def test_superlink_that_would_reinstall_dependencies_is_refused(monkeypatch) -> None:
    env = {k: v for k, v in os.environ.items() if k != launcher.DISABLE_INSTALL}
    same_env = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], env=env
    )
    try:
        monkeypatch.setattr(launcher, "_superlink_pids", lambda: [same_env.pid])
        with pytest.raises(launcher.LaunchError, match="install torch"):
            launcher.check_local_superlink()
        monkeypatch.setattr(launcher, "_superlink_pids", lambda: [])
        launcher.check_local_superlink()  # nothing running: fine
    finally:
        same_env.kill()
        same_env.wait()
