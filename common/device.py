"""Where tensors live: the GPU when there is one, else the CPU."""

from __future__ import annotations

import torch

__all__ = ["pick_device"]


def pick_device() -> torch.device:
    """The first CUDA device when one is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
