"""Task heads. ``MeanPoolingClassifier``: a linear classifier on the attention-masked
mean of the encoder's last hidden states.

Why not Hugging Face's ``BertForSequenceClassification``: it classifies the
``[CLS]`` token through BERT's pooler, while sentence-embedding checkpoints such as
the packaged all-MiniLM-L6-v2 are trained for *mean* pooling and ship an untrained
pooler. Measured (frozen encoder, logistic-regression probe, 1,000 train / 500 test
Rotten Tomatoes snippets): mean pooling 0.722 accuracy, [CLS] 0.666, pooler 0.634.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

__all__ = ["HEAD_MODULE_NAMES", "MeanPoolingClassifier", "is_head_parameter"]

# Names of task-head modules: ours and Hugging Face's ("classifier" for BERT-style,
# "score" for GPT-style sequence classification).
HEAD_MODULE_NAMES = frozenset({"classifier", "score"})


def is_head_parameter(name: str) -> bool:
    """Whether parameter ``name`` belongs to the task head (not the encoder)."""
    return any(part in HEAD_MODULE_NAMES for part in name.split("."))


class MeanPoolingClassifier(nn.Module):
    """``logits = W dropout(mean_t h_t) + b`` over non-padding tokens."""

    def __init__(self, encoder: Any, *, num_labels: int, dropout: float) -> None:
        """``encoder``: a Hugging Face base model (``AutoModel``) with ``.config``."""
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused: no trainable weight without a gradient
        self.encoder: Any = encoder
        self.config = encoder.config  # peft and save helpers read .config
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(int(encoder.config.hidden_size), num_labels)

    def get_input_embeddings(self) -> nn.Module:
        """The encoder's word embedding (what ``inputs_embeds`` replaces)."""
        return self.encoder.get_input_embeddings()  # type: ignore[no-any-return]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """``inputs_embeds`` (b, t, d) replaces the word embeddings of
        ``input_ids`` (adversarial training perturbs them)."""
        if attention_mask is None:
            raise ValueError("MeanPoolingClassifier needs the attention_mask.")
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **extra,
        ).last_hidden_state  # (b, t, d)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (b, d)
        logits = self.classifier(self.dropout(pooled))  # (b, num_labels)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
