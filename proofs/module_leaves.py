"""The TDX module leaves a driver issues: TDG.MR.REPORT (ref §4.3) and TDG.MR.RTMR.EXTEND (ref §4.6).

``tdg_mr_report`` and ``tdg_mr_rtmr_extend`` mirror the reference's check tables row by row over
64-bit registers (the width is a parameter). Theorem ``operand_checks`` states, separately and
declaratively, which status each input must get; the proof shows the mirrored check order meets it
for every 64-bit RCX/RDX/R8, every EPT outcome and every lock state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import z3

from proofs import abi as zabi
from proofs.abi import REG_BITS


@dataclass
class LeafResult:
    status: z3.BitVecRef     # RAX on exit (meaningless when exited)
    exited: z3.BoolRef       # no status: TD exit to the VMM or #VE (ref §4.3 step 3b)
    written: z3.BoolRef      # the output (TDREPORT / RTMR) was written
    rows: List[Tuple[str, z3.BoolRef]] = field(default_factory=list)   # (row, "this row decided")


class _Checks:
    """Early-return chain: ``fail_if(cond, status)`` mirrors ``if (cond) return status;``."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.done = z3.BoolVal(False)
        self.exited = z3.BoolVal(False)
        self.status = z3.BitVecVal(0, width)
        self.rows: List[Tuple[str, z3.BoolRef]] = []

    def fail_if(self, cond: z3.BoolRef, status: z3.BitVecRef, row: str = "") -> None:
        hit = z3.And(z3.Not(self.done), cond)
        self.rows.append((row, hit))
        self.status = z3.If(hit, status, self.status)
        self.done = z3.Or(self.done, hit)

    def exit_if(self, cond: z3.BoolRef, row: str = "") -> None:
        hit = z3.And(z3.Not(self.done), cond)
        self.rows.append((row, hit))
        self.exited = z3.Or(self.exited, hit)
        self.done = z3.Or(self.done, hit)

    def result(self, last_row: str) -> LeafResult:
        written = z3.Not(self.done)
        return LeafResult(self.status, self.exited, written, self.rows + [(last_row, written)])


def _misaligned(reg: z3.BitVecRef, align_name: str) -> z3.BoolRef:
    # The module tests the low bits, as C does: (gpa & (align - 1)) != 0.
    return (reg & (zabi.bv(align_name, reg.size()) - 1)) != 0


def _gpa_invalid(reg: z3.BitVecRef) -> z3.BoolRef:
    # Bits above MAX_PA other than the shared bit (ref §4.3 step 3; abi.TDX_GPA_INVALID_MASK).
    return (reg & zabi.bv("TDX_GPA_INVALID_MASK", reg.size())) != 0


def _shared(reg: z3.BitVecRef) -> z3.BoolRef:
    return (reg & zabi.bv("TDX_GPA_SHARED_BIT", reg.size())) != 0


def _with_operand(status: str, operand: str, width: int) -> z3.BitVecRef:
    return zabi.bv(status, width) | zabi.bv(operand, width)


