"""``python -m simulations`` == the ``fedshield`` command."""

from .cli import main

main()
