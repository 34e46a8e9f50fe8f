"""Link the repository's folders as the ``fedshield`` namespace, for tools that
cannot follow setuptools' editable-install finder.

    python .ci/namespace.py build/namespace    # -> build/namespace/fedshield/<pkg>

pyproject's ``[tool.setuptools.package-dir]`` maps ``fedshield.server`` to
``server/`` and so on; the editable install resolves those names with an import
hook. mypy does not run import hooks, and the mutation check (benchmarks/mutants.py)
must import a mutated *copy* instead of the working tree: both put ``DEST`` first on
their search path, where ``DEST/fedshield/server`` is a symlink to ``server/``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def link_namespace(root: Path, dest: Path) -> None:
    """``dest/fedshield/<pkg>`` -> ``root/<folder>`` for every package-dir mapping."""
    with (root / "pyproject.toml").open("rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    for name, folder in mapping.items():
        link = dest / Path(*name.split("."))
        target = (root / folder).resolve()
        if link.is_symlink() and link.resolve() == target:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python .ci/namespace.py DEST")
    link_namespace(Path(__file__).resolve().parent.parent, Path(sys.argv[1]))
