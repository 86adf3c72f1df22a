"""The v4 patch of 22 Apr 2022 (ref §2.2), row by row, on both backends: /dev/tdx-attest,
TDX_CMD_GET_TDREPORT on one in-place user buffer, defects included.
"""

import pytest

from tdxmodel import abi

DRIVER = "v4-2022-04"
PAGE = abi.TDX_PAGE_SIZE
REQ = 0x20000
CMD = abi.TDX_CMD_GET_TDREPORT
REPORTDATA = bytes(range(64))
FILL = 0xA5


@pytest.fixture
def dev(make_kernel):
    """(kernel, process, fd) with a 3-page rw buffer at REQ - PAGE; REQ holds REPORTDATA + filler."""
    k = make_kernel(DRIVER)
    p = k.process()
    p.mmap(REQ - PAGE, 3 * PAGE, "rw")
    p.poke(REQ - PAGE, bytes([FILL]) * 3 * PAGE)
    p.poke(REQ, REPORTDATA)
    fd = p.open("/dev/tdx-attest")
    assert fd >= 3
    return k, p, fd


def call(k, p, fd, cmd=CMD, arg=REQ):
    ret = p.ioctl(fd, cmd, arg)
    c = k.counters()
    assert c["outstanding"] == 0 and c["resident"] == 0 and c["locks_held"] == 0, c
    return ret


def snapshot(p):
    return p.peek(REQ - PAGE, 3 * PAGE)


def sweep_settings(k):
    for cap in ("failslab", "fail_page_alloc"):
        k.fault(cap).ignore_gfp_wait = False
    k.fault("fail_page_alloc").min_order = 0


def test_node_and_command(make_kernel):
    k = make_kernel(DRIVER)
    assert k.device_path == "/dev/tdx-attest"
    assert k.process().open("/dev/tdx_guest") == -abi.ENOENT
    assert CMD == abi.ioc(abi.IOC_READ | abi.IOC_WRITE, ord("T"), 1, 8)  # _IOWR('T', 0x01, __u64), ref §1


def test_row6_success_writes_the_report_in_place(dev):
    """#6: user bytes 0..1023 = the TDREPORT for the REPORTDATA in bytes 0..63; nothing else changes."""
    k, p, fd = dev
    before = snapshot(p)
    assert call(k, p, fd) == 0
    report = p.peek(REQ, abi.TDX_REPORT_LEN)
    assert report == k.module.report(REPORTDATA)
    assert report[abi.TDR_OFF_REPORTDATA:abi.TDR_OFF_REPORTDATA + 64] == REPORTDATA
    after = snapshot(p)
    assert after[:PAGE] == before[:PAGE] and after[PAGE + 1024:] == before[PAGE + 1024:]
    assert k.counters()["slab_allocs"] == 1 and k.counters()["page_allocs"] == 1


def test_row1_kmalloc_failure_is_enomem(dev):
    k, p, fd = dev
    sweep_settings(k)
    before = snapshot(p)
    p.fail_nth = 1
    assert call(k, p, fd) == -abi.ENOMEM
    assert [t[0] for t in p.last_trace()] == ["reportdata:kmalloc"]
    assert snapshot(p) == before
    assert k.counters()["allocs"] == 0


def test_row2_page_failure_frees_the_reportdata(dev):
    k, p, fd = dev
    sweep_settings(k)
    before = snapshot(p)
    p.fail_nth = 2
    assert call(k, p, fd) == -abi.ENOMEM
    assert p.last_trace()[-1] == ("tdreport:get_zeroed_page", "fail_page_alloc", True)
    assert snapshot(p) == before
    c = k.counters()
    assert c["allocs"] == 1 and c["frees"] == 1


@pytest.mark.parametrize("fault_at", [0, 1, 32, 63])
def test_row3_copy_in_fault_is_efault_user_untouched(dev, fault_at):
    k, p, fd = dev
    arg = REQ + PAGE - fault_at  # REPORTDATA byte `fault_at` is the first byte of an unreadable page
    p.poke(arg, REPORTDATA)
    p.mprotect(REQ + PAGE, PAGE, "w")
    before = snapshot(p)
    assert call(k, p, fd, arg=arg) == -abi.EFAULT
    assert snapshot(p) == before


def test_row3_copy_in_may_cross_a_page_boundary(dev):
    k, p, fd = dev
    arg = REQ + PAGE - 10
    p.poke(arg, REPORTDATA)
    assert call(k, p, fd, arg=arg) == 0
    assert p.peek(arg, abi.TDX_REPORT_LEN) == k.module.report(REPORTDATA)


