"""A model's forward with its input embeddings moved: what embedding-space
attacks (:mod:`fedshield.privacy.adversarial`) differentiate and train on.

``delta`` is added to the *word* embeddings of ``input_ids`` (the output of the
model's input embedding module); the model then adds its position (and
token-type) embeddings as usual, and a causal LM still predicts the clean next
tokens (the labels come from ``input_ids``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = ["LogitsOf", "input_embedding", "logits_of"]

#: ``delta -> logits``: the model's output with its word embeddings moved by
#: ``delta`` (b, t, d), or on the clean input (``None``).
LogitsOf = Callable[[torch.Tensor | None], torch.Tensor]


def input_embedding(model: nn.Module) -> nn.Module:
    """The word embedding module of ``model`` (a Hugging Face model, our
    classifier, or either wrapped by peft)."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(embedding, nn.Module):
        raise TypeError(
            f"Expected a model with get_input_embeddings() (a Hugging Face model); "
            f"found {type(model).__name__} without one. Embedding-space attacks "
            "need the word embedding; set adversarial.method=off for this model."
        )
    return embedding


def logits_of(
    forward: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    embedding: nn.Module,
) -> LogitsOf:
    """``delta -> logits`` of ``forward`` (the model, or its DP wrapper) on
    ``inputs`` (:func:`fedshield.models.texts.batch_inputs`' keyword inputs).

    The model is always called with its usual inputs, ``input_ids`` included;
    ``delta`` is added to the output of ``embedding`` by a forward hook that lives
    for that one call. Passing ``inputs_embeds`` instead would hide ``input_ids``
    from the model, and Hugging Face's decoder classifiers (Llama, GPT-2, ...)
    then read every record's logits at the batch's last position: a record's
    output would depend on the other records' lengths. A trainable embedding gets
    its gradient from every call."""

    def logits(delta: torch.Tensor | None) -> torch.Tensor:
        if delta is None:
            return forward(**inputs).logits  # type: ignore[no-any-return]

        def moved(_m: nn.Module, _args: object, out: torch.Tensor) -> torch.Tensor:
            return out + delta.to(out.dtype)

        handle = embedding.register_forward_hook(moved)
        try:
            return forward(**inputs).logits  # type: ignore[no-any-return]
        finally:
            handle.remove()

    return logits
