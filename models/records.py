"""Typed reads of Flower ConfigRecord values, with errors that name the key.

ConfigRecord values are a union of scalars and lists; these helpers check the type
a protocol message needs and raise ValueError (which the callers turn into a
dropped site or an error reply) when a peer sent something else.
"""

from __future__ import annotations

from flwr.app import ConfigRecord

__all__ = ["read_bytes", "read_bytes_list", "read_float", "read_int", "read_int_list"]


def _get(record: ConfigRecord, key: str) -> object:
    if key not in record:
        raise ValueError(f"the message lacks {key!r}")
    return record[key]


def read_int(record: ConfigRecord, key: str) -> int:
    value = _get(record, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key!r} must be an int; found {type(value).__name__}")
    return value


def read_float(record: ConfigRecord, key: str) -> float:
    value = _get(record, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} must be a number; found {type(value).__name__}")
    return float(value)


def read_bytes(record: ConfigRecord, key: str) -> bytes:
    value = _get(record, key)
    if not isinstance(value, bytes):
        raise ValueError(f"{key!r} must be bytes; found {type(value).__name__}")
    return value


def read_int_list(record: ConfigRecord, key: str) -> list[int]:
    value = _get(record, key)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"{key!r} must be a list of ints")
    return [int(v) for v in value]


def read_bytes_list(record: ConfigRecord, key: str) -> list[bytes]:
    value = _get(record, key)
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise ValueError(f"{key!r} must be a list of bytes")
    return [bytes(v) for v in value]
