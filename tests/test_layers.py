"""Imports point down (ARCHITECTURE.md): parsed from every source file's AST, lazy
imports inside functions included.

    cli          -> everything below
    deploy       -> simulations, client, privacy, models, common (operator tools)
    simulations  -> client, server, privacy, models, common (the one wiring place)
    client       -> privacy, models, common          (never server)
    server       -> privacy, models, common          (never client)
    privacy      -> models, common
    models       -> common
    common       -> nothing of fedshield

and nothing anywhere imports a generic top-level name (``server``, ``client``, ...):
everything is ``fedshield.<package>``.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

ALLOWED = {
    "common": set(),
    "models": {"common"},
    "privacy": {"models", "common"},
    "client": {"privacy", "models", "common"},
    "server": {"privacy", "models", "common"},
    "simulations": {"client", "server", "privacy", "models", "common"},
    "deploy": {"simulations", "client", "privacy", "models", "common"},
    "cli": {"deploy", "simulations", "client", "server", "privacy", "models", "common"},
}


def _packages() -> dict[str, Path]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name.split(".", 1)[1]: ROOT / folder for name, folder in mapping.items()}


def _module_name(package: str, folder: Path, path: Path) -> list[str]:
    parts = [package, *path.relative_to(folder).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, module: list[str], is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``: ``import x``, ``from x
    import y`` (each ``y`` too, which may be a module), relative imports, and
    ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module if is_package else module[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(["fedshield", *base, *filter(None, [node.module])])
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if name == "fedshield":  # from fedshield import client
                found += [(node.lineno, f"fedshield.{a.name}") for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and (
                isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                or isinstance(node.func, ast.Name)
                and node.func.id in ("import_module", "__import__")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _edges() -> list[tuple[str, int, str, str]]:
    """(file, line, from package, imported module) for every fedshield import."""
    edges = []
    for package, folder in _packages().items():
        for path in sorted(folder.rglob("*.py")):
            module = _module_name(package, folder, path)
            for line, name in _imports(path, module, path.name == "__init__.py"):
                edges.append((str(path.relative_to(ROOT)), line, package, name))
    return edges


def test_imports_point_down() -> None:
    wrong = []
    for file, line, package, name in _edges():
        parts = name.split(".")
        if parts[0] != "fedshield" or len(parts) < 2:
            continue
        target = parts[1]
        if target != package and target not in ALLOWED[package]:
            wrong.append(f"{file}:{line}: {package} imports {name}")
    assert wrong == [], "\n".join(wrong)


def test_no_generic_top_level_import_anywhere() -> None:
    generic = set(_packages())
    files = [
        p for d in ("tests", "benchmarks", ".ci") for p in (ROOT / d).rglob("*.py")
    ]
    files += [p for folder in _packages().values() for p in folder.rglob("*.py")]
    wrong = []
    for path in files:
        for line, name in _imports(path, ["x"], False):
            if name.split(".")[0] in generic:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from fedshield.client.app import train\n", ["fedshield.client.app"]),
        ("def f():\n    from ..client import app\n", ["fedshield.client"]),
        ("from . import rounds\n", ["fedshield.server"]),
        ("import fedshield.simulations.apps\n", ["fedshield.simulations.apps"]),
        ("from fedshield import client\n", ["fedshield", "fedshield.client"]),
        ("from ... import client\n", ["fedshield", "fedshield.client"]),
        (
            "import importlib\nimportlib.import_module('fedshield.client.app')\n",
            ["importlib", "fedshield.client.app"],
        ),
        ("__import__('fedshield.client')\n", ["fedshield.client"]),
    ],
)
def test_the_parser_sees_every_kind_of_import(
    tmp_path: Path, source: str, expected: list[str]
) -> None:
    # a checker that misses lazy or relative imports would pass vacuously
    path = tmp_path / "mod.py"
    path.write_text(source)
    found = [name for _, name in _imports(path, ["server", "mod"], False)]
    assert found == expected
