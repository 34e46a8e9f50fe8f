"""Book-keeping (BK) ghost clipping: DP-SGD per-sample clipping in ONE backward pass.

Bu, Wang, Zha, Karypis, "Differentially Private Optimization on Large Model at Small
Cost", ICML 2023.

- :mod:`.layers`: per-sample gradient norms and clipped sums of one layer (the ghost
  norm identities), and which layers are supported.
- :mod:`.hooks`: the forward/backward hooks that book-keep activations and output
  gradients in one backward pass, and the clipping.
- :mod:`.engine`: :func:`make_private_bookkeeping`, the Opacus wiring (Poisson
  sampling, noise, accountant), with the DP-SGD step's math and measured cost.
"""

from .engine import BookkeepingPrivate, make_private_bookkeeping
from .hooks import UnsupportedTrainableModuleError
from .layers import SUPPORTED_MODULE_TYPES

__all__ = [
    "SUPPORTED_MODULE_TYPES",
    "BookkeepingPrivate",
    "UnsupportedTrainableModuleError",
    "make_private_bookkeeping",
]
