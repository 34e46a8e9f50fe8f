"""What a model is: loading, task heads, LoRA, tiny test configs, state <-> arrays."""

from .config import ConfigError, FinetuneMode, ModelConfig, Pooling, TaskKind
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
from .tiny import write_tiny_bert

__all__ = [
    "ConfigError",
    "FinetuneMode",
    "LoadedModel",
    "MeanPoolingClassifier",
    "ModelConfig",
    "ModelLoadError",
    "Pooling",
    "StateMismatchError",
    "TaskKind",
    "add_delta",
    "arrays_to_state",
    "flatten_state",
    "check_same_layout",
    "forward_inputs",
    "is_head_parameter",
    "load_model",
    "load_trainable_state",
    "packaged_model_path",
    "state_delta",
    "state_to_arrays",
    "trainable_state",
    "unflatten_state",
    "unwrap",
    "write_tiny_bert",
]
