"""Tiny randomly initialised BERT for tests: 2 layers, hidden 32, real tokenizer.

Written to a folder so that tests exercise exactly the loading path real models take
(``model.source`` = that folder).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from .loading import packaged_model_path

__all__ = ["write_tiny_bert"]


def write_tiny_bert(path: Path, *, seed: int = 0) -> Path:
    """Save a tiny BERT encoder + the packaged MiniLM tokenizer under ``path``."""
    tokenizer = AutoTokenizer.from_pretrained(
        str(packaged_model_path()), local_files_only=True
    )
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
