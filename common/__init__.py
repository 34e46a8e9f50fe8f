"""The small base that both apps (and the CLI) share.

Nothing here imports another fedshield package: ``client``, ``server``, ``models``,
``privacy``, ``simulations`` and ``cli`` all build on it.
"""
