"""The ``fedshield`` command, its verbs grouped by who runs them.

- site operators: ``scrub`` (PII-scrub a file), ``ledger show|plot|export``,
  ``site keygen|check|start`` (the SuperNode);
- coordinators: ``federation init|add-site|register|revoke|sites|run``,
  ``superlink start``;
- simulation: ``simulate`` (the Flower app on the simulation engine);
- auditors: ``audit`` (membership-inference audit of a run), ``ledger verify``.

The CLI sits on top: it may import every other fedshield package; none imports it.
"""

from .main import app, main

__all__ = ["app", "main"]
