"""TDG.MR.REPORT's RTMR lock window per module version and its interrupt check (ref §4.3 rows 5-7,
"Lock window"; §4.8).

1.5.01 holds the RTMR lock shared only around its snapshot of TDINFO and TEE_INFO_HASH, then checks
for a pending interrupt (row 6) and has the CPU build the report without the lock; 1.0 keeps the lock
until the report is built. Neither holds it for the copy-out (rows 8-9). The step hook runs work at
exactly those points inside a REPORT, so the windows are observable without timing.
"""

from __future__ import annotations

import hashlib

import pytest

from tdxmodel import abi, errors
from tdxmodel.report import TdReport

PAGE = abi.TDX_PAGE_SIZE
OUT, RD, EXT = 4 * PAGE, 5 * PAGE, 6 * PAGE
BUSY_RTMR = abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR
DATA = hashlib.sha384(b"lock window").digest()
VERSIONS = ("1.0", "1.5")


def _guest(make_module, version):
    m = make_module(memory_pages=8, version=version)
    for gpa in (OUT, RD, EXT):
        m.set_page_state(gpa, 1, "private")
    m.write_memory(RD, b"r" * 64)
    return m


def _try_exclusive(module):
    """What an EXTEND on another vCPU would meet at this instant: 0 (taken, then put back) or BUSY."""
    status = module.rtmr_lock_try(True)
    if status == abi.TDX_SUCCESS:
        module.rtmr_unlock(True)
    return status


# (version, point) -> what an EXTEND meets there (ref §4.3 "Lock window")
WINDOW = {
    ("1.5", "snapshot"): abi.TDX_SUCCESS,  # 1.5.01 released the lock with the snapshot
    ("1.5", "built"): abi.TDX_SUCCESS,
    ("1.0", "snapshot"): BUSY_RTMR,        # 1.0 holds it through SEAMREPORT
    ("1.0", "built"): abi.TDX_SUCCESS,     # and releases it before the copy-out
}


@pytest.mark.parametrize("version,point", sorted(WINDOW))
@pytest.mark.parametrize("form", ["gpa", "host"])
def test_lock_window_per_version(make_module, version, point, form):
    m = _guest(make_module, version)
    seen = {}

    def hook(at):
        if at == point:
            seen[at] = _try_exclusive(m)
    m._set_step_hook(hook)
    if form == "gpa":
        assert m.mr_report(OUT, RD) == abi.TDX_SUCCESS
    else:
        m.report(b"r" * 64)
    m._set_step_hook(None)
    assert seen == {point: WINDOW[(version, point)]}


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_extend_inside_the_window_is_not_in_the_report(make_module, version):
    """An EXTEND that lands after the snapshot (possible on 1.5 only) is not in this report: the report
    carries the RTMRs it snapshotted, with a TEE_INFO_HASH and MAC that match them."""
    m = _guest(make_module, version)
    before = m.rtmr(2)
    outcome = []

    def hook(at):
        if at == "snapshot" and not outcome:
            try:
                m.extend(2, DATA)
                outcome.append("extended")
            except errors.OperandBusy:
                outcome.append("busy")
    m._set_step_hook(hook)
    report = TdReport.from_bytes(m.report(b"r" * 64))
    m._set_step_hook(None)
    assert outcome == (["extended"] if version == "1.5" else ["busy"])
    assert report.rtmr[2] == before
    assert report.check_hashes() == {"TEE_TCB_INFO_HASH": True, "TEE_INFO_HASH": True}
    assert m.verify(report.to_bytes()) == (abi.TDX_SUCCESS if version == "1.5" else
                                           abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RAX)
    expected = hashlib.sha384(before + DATA).digest() if version == "1.5" else before
    assert m.rtmr(2) == expected


def test_interrupt_reexecutes_the_report_on_1_5(make_module):
    """Row 6: a pending interrupt makes the 1.5 module leave the TDCALL without RAX; the guest executes
    it again, so the caller sees one successful REPORT, taken after the interruption."""
    m = _guest(make_module, "1.5")
    points = []
    m._set_step_hook(points.append)
    m.inject_interrupts(2)
    before = m.counters()
    assert m.mr_report(OUT, RD) == abi.TDX_SUCCESS
    after = m.counters()
    m._set_step_hook(None)
    assert m.pending_interrupts == 0
    assert points == ["snapshot", "snapshot", "snapshot", "built"]
    assert after["report_interrupts"] - before["report_interrupts"] == 2
    assert after["reports"] - before["reports"] == 1                     # one TDCALL for the guest
    assert after["rtmr_shared_acquired"] - before["rtmr_shared_acquired"] == 3
    report = TdReport.from_bytes(m.read_memory(OUT, abi.TDX_REPORT_LEN))
    assert report.reportdata == b"r" * 64


def test_an_extend_during_the_interruption_is_in_the_reexecuted_report(make_module):
    m = _guest(make_module, "1.5")
    m.inject_interrupts(1)
    state = {"n": 0}

    def hook(at):
        if at == "snapshot":
            state["n"] += 1
            if state["n"] == 1:  # the interrupted attempt: the vCPU left the TDCALL
                m.extend(1, DATA)
    m._set_step_hook(hook)
    report = TdReport.from_bytes(m.report(b"x"))
    m._set_step_hook(None)
    assert report.rtmr[1] == hashlib.sha384(bytes(48) + DATA).digest()
    assert report.check_hashes()["TEE_INFO_HASH"]


def test_interrupts_are_never_checked_on_1_0(make_module):
    m = _guest(make_module, "1.0")
    m.inject_interrupts(3)
    assert m.mr_report(OUT, RD) == abi.TDX_SUCCESS
    assert m.pending_interrupts == 3 and m.counters()["report_interrupts"] == 0


def test_busy_comes_before_the_interrupt_check(make_module):
    """Row 5 before row 6: with the lock held exclusive the REPORT answers BUSY and consumes nothing."""
    m = _guest(make_module, "1.5")
    m.inject_interrupts(1)
    assert m.rtmr_lock_try(True) == abi.TDX_SUCCESS
    try:
        assert m.mr_report(OUT, RD) == BUSY_RTMR
    finally:
        m.rtmr_unlock(True)
    assert m.pending_interrupts == 1


def test_batch_rows_reexecute_transparently(make_module):
    import numpy as np
    m = _guest(make_module, "1.5")
    m.inject_interrupts(5)
    rd = np.arange(3 * 64, dtype=np.uint64).astype(np.uint8).reshape(3, 64)
    reports, statuses = m.report_batch(rd)
    assert not statuses.any() and m.pending_interrupts == 0
    assert m.counters()["report_interrupts"] == 5
    for i in range(3):
        assert TdReport.from_bytes(reports[i].tobytes()).reportdata == rd[i].tobytes()


def test_hook_errors_surface_after_the_leaf(make_module):
    m = _guest(make_module, "1.5")

    def hook(at):
        raise KeyError(at)
    m._set_step_hook(hook)
    with pytest.raises(KeyError, match="snapshot"):
        m.report(b"")
    m._set_step_hook(None)
    m.report(b"")  # the sink was emptied


@pytest.mark.parametrize("bad", [-1, 1 << 32, 1.5, True])
def test_inject_interrupts_rejects_bad_counts(make_module, bad):
    m = _guest(make_module, "1.5")
    with pytest.raises((TypeError, ValueError)):
        m.inject_interrupts(bad)
