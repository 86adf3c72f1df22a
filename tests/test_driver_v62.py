"""Upstream v6.2-v6.15 (ref §2.4), row by row, on both backends: /dev/tdx_guest, TDX_CMD_GET_REPORT0
on the 1088-byte struct tdx_report_req, kmalloc + kzalloc, no lock.
"""

import threading

import pytest

from tdxmodel import abi

DRIVER = "v6.2"
PAGE = abi.TDX_PAGE_SIZE
REQ = 0x20000
CMD = abi.TDX_CMD_GET_REPORT0
OUT = abi.TDX_REPORT_REQ_OFF_TDREPORT
REPORTDATA = bytes(range(64))
FILL = 0xA5


@pytest.fixture
def dev(make_kernel):
    k = make_kernel(DRIVER)
    p = k.process()
    p.mmap(REQ - PAGE, 3 * PAGE, "rw")
    p.poke(REQ - PAGE, bytes([FILL]) * 3 * PAGE)
    p.poke(REQ, REPORTDATA)
    fd = p.open("/dev/tdx_guest")
    assert fd >= 3
    return k, p, fd


def call(k, p, fd, cmd=CMD, arg=REQ):
    ret = p.ioctl(fd, cmd, arg)
    c = k.counters()
    assert c["outstanding"] == 0 and c["resident"] == 0, c
    assert c["locks_taken"] == 0 and c["locks_held"] == 0, c  # this path takes no lock
    return ret


def snapshot(p):
    return p.peek(REQ - PAGE, 3 * PAGE)


def test_node_command_and_struct(make_kernel):
    k = make_kernel(DRIVER)
    assert k.device_path == "/dev/tdx_guest"
    assert k.process().open("/dev/tdx-attest") == -abi.ENOENT
    assert CMD == abi.ioc(abi.IOC_READ | abi.IOC_WRITE, ord("T"), 1, abi.TDX_REPORT_REQ_LEN)  # ref §1
    assert abi.ioc_size(CMD) == 1088 == abi.TDX_REPORT_REQ_LEN


def test_row6_success(dev):
    """#6: arg+64..1087 = TDREPORT; arg+0..63 unchanged; nothing outside the struct changes."""
    k, p, fd = dev
    before = snapshot(p)
    assert call(k, p, fd) == 0
    assert p.peek(REQ + OUT, abi.TDX_REPORT_LEN) == k.module.report(REPORTDATA)
    after = snapshot(p)
    lo, hi = PAGE + OUT, PAGE + abi.TDX_REPORT_REQ_LEN
    assert after[:lo] == before[:lo] and after[hi:] == before[hi:]
    c = k.counters()
    assert c["slab_allocs"] == 2 and c["page_allocs"] == 0


def test_selftest_check(dev):
    """ref §3: REPORTDATA 0..63 comes back at TDREPORT bytes 128..191, i.e. req bytes 192..255."""
    k, p, fd = dev
    assert call(k, p, fd) == 0
    assert p.peek(REQ + 192, 64) == bytes(range(64))
    assert p.close(fd) == 0


def _sweep(k):
    k.fault("failslab").ignore_gfp_wait = False


def test_row1_kmalloc_failure(dev):
    k, p, fd = dev
    _sweep(k)
    before = snapshot(p)
    p.fail_nth = 1
    assert call(k, p, fd) == -abi.ENOMEM
    assert p.last_trace() == [("reportdata:kmalloc", "failslab", True)]
    assert snapshot(p) == before and k.counters()["allocs"] == 0


def test_row2_kzalloc_failure_frees_step_1(dev):
    k, p, fd = dev
    _sweep(k)
    before = snapshot(p)
    p.fail_nth = 2
    assert call(k, p, fd) == -abi.ENOMEM
    assert p.last_trace()[-1] == ("tdreport:kzalloc", "failslab", True)
    assert snapshot(p) == before
    c = k.counters()
    assert c["allocs"] == c["frees"] == 1


@pytest.mark.parametrize("fault_at", [0, 1, 32, 63])
def test_row3_copy_in_fault(dev, fault_at):
    k, p, fd = dev
    arg = REQ + PAGE - fault_at
    p.poke(arg, REPORTDATA)
    p.mprotect(REQ + PAGE, PAGE, "w")
    before = snapshot(p)
    assert call(k, p, fd, arg=arg) == -abi.EFAULT
    assert snapshot(p) == before
    assert k.module.counters()["reports"] == 0  # the TDCALL was never issued


def test_row3_injected_copy_in_fault(dev):
    k, p, fd = dev
    before = snapshot(p)
    p.fail_nth = 1  # the allocations are filtered by default: the copy-in is the first point
    assert call(k, p, fd) == -abi.EFAULT
    assert snapshot(p) == before


