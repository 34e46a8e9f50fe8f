"""Mutation check of the privacy mechanisms: break one on purpose, a test must fail.

Run (all mutants, about half an hour on 2 CPU cores; writes
benchmarks/results/mutants.json):

    make mutants
    # or: .venv/bin/python benchmarks/mutants.py [--only ID ...] [--jobs 2]

Each mutant is a hand-written, privacy-critical change to one source file, listed in
``benchmarks/mutants/*.toml`` (one file per mechanism)::

    [[mutant]]
    id = "dp-noise-tenth"                  # unique, kebab-case
    file = "privacy/bookkeeping/engine.py"  # the file it breaks
    find = '''std=noise_multiplier * ...'''  # exact text, must occur exactly once
    replace = '''std=0.1 * noise_multiplier * ...'''
    tests = ["tests/privacy/test_dp.py::test_noise_std_is_sigma_c"]  # pytest ids
    why = "the DP-SGD noise std is a tenth of what the accountant assumes"
    # equivalent = "reason"                # only for a mutant no test can kill

A mutant that must change two places of its file at once (the noise and what the
accountant is told) gives ``find`` and ``replace`` as lists of equal length.

Why a curated list and not mutmut / cosmic-ray: those mutate every operator of a
module and need hours per file on this machine; most of their mutants (log text,
error messages, progress bars) are not privacy claims. A curated list names the
claim each mutant breaks, runs in minutes, and its ``find`` text is checked on every
run, so a refactor that moves the code makes the check fail loudly instead of
silently testing nothing.

How a mutant is run: the repository's source (without ``.git``, ``.venv``,
``runs``) is copied once per worker into a temporary folder; the mutant is applied
there, never in the working tree, and pytest runs the mutant's tests from that copy
with ``PYTHONPATH`` pointing at it, through a link tree ``.namespace/fedshield/<pkg>``
that mirrors pyproject's package-dir mapping (a subprocess a test starts imports the
mutated copy too). Before any mutant, every listed test is run unmutated and must
pass: a test that fails on the real code kills nothing. A mutant is **killed** when
pytest reports a failure (exit 1), **survived** when its tests pass; any other exit
(collection error, crash) or a timeout is reported as such and counts as neither.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "benchmarks" / "mutants"
OUT = ROOT / "benchmarks" / "results" / "mutants.json"
SKIP = {
    ".git",
    ".venv",
    "runs",
    "build",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
}
SKIP |= {".ruff_cache", ".mypy_cache", "build"}


class CatalogError(ValueError):
    """A mutant entry that cannot be applied as written."""


@dataclass(frozen=True, kw_only=True)
class Mutant:
    id: str
    file: str
    edits: tuple[tuple[str, str], ...]  # (find, replace), applied in order
    tests: tuple[str, ...]
    why: str
    equivalent: str = ""
    source: str = ""  # the catalog file it came from

    def apply(self, root: Path) -> None:
        """Write the mutated file under ``root``; the find text must occur once."""
        path = root / self.file
        text = path.read_text()
        for find, replace in self.edits:
            count = text.count(find)
            if count != 1:
                raise CatalogError(
                    f"mutant {self.id!r} ({self.source}): its `find` text occurs "
                    f"{count} times in {self.file}, expected exactly once. The code "
                    "moved or changed: update the entry so it breaks the same "
                    f"mechanism.\n{find}"
                )
            text = text.replace(find, replace)
        path.write_text(text)


def load_catalog(folder: Path = CATALOG) -> list[Mutant]:
    """Every mutant of every ``*.toml`` file in ``folder``, checked for shape."""
    mutants: list[Mutant] = []
    for toml_path in sorted(folder.glob("*.toml")):
        with toml_path.open("rb") as fh:
            entries = tomllib.load(fh).get("mutant", [])
        for entry in entries:
            missing = {"id", "file", "find", "replace", "tests", "why"} - set(entry)
            if missing:
                raise CatalogError(
                    f"{toml_path.name}: mutant {entry.get('id', '?')!r} lacks "
                    f"{sorted(missing)}."
                )
            finds, replaces = entry["find"], entry["replace"]
            if isinstance(finds, str):
                finds, replaces = [finds], [replaces]
            if len(finds) != len(replaces) or any(
                f == r for f, r in zip(finds, replaces, strict=False)
            ):
                raise CatalogError(
                    f"mutant {entry['id']!r}: `find` and `replace` must be strings "
                    "or lists of equal length, and each replacement must differ."
                )
            mutants.append(
                Mutant(
                    id=entry["id"],
                    file=entry["file"],
                    edits=tuple(zip(finds, replaces, strict=True)),
                    tests=tuple(entry["tests"]),
                    why=entry["why"],
                    equivalent=entry.get("equivalent", ""),
                    source=toml_path.name,
                )
            )
    ids = [m.id for m in mutants]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CatalogError(f"duplicate mutant ids: {dupes}")
    return mutants


def copy_source(dest: Path) -> Path:
    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP or n.endswith(".egg-info")}

    shutil.copytree(ROOT, dest, ignore=ignore)
    _link_namespace(dest)
    return dest


NAMESPACE_DIR = ".namespace"


def _link_namespace(root: Path) -> None:
    """``root/.namespace/fedshield/<pkg>`` -> the copy's folders (.ci/namespace.py):
    with ``.namespace`` first on ``PYTHONPATH``, ``fedshield.privacy`` is the copy's."""
    subprocess.run(
        [sys.executable, str(root / ".ci" / "namespace.py"), str(root / NAMESPACE_DIR)],
        check=True,
    )


