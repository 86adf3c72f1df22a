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


_CLASS_MASK = _abi.VALUES["TDX_STATUS_CLASS_MASK"]
#: Where a status's class starts: Linux compares ``status >> 32`` (ref §2.4), the lowest bit of
#: TDX_STATUS_CLASS_MASK (bits 63:32, ref §4.1).
STATUS_CLASS_SHIFT = (_CLASS_MASK & -_CLASS_MASK).bit_length() - 1


def status_class(status: z3.BitVecRef) -> z3.BitVecRef:
    """status_class(status: BitVec) -> BitVec: ``status >> 32`` as Linux writes it - a logical shift
    (LShR), never the arithmetic ``>>`` that would smear bit 63 (style.md lesson 10)."""
    return z3.LShR(status, STATUS_CLASS_SHIFT)


def status_operand(status: z3.BitVecRef) -> z3.BitVecRef:
    """status_operand(status: BitVec) -> BitVec[32]: bits 31:0, the operand id (ref §4.1)."""
    return z3.Extract(STATUS_CLASS_SHIFT - 1, 0, status)


#: Every ABI constant as a 64-bit z3 value, by name (checked against the table in test_abi.py).
Z3_CONSTANTS: Dict[str, z3.BitVecRef] = {c.name: bv(c.name) for c in _abi.CONSTANTS}
globals().update(Z3_CONSTANTS)