@pytest.mark.parametrize("how, status", [
    ("misaligned:tdreport", abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX),
    ("misaligned:reportdata", abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX),
    ("forced", abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8),
    ("rtmr_lock", abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR),
    ("forced", abi.TDX_INVALID_CPUSVN),
])
def test_row4_tdcall_failure_puts_the_masked_status_and_returns_eio(dev, how, status):
    """#4: -EIO, user bytes 0..7 = status & 0xFFFFFFFF00000000 as a 64-bit value; the rest untouched."""
    k, p, fd = dev
    before = snapshot(p)
    if how.startswith("misaligned:"):
        k.force_misaligned(how.split(":")[1])
    elif how == "forced":
        k.force_tdcall(status, leaf=abi.TDG_MR_REPORT)
    else:
        assert k.module.rtmr_lock_try(True) == 0  # another vCPU extending
    try:
        assert call(k, p, fd) == -abi.EIO
    finally:
        if how == "rtmr_lock":
            k.module.rtmr_unlock(True)
    after = snapshot(p)
    assert after[PAGE:PAGE + 8] == (status & abi.LINUX_V4_STATUS_MASK).to_bytes(8, "little")
    assert after[:PAGE] + after[PAGE + 8:] == before[:PAGE] + before[PAGE + 8:]
    k.force_misaligned(None)
    assert call(k, p, fd) == 0  # misalignment off again: the next call succeeds


def test_row4_put_user_fault_still_returns_eio(dev):
    """The reviewers' defect: the put_user result is overwritten, so a read-only buffer gives -EIO
    and no status."""
    k, p, fd = dev
    p.mprotect(REQ, PAGE, "r")
    before = snapshot(p)
    k.force_tdcall(abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX)
    assert call(k, p, fd) == -abi.EIO
    assert snapshot(p) == before


def test_row4_injected_put_user_failure_still_returns_eio(dev):
    k, p, fd = dev
    sweep_settings(k)
    k.force_tdcall(abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR)
    before = snapshot(p)
    p.fail_nth = 4
    assert call(k, p, fd) == -abi.EIO
    assert p.last_trace() == [("reportdata:kmalloc", "failslab", False),
                              ("tdreport:get_zeroed_page", "fail_page_alloc", False),
                              ("reportdata:copy_from_user", "fail_usercopy", False),
                              ("status:put_user", "fail_usercopy", True)]
    assert snapshot(p) == before


@pytest.mark.parametrize("fault_at", [0, 1, 512, 1023])
def test_row5_copy_out_fault_leaves_an_exact_prefix(dev, fault_at):
    """#5: -EFAULT; the bytes before the first unwritable one hold the TDREPORT's prefix."""
    k, p, fd = dev
    arg = REQ + PAGE - fault_at
    p.poke(arg, REPORTDATA)
    p.mprotect(REQ + PAGE, PAGE, "r")
    before = snapshot(p)
    assert call(k, p, fd, arg=arg) == -abi.EFAULT
    report = k.module.report(REPORTDATA)
    after = snapshot(p)
    off = arg - (REQ - PAGE)
    assert after[off:off + fault_at] == report[:fault_at]
    assert after[:off] == before[:off] and after[off + fault_at:] == before[off + fault_at:]


def test_unknown_command_returns_zero_and_touches_nothing(dev):
    """§2.2 dispatch: the posted driver only logs "not supported" and returns 0 (flagged in review)."""
    k, p, fd = dev
    before = snapshot(p)
    for cmd in (abi.TDX_CMD_GET_REPORT0, 0, 0xC0085402):
        assert call(k, p, fd, cmd=cmd) == 0
        assert p.last_trace() == []
    assert snapshot(p) == before
    assert k.counters()["allocs"] == 0


def test_no_uninitialised_memory_reaches_the_user(dev):
    """v4 overwrites the whole kmalloc'd REPORTDATA before the TDCALL reads it and copies out only the
    module-written zeroed page: across every fault the user sees only report bytes or the status."""
    k, p, fd = dev
    poison = bytes([abi.SLAB_POISON_INUSE]) * 4
    sweep_settings(k)
    for n in range(1, 6):
        p.fail_nth = n
        call(k, p, fd)
        p.fail_nth = 0
        assert poison not in snapshot(p)
        p.poke(REQ, REPORTDATA + bytes([FILL]) * (abi.TDX_REPORT_LEN - 64))  # a success wrote in place
    p.fault_user_copy("partial_to_user", at=700)
    assert call(k, p, fd) == -abi.EFAULT
    assert p.peek(REQ, abi.TDX_REPORT_LEN) == (k.module.report(REPORTDATA)[:700]
                                               + bytes([FILL]) * (abi.TDX_REPORT_LEN - 700))


def test_row4_wrapper_mask_decides_not_the_raw_status(dev):
    """#4: the driver tests the wrapper's result, status & 0xFFFFFFFF00000000 (ref §2.2). A nonzero
    status with bits 63:32 clear (no module returns one; forced here) therefore passes as success and
    the still-zeroed page is copied out: 0 returned, 1024 zero bytes in place, nothing put_user()ed."""
    k, p, fd = dev
    k.force_tdcall(0x1, leaf=abi.TDG_MR_REPORT)
    assert call(k, p, fd) == 0
    assert p.peek(REQ, abi.TDX_REPORT_LEN) == bytes(abi.TDX_REPORT_LEN)
    assert [t[0] for t in p.last_trace()] == ["reportdata:kmalloc", "tdreport:get_zeroed_page",
                                             "reportdata:copy_from_user", "tdreport:copy_to_user"]