def tdg_mr_report(rcx: z3.BitVecRef, rdx: z3.BitVecRef, r8: z3.BitVecRef, *, rdx_ept_ok: z3.BoolRef,
                  rcx_ept_ok: z3.BoolRef, rtmr_lock_free: z3.BoolRef) -> LeafResult:
    """tdg_mr_report(rcx, rdx, r8, *, rdx_ept_ok, rcx_ept_ok, rtmr_lock_free) -> LeafResult (ref §4.3)."""
    w = rcx.size()
    c = _Checks(w)
    invalid_rcx = _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_RCX", w)
    invalid_rdx = _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_RDX", w)
    c.fail_if(_misaligned(rcx, "TDX_REPORT_ALIGN"), invalid_rcx, "1")
    c.fail_if(_misaligned(rdx, "TDX_REPORTDATA_ALIGN"), invalid_rdx, "2")
    c.fail_if(_gpa_invalid(rdx), invalid_rdx, "3")
    c.exit_if(z3.Not(rdx_ept_ok), "3b")
    c.fail_if(r8 != 0, _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_R8", w), "4")
    c.fail_if(z3.Not(rtmr_lock_free), _with_operand("TDX_OPERAND_BUSY", "TDX_OPERAND_ID_RTMR", w), "5")
    # 6 (re-execution after an interrupt) and 7 (the CPU builds the report) are invisible here.
    c.fail_if(_gpa_invalid(rcx), invalid_rcx, "8")
    c.exit_if(z3.Not(rcx_ept_ok), "8 (EPT as in 3b)")
    return c.result("9: copy 1024 B")


def tdg_mr_rtmr_extend(rcx: z3.BitVecRef, rdx: z3.BitVecRef, *, rcx_ept_ok: z3.BoolRef,
                       rtmr_lock_free: z3.BoolRef) -> LeafResult:
    """tdg_mr_rtmr_extend(rcx, rdx, *, rcx_ept_ok, rtmr_lock_free) -> LeafResult (ref §4.6)."""
    w = rcx.size()
    c = _Checks(w)
    invalid_rcx = _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_RCX", w)
    c.fail_if(_misaligned(rcx, "TDX_EXTEND_ALIGN"), invalid_rcx, "1")
    c.fail_if(z3.Or(_gpa_invalid(rcx), _shared(rcx)), invalid_rcx, "2 (private only)")
    c.exit_if(z3.Not(rcx_ept_ok), "2 (EPT problems)")
    c.fail_if(z3.UGE(rdx, zabi.bv("TDX_NUM_RTMRS", w)),       # full 64-bit compare
              _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_RDX", w), "3")
    c.fail_if(z3.Not(rtmr_lock_free), _with_operand("TDX_OPERAND_BUSY", "TDX_OPERAND_ID_RTMR", w), "4")
    return c.result("5: extend RTMR[idx]")


def report_statuses(width: int = REG_BITS) -> List[z3.BitVecRef]:
    """Every status TDG.MR.REPORT can return (ref §4.3): what the driver encodings let the TDCALL yield.
    Theorem operand_checks proves the leaf returns nothing else."""
    return [zabi.bv("TDX_SUCCESS", width),
            _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_RCX", width),
            _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_RDX", width),
            _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_R8", width),
            _with_operand("TDX_OPERAND_BUSY", "TDX_OPERAND_ID_RTMR", width)]


# ---------------------------------------------------------------------------- theorem 6
def operand_checks_claim(width: int = REG_BITS, report_leaf=None, extend_leaf=None):
    """Theorem operand_checks (ref §4.3 steps 1-9, §4.6 steps 1-5), for every 64-bit RCX, RDX, R8:

    TDG.MR.REPORT returns OPERAND_INVALID with operand RCX exactly when RCX is not 1024-aligned
    (or, once every earlier check passed, RCX is not a valid GPA); otherwise operand RDX exactly when
    RDX is not 64-aligned or not a valid GPA; otherwise operand R8 exactly when R8 is nonzero (after a
    successful RDX walk); its status is always one of report_statuses(); it writes the TDREPORT
    exactly when it returns TDX_SUCCESS, so nothing is written on any error. The Linux spelling
    (status >> 32 == TDCALL_INVALID_OPERAND) recognises every such status.
    TDG.MR.RTMR.EXTEND likewise: operand RCX exactly when RCX is not 64-aligned, invalid or shared;
    otherwise RDX exactly when RDX >= 4 (after a successful walk); the RTMR changes only on SUCCESS.
    Returns (claim, variables). ``report_leaf`` / ``extend_leaf`` replace the encodings (expected_sat
    uses this to show a wrong check order is caught)."""
    report_leaf = report_leaf or tdg_mr_report
    extend_leaf = extend_leaf or tdg_mr_rtmr_extend
    rcx, rdx, r8 = z3.BitVecs("rcx rdx r8", width)
    rdx_ept_ok, rcx_ept_ok, lock_free = z3.Bools("rdx_ept_ok rcx_ept_ok rtmr_lock_free")
    rep = report_leaf(rcx, rdx, r8, rdx_ept_ok=rdx_ept_ok, rcx_ept_ok=rcx_ept_ok, rtmr_lock_free=lock_free)

    # The statement, written with URem (arithmetic) where the encoding uses masks (bit tests).
    def not_aligned(reg, name):
        return z3.URem(reg, zabi.bv(name, width)) != 0

    def invalid_gpa(reg):
        return z3.UGE(reg & ~zabi.bv("TDX_GPA_SHARED_BIT", width),
                      z3.BitVecVal(1 << zabi._abi.TDX_GPAW, width))

    def with_operand(status, operand):
        return z3.And(zabi.status_class(status) == zabi.bv("LINUX_TDCALL_INVALID_OPERAND", width),
                      zabi.status_operand(status) == zabi.bv(operand, zabi.STATUS_CLASS_SHIFT))

    rcx_bad = not_aligned(rcx, "TDX_REPORT_ALIGN")
    rdx_bad = z3.Or(not_aligned(rdx, "TDX_REPORTDATA_ALIGN"), invalid_gpa(rdx))
    before_r8 = z3.And(z3.Not(rcx_bad), z3.Not(rdx_bad), rdx_ept_ok)
    late_rcx = z3.And(before_r8, r8 == 0, lock_free, invalid_gpa(rcx))
    ok_status = rep.status == zabi.bv("TDX_SUCCESS", width)
    report_claim = z3.And(
        z3.Not(rep.exited) == z3.Or(rcx_bad, rdx_bad, z3.And(rdx_ept_ok, z3.Or(r8 != 0, z3.Not(lock_free),
                                                                              invalid_gpa(rcx), rcx_ept_ok))),
        z3.Implies(z3.Not(rep.exited), z3.And(
            with_operand(rep.status, "TDX_OPERAND_ID_RCX") == z3.Or(rcx_bad, late_rcx),
            with_operand(rep.status, "TDX_OPERAND_ID_RDX") == z3.And(z3.Not(rcx_bad), rdx_bad),
            with_operand(rep.status, "TDX_OPERAND_ID_R8") == z3.And(before_r8, r8 != 0),
            z3.Or([rep.status == s for s in report_statuses(width)]))),
        rep.written == z3.And(z3.Not(rep.exited), ok_status))

    ext_rcx, ext_rdx = z3.BitVecs("extend_rcx extend_rdx", width)
    ext_ept_ok, ext_lock_free = z3.Bools("extend_rcx_ept_ok extend_rtmr_lock_free")
    ext = extend_leaf(ext_rcx, ext_rdx, rcx_ept_ok=ext_ept_ok, rtmr_lock_free=ext_lock_free)
    ext_rcx_bad = z3.Or(not_aligned(ext_rcx, "TDX_EXTEND_ALIGN"), invalid_gpa(ext_rcx),
                        z3.Extract(zabi._abi.TDX_GPAW - 1, zabi._abi.TDX_GPAW - 1, ext_rcx) == 1)
    ext_rdx_bad = z3.And(z3.Not(ext_rcx_bad), ext_ept_ok,
                         z3.UGT(ext_rdx, zabi.bv("TDX_NUM_RTMRS", width) - 1))
    extend_claim = z3.And(
        ext.exited == z3.And(z3.Not(ext_rcx_bad), z3.Not(ext_ept_ok)),
        z3.Implies(z3.Not(ext.exited), z3.And(
            with_operand(ext.status, "TDX_OPERAND_ID_RCX") == ext_rcx_bad,
            with_operand(ext.status, "TDX_OPERAND_ID_RDX") == ext_rdx_bad,
            z3.Or(ext.status == zabi.bv("TDX_SUCCESS", width),
                  ext.status == _with_operand("TDX_OPERAND_BUSY", "TDX_OPERAND_ID_RTMR", width),
                  with_operand(ext.status, "TDX_OPERAND_ID_RCX"),
                  with_operand(ext.status, "TDX_OPERAND_ID_RDX")))),
        ext.written == z3.And(z3.Not(ext.exited), ext.status == zabi.bv("TDX_SUCCESS", width)))

    variables: Dict[str, z3.ExprRef] = {
        "rcx": rcx, "rdx": rdx, "r8": r8, "rdx_ept_ok": rdx_ept_ok, "rcx_ept_ok": rcx_ept_ok,
        "rtmr_lock_free": lock_free, "report_status": rep.status, "report_exited": rep.exited,
        "report_written": rep.written, "extend_rcx": ext_rcx, "extend_rdx": ext_rdx,
        "extend_status": ext.status, "extend_written": ext.written}
    return z3.And(report_claim, extend_claim), variables
