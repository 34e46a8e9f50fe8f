"""A model's forward with its input embeddings moved: what embedding-space
attacks (:mod:`fedshield.privacy.adversarial`) differentiate and train on.

``delta`` is added to the *word* embeddings of ``input_ids``; the model then
adds its position (and token-type) embeddings as usual, and a causal LM still
predicts the clean next tokens (the labels come from ``input_ids``).
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
    Each call embeds ``input_ids`` afresh through ``embedding`` (so a trainable
    embedding gets its gradient from every call)."""
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    input_ids = inputs["input_ids"]

    def logits(delta: torch.Tensor | None) -> torch.Tensor:
        if delta is None:
            return forward(**inputs).logits  # type: ignore[no-any-return]
        embeds = embedding(input_ids)
        embeds = embeds + delta.to(embeds.dtype)
        return forward(inputs_embeds=embeds, **rest).logits  # type: ignore[no-any-return]

    return logits