def _env(root: Path) -> dict[str, str]:
    path = os.pathsep.join([str(root / NAMESPACE_DIR), str(root)])
    return dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")


def run_tests(
    root: Path, tests: Iterable[str], timeout: float
) -> tuple[int | None, float, str]:
    """pytest on ``tests`` from ``root``: (exit code or None on timeout, s, tail)."""
    env = _env(root)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "no:randomly", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, "timeout"
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return proc.returncode, time.perf_counter() - start, "\n".join(tail)


def check_imports_from(root: Path) -> None:
    """Refuse to run if pytest in the copy would import the working tree instead."""
    env = _env(root)
    probe = (
        "import fedshield.privacy, fedshield.server, fedshield.client; "
        "print(fedshield.privacy.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(
            f"the copy at {root} imports privacy from {out}; mutants would not be "
            "tested. Reinstall fedshield (make install) and retry."
        )


def run_one(mutant: Mutant, workdir: Path, timeout: float) -> dict[str, object]:
    """Apply ``mutant`` to ``workdir`` (restored afterwards) and run its tests."""
    target = workdir / mutant.file
    original = target.read_text()
    try:
        mutant.apply(workdir)
        rc, seconds, tail = run_tests(workdir, mutant.tests, timeout)
    finally:
        target.write_text(original)
    if rc is None:
        status = "timeout"
    elif rc == 1:
        status = "killed"
    elif rc == 0:
        status = "survived"
    else:
        status = f"error (pytest exit {rc})"
    return {
        "id": mutant.id,
        "file": mutant.file,
        "why": mutant.why,
        "tests": list(mutant.tests),
        "status": status,
        "equivalent": mutant.equivalent,
        "seconds": round(seconds, 1),
        "output_tail": tail if status != "killed" else tail.splitlines()[-1:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="mutant ids to run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--list", action="store_true", help="print the catalog and exit"
    )
    args = parser.parse_args(argv)

    mutants = load_catalog()
    if args.only:
        unknown = sorted(set(args.only) - {m.id for m in mutants})
        if unknown:
            parser.error(f"unknown mutant ids {unknown}; see --list")
        mutants = [m for m in mutants if m.id in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.id:40s} {m.file:32s} {m.why}")
        return 0

    with tempfile.TemporaryDirectory(prefix="fedshield-mutants-") as tmp:
        workers = [copy_source(Path(tmp) / f"w{i}") for i in range(args.jobs)]
        check_imports_from(workers[0])
        for m in mutants:  # every find text must match before anything runs
            m.apply(workers[0])
            (workers[0] / m.file).write_text((ROOT / m.file).read_text())

        tests = sorted({t for m in mutants for t in m.tests})
        print(f"baseline: {len(tests)} tests, unmutated", flush=True)
        rc, seconds, tail = run_tests(workers[0], tests, args.timeout)
        if rc != 0:
            print(tail, file=sys.stderr)
            print(
                "The unmutated code fails these tests; fix them first.",
                file=sys.stderr,
            )
            return 2
        print(f"baseline passed in {seconds:.0f} s", flush=True)

        free = list(workers)
        results: list[dict[str, object]] = []

        def task(m: Mutant) -> dict[str, object]:
            w = free.pop()
            try:
                res = run_one(m, w, args.timeout)
            finally:
                free.append(w)
            print(f"{res['status']:>10s}  {m.id}  ({res['seconds']} s)", flush=True)
            return res

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(task, mutants))

    survived = [r for r in results if r["status"] == "survived"]
    unexplained = [r for r in survived if not r["equivalent"]]
    other = [r for r in results if r["status"] not in ("killed", "survived")]
    report = {
        "headline": {
            "mutants_tried": len(results),
            "mutants_killed": sum(r["status"] == "killed" for r in results),
            "mutants_survived": len(survived),
            "survivors_unexplained": len(unexplained),
            "mutants_errored": len(other),
        },
        "baseline_seconds": round(seconds, 1),
        "mutants": results,
    }
    if not args.only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(report, indent=2) + "\n")
        tmp_out.replace(args.out)
        print(f"wrote {args.out}")
    print(json.dumps(report["headline"]))
    for r in unexplained + other:
        print(f"\n{r['status']}: {r['id']} ({r['why']})\n{r['output_tail']}")
    return 1 if unexplained or other else 0


if __name__ == "__main__":
    sys.exit(main())
