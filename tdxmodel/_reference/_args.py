"""Argument checks shared by the reference kernel's modules: the same rules and messages as the core's
Cython layer (an int that is not a bool, within bounds; a bool)."""

from __future__ import annotations

from typing import Optional

U64 = (1 << 64) - 1
I31 = (1 << 31) - 1


def check_int(name: str, value, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value
