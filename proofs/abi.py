"""z3 constants derived from ``tdxmodel.abi`` at import (never an ABI literal here).

Every entry of ``tdxmodel.abi.CONSTANTS`` becomes a 64-bit ``BitVecVal`` attribute of this module
(``proofs.abi.TDX_OPERAND_INVALID``); ``bv(name, width)`` gives any other width, and
``neg_errno(name, width)`` the ``-errno`` a syscall returns. The bit width is always a parameter
(style.md lesson 10): nothing here is a mutable global width.
"""

from __future__ import annotations

from typing import Dict

import z3

from tdxmodel import abi as _abi

#: Width of a 64-bit register (RAX/RCX/RDX/R8) and of a syscall's ``long`` return value.
REG_BITS = 64
#: Width of a byte offset inside the caller's buffer: 16 bits hold every offset of a 1088-B request.
OFF_BITS = 16
#: Width of an ioctl command number (``unsigned int cmd``).
CMD_BITS = 32


def bv(name: str, width: int = REG_BITS) -> z3.BitVecRef:
    """bv(name: str, width: int = 64) -> BitVecVal: ``tdxmodel.abi`` constant ``name`` at ``width`` bits.

    Raises ValueError when the value does not fit (a width too small would silently truncate)."""
    if not isinstance(width, int) or width <= 0:
        raise ValueError(f"width must be a positive int, not {width!r}")
    try:
        value = _abi.VALUES[name]
    except KeyError:
        raise ValueError(f"no ABI constant named {name!r} in tdxmodel.abi") from None
    if value >= 1 << width:
        raise ValueError(f"{name} = {value:#x} does not fit in {width} bits")
    return z3.BitVecVal(value, width)


def neg_errno(name: str, width: int = REG_BITS) -> z3.BitVecRef:
    """neg_errno(name: str, width: int = 64) -> BitVecVal: ``-errno`` as a two's-complement return value."""
    return -bv(name, width)


def operand_status(status_name: str, operand_name: str, width: int = REG_BITS) -> z3.BitVecRef:
    """operand_status(status, operand, width=64) -> BitVecVal: a status class with its operand id (ref §4.1)."""
    return bv(status_name, width) | bv(operand_name, width)


#: Every ABI constant as a 64-bit z3 value, by name (checked against the table in test_abi.py).
Z3_CONSTANTS: Dict[str, z3.BitVecRef] = {c.name: bv(c.name) for c in _abi.CONSTANTS}
globals().update(Z3_CONSTANTS)
