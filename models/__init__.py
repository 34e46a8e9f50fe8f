"""What a model is: loading, task heads, LoRA, tiny test configs, state <-> arrays,
and the texts it reads (tokenize, evaluate)."""

from .config import FinetuneMode, ModelConfig, Pooling, TaskKind
from .evaluate import EvalResult, evaluate_model
from .heads import MeanPoolingClassifier, is_head_parameter
from .loading import (
    LoadedModel,
    ModelLoadError,
    forward_inputs,
    load_model,
    packaged_model_path,
)
from .state import (
    StateMismatchError,
    add_delta,
    arrays_to_state,
    check_same_layout,
    flatten_state,
    load_trainable_state,
    state_delta,
    state_to_arrays,
    trainable_state,
    unflatten_state,
    unwrap,
)
from .texts import LabeledTexts, TokenizedTexts, batch_inputs, tokenize
from .tiny import write_tiny_bert, write_tiny_causal_lm

__all__ = [
    "EvalResult",
    "FinetuneMode",
    "LabeledTexts",
    "LoadedModel",
    "MeanPoolingClassifier",
    "ModelConfig",
    "ModelLoadError",
    "Pooling",
    "StateMismatchError",
    "TaskKind",
    "TokenizedTexts",
    "add_delta",
    "arrays_to_state",
    "batch_inputs",
    "evaluate_model",
    "flatten_state",
    "check_same_layout",
    "forward_inputs",
    "is_head_parameter",
    "load_model",
    "load_trainable_state",
    "packaged_model_path",
    "state_delta",
    "state_to_arrays",
    "tokenize",
    "trainable_state",
    "unflatten_state",
    "unwrap",
    "write_tiny_bert",
    "write_tiny_causal_lm",
]
