"""A deliberately broken DP-SGD, for audits to catch: never importable from the
package or reachable from the CLI.

:func:`install` makes every Opacus DP optimizer (the book-keeping, ghost and hooks
modes all step through one of these two classes) add ``factor`` times the noise
it reports, while the accountant goes on recording the full noise multiplier
(its step hook reads ``noise_multiplier`` after the noise was added). The claimed
epsilon is then a lie of the kind an implementation bug would tell.

Used by ``tests/privacy/test_gradient_canaries.py`` (in process) and by
``benchmarks/audit.py``'s ``broken`` run, whose simulation processes import it
through ``benchmarks/broken_dp/sitecustomize.py`` (that folder is put first on
PYTHONPATH for that run only). When ``FEDSHIELD_WEAKEN_MARKER`` names a file,
the first weakened step appends a line to it, so the benchmark can check that
the broken mechanism really ran.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opacus.optimizers.optimizer import DPOptimizer
from opacus.optimizers.optimizer_fast_gradient_clipping import (
    DPOptimizerFastGradientClipping,
)

_CLASSES = (DPOptimizer, DPOptimizerFastGradientClipping)
_ORIGINAL: dict[type, Callable[[Any], None]] = {}


def _weakened(original: Callable[[Any], None], factor: float) -> Callable[[Any], None]:
    def add_noise(self: Any) -> None:
        reported = self.noise_multiplier
        self.noise_multiplier = reported * factor
        try:
            original(self)
        finally:
            self.noise_multiplier = reported  # what the accountant records
        marker = os.environ.get("FEDSHIELD_WEAKEN_MARKER")
        if marker and not getattr(self, "_weaken_marked", False):
            with open(marker, "a") as f:
                f.write(f"{os.getpid()} noise x{factor}\n")
            self._weaken_marked = True

    return add_noise


def install(factor: float) -> None:
    """Weaken every DP optimizer's noise by ``factor`` (idempotent)."""
    for cls in _CLASSES:
        original = _ORIGINAL.setdefault(cls, cls.add_noise)
        cls.add_noise = _weakened(original, factor)  # type: ignore[method-assign]


def uninstall() -> None:
    for cls, original in _ORIGINAL.items():
        cls.add_noise = original  # type: ignore[method-assign]
    _ORIGINAL.clear()


@contextmanager
def weakened(factor: float) -> Iterator[None]:
    install(factor)
    try:
        yield
    finally:
        uninstall()
