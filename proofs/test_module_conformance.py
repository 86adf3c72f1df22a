"""The module-leaf encodings do not drift from the emulator's Module: for every outcome of
TDG.MR.REPORT and TDG.MR.RTMR.EXTEND (each status, and the TD exit), z3 picks concrete 64-bit
registers reaching it in the encoding - boundary values included - and the Module of each backend
must return that status (or exit), writing nothing unless it succeeds."""

import pytest
import z3

from proofs import abi as zabi
from proofs.module_leaves import report_statuses, tdg_mr_report, tdg_mr_rtmr_extend
from tdxmodel import abi, errors

pytestmark = pytest.mark.proof

PRIVATE_PAGE, SHARED_PAGE, MEMORY_PAGES = 8, 9, 16
WITNESSES_PER_OUTCOME = 3
W = zabi.REG_BITS


def _ept_ok(gpa, shared_allowed=True):
    """The Module's EPT walk succeeds: the private alias on the private page, or the shared alias
    on the shared page (ref §4.3 step 3b); memory beyond MEMORY_PAGES is unmapped."""
    shared = (gpa & zabi.bv("TDX_GPA_SHARED_BIT")) != 0
    page = z3.LShR(gpa & ~zabi.bv("TDX_GPA_SHARED_BIT"), 12)
    ok_private = page == PRIVATE_PAGE
    return z3.If(shared, z3.And(shared_allowed, page == SHARED_PAGE), ok_private)


EXIT = (1 << W) - 1   # stands for "no status: TD exit" in the witness tables


def _witnesses(leaf, variables):
    """For each row of the leaf's check table, up to WITNESSES_PER_OUTCOME distinct register tuples
    for which that row decides the outcome: (row, expected status or EXIT, registers)."""
    out = []
    outcome = z3.If(leaf.exited, z3.BitVecVal(EXIT, W), leaf.status)
    for row, decided in leaf.rows:
        s = z3.SolverFor("QF_BV")
        s.set("timeout", 10_000)
        s.add(decided)
        for _ in range(WITNESSES_PER_OUTCOME):
            if s.check() != z3.sat:
                break
            m = s.model()
            values = [m.eval(v, model_completion=True) for v in variables]
            regs = tuple(x.as_long() if z3.is_bv_value(x) else z3.is_true(x) for x in values)
            out.append((row, m.eval(outcome, model_completion=True).as_long(), regs))
            s.add(z3.Or([v != x for v, x in zip(variables, values)]))
    return out


def _report_cases():
    rcx, rdx, r8 = z3.BitVecs("rcx rdx r8", W)
    lock_free = z3.Bool("lock_free")
    leaf = tdg_mr_report(rcx, rdx, r8, rdx_ept_ok=_ept_ok(rdx), rcx_ept_ok=_ept_ok(rcx), rtmr_lock_free=lock_free)
    return _witnesses(leaf, (rcx, rdx, r8, lock_free))


def _extend_cases():
    rcx, rdx = z3.BitVecs("rcx rdx", W)
    lock_free = z3.Bool("lock_free")
    leaf = tdg_mr_rtmr_extend(rcx, rdx, rcx_ept_ok=_ept_ok(rcx, shared_allowed=False), rtmr_lock_free=lock_free)
    return _witnesses(leaf, (rcx, rdx, lock_free))


REPORT_CASES = _report_cases()
EXTEND_CASES = _extend_cases()


def _module(make_module):
    m = make_module(memory_pages=MEMORY_PAGES)
    m.set_page_state(PRIVATE_PAGE * abi.TDX_PAGE_SIZE, 1, "private")
    m.set_page_state(SHARED_PAGE * abi.TDX_PAGE_SIZE, 1, "shared")
    return m


def _memory(m):
    return m.read_memory(PRIVATE_PAGE * abi.TDX_PAGE_SIZE, 2 * abi.TDX_PAGE_SIZE)


def test_every_row_has_witnesses():
    # Every row of ref §4.3 (rows 1, 2, 3, 3b, 4, 5, 8, 8-EPT, 9) and §4.6 (1, 2, 2-EPT, 3, 4, 5).
    assert len({row for row, _, _ in REPORT_CASES}) == 9
    assert len({row for row, _, _ in EXTEND_CASES}) == 6
    assert {s for _, s, _ in REPORT_CASES} == {z3.simplify(s).as_long() for s in report_statuses()} | {EXIT}


@pytest.mark.parametrize("row,status,regs", REPORT_CASES,
                         ids=[f"row{w}:rcx={r[0]:#x},rdx={r[1]:#x},r8={r[2]:#x},free={r[3]}"
                              for w, s, r in REPORT_CASES])
def test_mr_report_matches_encoding(make_module, row, status, regs):
    rcx, rdx, r8, lock_free = regs
    m = _module(make_module)
    before = _memory(m)
    held = not lock_free and m.rtmr_lock_try(True) == abi.TDX_SUCCESS   # another vCPU extending
    try:
        if status == EXIT:
            with pytest.raises(errors.TdExit):
                m.mr_report(rcx, rdx, r8)
        else:
            assert m.mr_report(rcx, rdx, r8) == status
    finally:
        if held:
            m.rtmr_unlock(True)
    assert (_memory(m) != before) == (status == abi.TDX_SUCCESS)   # written exactly on success


@pytest.mark.parametrize("row,status,regs", EXTEND_CASES,
                         ids=[f"row{w}:rcx={r[0]:#x},rdx={r[1]:#x},free={r[2]}" for w, s, r in EXTEND_CASES])
def test_mr_rtmr_extend_matches_encoding(make_module, row, status, regs):
    rcx, rdx, lock_free = regs
    m = _module(make_module)
    rtmrs = [m.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]
    held = not lock_free and m.rtmr_lock_try(False) == abi.TDX_SUCCESS  # a REPORT in flight
    try:
        if status == EXIT:
            with pytest.raises(errors.TdExit):
                m.mr_rtmr_extend(rcx, rdx)
        else:
            assert m.mr_rtmr_extend(rcx, rdx) == status
    finally:
        if held:
            m.rtmr_unlock(False)
    changed = [m.rtmr(i) != rtmrs[i] for i in range(abi.TDX_NUM_RTMRS)]
    assert changed == [status == abi.TDX_SUCCESS and i == rdx for i in range(abi.TDX_NUM_RTMRS)]
