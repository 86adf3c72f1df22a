"""proofs.abi holds exactly tdxmodel.abi's values as z3 constants."""

import pytest
import z3

from proofs import abi as zabi
from tdxmodel import abi


def test_every_constant_is_mirrored_with_its_value():
    assert set(zabi.Z3_CONSTANTS) == {c.name for c in abi.CONSTANTS}
    for c in abi.CONSTANTS:
        z = getattr(zabi, c.name)
        assert z3.is_bv_value(z) and z.size() == zabi.REG_BITS and z.as_long() == c.value, c.name


def test_width_is_a_parameter():
    assert zabi.bv("TDX_CMD_GET_REPORT0", 32).size() == 32
    assert z3.simplify(zabi.neg_errno("EIO", 32)).as_long() == (1 << 32) - abi.EIO
    with pytest.raises(ValueError, match="does not fit"):
        zabi.bv("TDX_OPERAND_INVALID", 32)
    with pytest.raises(ValueError, match="no ABI constant"):
        zabi.bv("TDX_NOT_A_THING")
    with pytest.raises(ValueError, match="width"):
        zabi.bv("EIO", 0)


def test_linux_spelling_is_the_module_status_shifted():
    # The drift style.md lesson 4 warns about: 0xC0000100 after >> 32 versus 0xC000010000000000.
    for linux, module in (("LINUX_TDCALL_INVALID_OPERAND", "TDX_OPERAND_INVALID"),
                          ("LINUX_TDCALL_OPERAND_BUSY", "TDX_OPERAND_BUSY")):
        s = z3.SolverFor("QF_BV")
        s.add(z3.LShR(zabi.bv(module), 32) != zabi.bv(linux))
        assert s.check() == z3.unsat
