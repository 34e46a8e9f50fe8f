"""Imported by every Python process started with this folder on PYTHONPATH (the
``broken`` run of ``benchmarks/audit.py`` only): weakens DP-SGD noise 4x while
the accountant records the full noise. See ``weaken.py``."""

import os

if os.environ.get("FEDSHIELD_WEAKEN_FACTOR"):
    from weaken import install

    install(float(os.environ["FEDSHIELD_WEAKEN_FACTOR"]))
