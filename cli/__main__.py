"""``python -m fedshield.cli`` == the ``fedshield`` command."""

from .main import main

main()
