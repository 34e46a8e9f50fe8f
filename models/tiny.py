"""Tiny randomly initialised models for tests: a BERT (2 layers, hidden 32, the
packaged MiniLM tokenizer) and causal LMs (Llama or GPT-2, 2 layers, hidden 32, a
byte-level BPE tokenizer trained offline on a few sentences).

Written to a folder so that tests exercise exactly the loading path real models take
(``model.source`` = that folder).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
)

from .loading import packaged_model_path

__all__ = ["write_tiny_bert", "write_tiny_causal_lm"]


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


#: Text the tiny causal LMs' byte-level BPE tokenizer is trained on (offline).
_TOKENIZER_TEXT = (
    "the film was great and the acting was awful . a slow , quiet , lovely movie "
    "my account number is 0-1-2-3-4-5-6-7-8-9 . call me at 555 0100 or write to "
    "jane doe at jane@example.com . the patient was seen on monday in london ."
)


def _tiny_bpe_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) trained on a few sentences: every
    byte is a token, so any text encodes; ``<|endoftext|>`` is bos, eos and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer=trainer)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=end, eos_token=end, pad_token=end
    )


def write_tiny_causal_lm(
    path: Path, *, arch: str = "llama", seed: int = 0, tie_embeddings: bool = True
) -> Path:
    """Save a tiny random causal LM (``arch``: ``llama`` or ``gpt2``; 2 layers,
    hidden 32) and a byte-level BPE tokenizer under ``path``."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_bpe_tokenizer(vocab_size=300)
    vocab = len(tokenizer)
    end = int(tokenizer.eos_token_id)
    model: torch.nn.Module
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "llama":
            model = LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=vocab,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    max_position_embeddings=256,
                    tie_word_embeddings=tie_embeddings,
                    bos_token_id=end,
                    eos_token_id=end,
                    pad_token_id=end,
                )
            )
        elif arch == "gpt2":
            model = GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=vocab,
                    n_embd=32,
                    n_layer=2,
                    n_head=4,
                    n_positions=256,
                    tie_word_embeddings=tie_embeddings,
                    bos_token_id=end,
                    eos_token_id=end,
                    pad_token_id=end,
                )
            )
        else:
            raise ValueError(f"arch must be 'llama' or 'gpt2'; found {arch!r}.")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
