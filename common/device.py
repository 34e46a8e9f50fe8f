"""Where tensors live: the GPU when there is one, else the CPU; and the forward
pass's precision there.

On a GPU that supports bfloat16, the forward pass runs under bf16 autocast
(matrix products in bf16, reductions and losses in float32). DP is unaffected:
the weights, their gradients and optimizer state stay float32, the per-record
losses are computed in float32, book-keeping clips from float32 copies of what it
records, and Opacus draws the noise in the parameters' dtype (float32). On the CPU
nothing changes (float32 throughout).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["forward_precision", "pick_device"]


def pick_device() -> torch.device:
    """The first CUDA device when one is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def forward_precision(
    device: torch.device,
) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on a CUDA device that supports it; else no change."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