@pytest.mark.parametrize("how, status, ret", [
    ("misaligned:tdreport", abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX, -abi.EINVAL),
    ("misaligned:reportdata", abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX, -abi.EINVAL),
    ("forced", abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8, -abi.EINVAL),
    ("forced", abi.TDX_OPERAND_INVALID | 0x1234, -abi.EINVAL),  # the operand id is ignored
    ("rtmr_lock", abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR, -abi.EIO),  # BUSY: -EIO, no retry
    ("forced", abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR, -abi.EIO),
    ("forced", abi.TDX_INVALID_CPUSVN, -abi.EIO),
    ("forced", abi.TDX_OPERAND_ADDR_RANGE_ERROR, -abi.EIO),
])
def test_row4_tdcall_status_mapping(dev, how, status, ret):
    """#4: status>>32 == 0xC0000100 -> -EINVAL, any other nonzero -> -EIO; user untouched."""
    k, p, fd = dev
    before = snapshot(p)
    if how.startswith("misaligned:"):
        k.force_misaligned(how.split(":")[1])
    elif how == "forced":
        k.force_tdcall(status, leaf=abi.TDG_MR_REPORT)
    else:
        assert k.module.rtmr_lock_try(True) == 0
    try:
        assert call(k, p, fd) == ret
    finally:
        if how == "rtmr_lock":
            k.module.rtmr_unlock(True)
    assert snapshot(p) == before
    k.force_misaligned(None)
    assert call(k, p, fd) == 0


@pytest.mark.parametrize("fault_at", [0, 1, 512, 1023])
def test_row5_copy_out_fault_prefix_is_exact(dev, fault_at):
    k, p, fd = dev
    arg = REQ + PAGE - OUT - fault_at  # TDREPORT byte `fault_at` starts an unwritable page
    p.poke(arg, REPORTDATA)
    p.mprotect(REQ + PAGE, PAGE, "r")
    before = snapshot(p)
    assert call(k, p, fd, arg=arg) == -abi.EFAULT
    report = k.module.report(REPORTDATA)
    after = snapshot(p)
    off = arg + OUT - (REQ - PAGE)
    assert after[off:off + fault_at] == report[:fault_at]
    assert after[:off] == before[:off] and after[off + fault_at:] == before[off + fault_at:]


def test_row5_copy_out_stops_at_the_struct_end(dev):
    """The struct ends exactly at a page boundary and the next page is inaccessible: success."""
    k, p, fd = dev
    arg = REQ + PAGE - abi.TDX_REPORT_REQ_LEN
    p.poke(arg, REPORTDATA)
    p.mprotect(REQ + PAGE, PAGE, "")
    assert call(k, p, fd, arg=arg) == 0
    assert p.peek(arg + OUT, abi.TDX_REPORT_LEN) == k.module.report(REPORTDATA)


@pytest.mark.parametrize("cmd", [abi.TDX_CMD_GET_TDREPORT, 0, 0xC4405402, 0x4405401])
def test_unknown_command_is_enotty(dev, cmd):
    k, p, fd = dev
    before = snapshot(p)
    assert call(k, p, fd, cmd=cmd) == -abi.ENOTTY
    assert snapshot(p) == before and k.counters()["allocs"] == 0


def test_concurrent_callers_share_the_allocator(dev):
    """Threads, each its own process, call at once: every report is right, nothing leaks."""
    k, p, fd = dev
    results, guard = [], threading.Lock()

    def caller(tag):
        q = k.process()
        q.mmap(REQ, 2 * PAGE, "rw")
        rd = bytes([tag]) * 64
        q.poke(REQ, rd)
        qfd = q.open(k.device_path)
        ok = [q.ioctl(qfd, CMD, REQ) == 0 and q.peek(REQ + OUT, abi.TDX_REPORT_LEN) == k.module.report(rd)
              for _ in range(20)]
        q.close(qfd)
        with guard:
            results.extend(ok)

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 80
    c = k.counters()
    assert c["outstanding"] == 0 and c["allocs"] == c["frees"] == 160


def test_no_poison_reaches_the_user_under_any_fault(dev):
    k, p, fd = dev
    _sweep(k)
    poison = bytes([abi.SLAB_POISON_INUSE]) * 4
    for n in range(1, 6):
        p.fail_nth = n
        call(k, p, fd)
        p.fail_nth = 0
        assert poison not in snapshot(p)
    p.poke(REQ + OUT, bytes([FILL]) * abi.TDX_REPORT_LEN)
    p.fault_user_copy("partial_to_user", at=100)
    assert call(k, p, fd) == -abi.EFAULT
    assert p.peek(REQ + OUT, abi.TDX_REPORT_LEN) == (k.module.report(REPORTDATA)[:100]
                                                    + bytes([FILL]) * (abi.TDX_REPORT_LEN - 100))
