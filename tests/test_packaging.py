"""The wheel installs one import name, ``fedshield``: a generic top-level name
(``server``, ``client``, ...) is neither installed nor importable from it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERIC = (
    "server",
    "client",
    "models",
    "privacy",
    "simulations",
    "cli",
    "common",
    "deploy",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--quiet", "--wheel-dir", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (found,) = out.glob("fedshield-*.whl")
    return found


def test_the_wheel_holds_only_the_fedshield_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"fedshield", wheel.name.split("-py3")[0] + ".dist-info"}
    packages = {n.split("/")[1] for n in names if n.startswith("fedshield/")}
    assert packages == set(GENERIC)
    assert not any(n == "fedshield/__init__.py" for n in names)  # a namespace


def test_a_generic_name_does_not_import_from_the_wheel(
    wheel: Path, tmp_path: Path
) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path)
    probe = "import sys; sys.path.insert(0, sys.argv[1]); import {}"
    for name in GENERIC:  # -I: no cwd, no site-packages, only the unpacked wheel
        proc = subprocess.run(
            [sys.executable, "-I", "-c", probe.format(name), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0 and "No module named" in proc.stderr, name
    ok = subprocess.run(
        [sys.executable, "-I", "-c", probe.format("fedshield.common.layout")]
        + [str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr


def test_every_source_file_is_in_the_wheel(wheel: Path) -> None:
    # a subpackage missing from pyproject's `packages` would work in the editable
    # install and be absent from a site's installed fedshield
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        f"fedshield/{path.relative_to(ROOT).as_posix()}"
        for package in GENERIC
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert sorted(sources - names) == []
