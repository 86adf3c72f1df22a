"""v6.16+ (ref §2.5), row by row, on both backends: the report buffer kept from init, mr_lock,
-ENXIO/-EBUSY/-EINTR, and the measurement files.
"""

import hashlib
import os
import threading

import pytest

from tdxmodel import abi, errors
from tdxmodel.config import ModuleConfig

from tests.lockcheck import LockCheckedKernel

DRIVER = "v6.16"
PAGE = abi.TDX_PAGE_SIZE
REQ = 0x20000
BUF = 0x40000
CMD = abi.TDX_CMD_GET_REPORT0
OUT = abi.TDX_REPORT_REQ_OFF_TDREPORT
REPORTDATA = bytes(range(64))
FILL = 0xA5
MDIR = abi.MEASUREMENT_DIRS[0]
INVALID_RCX = abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX
BUSY = abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR


def balanced(k):
    c = k.counters()
    # the report buffer, tsm-mr's attribute array and context (ref §2.5 "Init order") and the quote
    # buffer (quote.md §2.2), kept from init to exit
    assert c["resident"] == 4 and c["outstanding"] == 4, c
    assert c["locks_held"] == 0 and c["locks_taken"] == c["locks_released"], c
    return c


@pytest.fixture
def dev(make_kernel):
    """A 6.16 kernel whose every error return is checked at once for a leaked mr_lock."""
    k = LockCheckedKernel(make_kernel(DRIVER, mrconfigid=bytes([7]) * 48, mrowner=bytes([8]) * 48,
                                      mrownerconfig=bytes([9]) * 48))
    p = k.process()
    p.mmap(REQ - PAGE, 3 * PAGE, "rw")
    p.poke(REQ - PAGE, bytes([FILL]) * 3 * PAGE)
    p.poke(REQ, REPORTDATA)
    p.mmap(BUF, PAGE, "rw")
    fd = p.open("/dev/tdx_guest")
    assert fd >= 3
    return k, p, fd


def call(k, p, fd, cmd=CMD, arg=REQ):
    ret = p.ioctl(fd, cmd, arg)
    balanced(k)
    return ret


def snapshot(p):
    return p.peek(REQ - PAGE, 3 * PAGE)


def kernel_memory(k):
    m = k.module
    return m.read_memory(16 * PAGE, (m.memory_pages - 16) * PAGE)


# ------------------------------------------------------------------------------------------ init
def test_init_keeps_one_report_buffer_and_issues_one_report(make_kernel):
    k = make_kernel(DRIVER)
    c = balanced(k)
    assert c["allocs"] == 4 and c["slab_allocs"] == 3 and c["page_allocs"] == 1 and c["frees"] == 0
    assert k.module.counters()["reports"] == 1
    # the buffer holds the init-time report (zero REPORTDATA), 1024-aligned in guest memory
    where = kernel_memory(k).find(k.module.report(bytes(64)))
    assert where >= 0 and where % abi.TDX_REPORT_LEN == 0


def test_init_allocation_failure_aborts_load(backend, make_module):
    with pytest.raises(errors.KernelError) as e:
        backend.Kernel(make_module(), DRIVER, fail_nth=1)
    assert e.value.errno == abi.ENOMEM


def test_init_report_failure_aborts_load(backend, make_module):
    m = make_module()
    with pytest.raises(errors.KernelError) as e:
        backend.Kernel(m, DRIVER, misaligned_report_buf=True)
    assert e.value.errno == abi.ENXIO and e.value.status == INVALID_RCX
    assert m.counters()["reports"] == 1


def test_init_quote_buffer_failure_aborts_load(backend, make_module):
    with pytest.raises(errors.KernelError) as e:
        backend.Kernel(make_module(), DRIVER, fail_nth=4)  # after tdx_mr_init's three (quote.md §2.2)
    assert e.value.errno == abi.ENOMEM


@pytest.mark.parametrize("nth", [2, 3])
def test_init_tsm_mr_attribute_group_failure_aborts_load(backend, make_module, nth):
    """tsm_mr_create_attribute_group's two kzallocs (ref §2.5 "Init order" 1.3, §7): either failing
    fails the load with -ENOMEM, after the init REPORT was issued, and leaves the kernel memory as a
    load that never happened (the report buffer is unwound too)."""
    m = make_module()
    with pytest.raises(errors.KernelError) as e:
        backend.Kernel(m, DRIVER, fail_nth=nth)
    assert e.value.errno == abi.ENOMEM
    assert m.counters()["reports"] == 1
    k = backend.Kernel(m, DRIVER)   # the memory the failed load took is all free again
    balanced(k)
    assert k.injection_points()[:3] == ["report_buf:kzalloc", "tsm_mr_attrs:kzalloc", "tsm_mr_ctx:kzalloc"]


def test_init_fail_nth_beyond_the_points_loads_and_leaves_defaults(backend, make_module):
    k = backend.Kernel(make_module(), DRIVER, fail_nth=5)  # four init points: the fifth is never reached
    balanced(k)
    assert k.fault("failslab").ignore_gfp_wait is True and k.fault("fail_page_alloc").min_order == 1


# ------------------------------------------------------------------------------------------ ioctl rows
def test_row5_success_and_selftest_check(dev):
    k, p, fd = dev
    before = snapshot(p)
    assert call(k, p, fd) == 0
    assert p.peek(REQ + OUT, abi.TDX_REPORT_LEN) == k.module.report(REPORTDATA)
    assert p.peek(REQ + 192, 64) == REPORTDATA  # ref §3
    after = snapshot(p)
    lo, hi = PAGE + OUT, PAGE + abi.TDX_REPORT_REQ_LEN
    assert after[:lo] == before[:lo] and after[hi:] == before[hi:]
    c = k.counters()
    assert c["allocs"] == 4 and c["locks_taken"] == 2  # init (the four resident buffers) and this call: no allocation


def test_row1_contended_lock_with_signal_is_eintr(dev):
    k, p, fd = dev
    before = snapshot(p)
    assert k.mr_lock_try()
    p.signal_pending = True
    try:
        assert p.ioctl(fd, CMD, REQ) == -abi.EINTR
        assert p.last_trace() == []
    finally:
        k.mr_lock_release()
    assert snapshot(p) == before
    balanced(k)


def test_row1_uncontended_lock_ignores_signals(dev):
    k, p, fd = dev
    p.signal_pending = True
    assert call(k, p, fd) == 0


def test_row1_contended_lock_waits_then_proceeds(dev):
    k, p, fd = dev
    assert k.mr_lock_try()
    result = []
    t = threading.Thread(target=lambda: result.append(p.ioctl(fd, CMD, REQ)))
    t.start()
    t.join(0.2)
    assert t.is_alive() and result == []  # waiting for mr_lock
    k.mr_lock_release()
    t.join(10)
    assert result == [0]
    balanced(k)


def test_row1_signal_interrupts_a_waiting_caller(dev):
    k, p, fd = dev
    assert k.mr_lock_try()
    result = []
    t = threading.Thread(target=lambda: result.append(p.ioctl(fd, CMD, REQ)))
    t.start()
    t.join(0.1)
    assert t.is_alive()
    p.signal_pending = True
    t.join(10)
    k.mr_lock_release()
    assert result == [-abi.EINTR]
    balanced(k)


@pytest.mark.parametrize("fault_at", [0, 1, 32, 63])
def test_row2_copy_in_fault_changes_only_the_cached_reportdata(dev, fault_at):
    """#2: -EFAULT; inside the kernel the cache's REPORTDATA holds the copied prefix, zero-filled."""
    k, p, fd = dev
    init_report = k.module.report(bytes(64))
    where = kernel_memory(k).find(init_report)
    arg = REQ + PAGE - fault_at
    p.poke(arg, REPORTDATA)
    p.mprotect(REQ + PAGE, PAGE, "w")
    before = snapshot(p)
    assert call(k, p, fd, arg=arg) == -abi.EFAULT
    assert snapshot(p) == before
    cache = kernel_memory(k)[where:where + abi.TDX_REPORT_LEN]
    rd = abi.TDR_OFF_REPORTDATA
    assert cache[rd:rd + 64] == REPORTDATA[:fault_at] + bytes(64 - fault_at)
    assert cache[:rd] + cache[rd + 64:] == init_report[:rd] + init_report[rd + 64:]


@pytest.mark.parametrize("fault_at", [0, 1, 32, 63])
def test_row2_copy_in_fault_zero_fills_over_an_earlier_reportdata(dev, fault_at):
    """#2 after a report with non-zero REPORTDATA: copy_from_user zero-fills the uncopied tail, so
    the cache holds the new prefix and zeros, none of the earlier REPORTDATA (with zero REPORTDATA
    cached, a copy that left the tail alone would look the same)."""
    k, p, fd = dev
    earlier = bytes([0xC3]) * 64
    p.poke(BUF, earlier)
    assert call(k, p, fd, arg=BUF) == 0
    cached = p.peek(BUF + OUT, abi.TDX_REPORT_LEN)
    rd = abi.TDR_OFF_REPORTDATA
    assert cached[rd:rd + 64] == earlier
    where = kernel_memory(k).find(cached)
    assert where >= 0
    arg = REQ + PAGE - fault_at
    p.poke(arg, REPORTDATA)
    p.mprotect(REQ + PAGE, PAGE, "w")
    assert call(k, p, fd, arg=arg) == -abi.EFAULT
    cache = kernel_memory(k)[where:where + abi.TDX_REPORT_LEN]
    assert cache[rd:rd + 64] == REPORTDATA[:fault_at] + bytes(64 - fault_at)
    assert cache[:rd] + cache[rd + 64:] == cached[:rd] + cached[rd + 64:]


@pytest.mark.parametrize("how, status, ret", [
    ("forced", INVALID_RCX, -abi.ENXIO),
    ("forced", abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX, -abi.ENXIO),
    ("forced", abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8, -abi.ENXIO),
    ("rtmr_lock", BUSY, -abi.EBUSY),  # another vCPU extending outside the driver
    ("forced", BUSY, -abi.EBUSY),
    ("forced", abi.TDX_INVALID_CPUSVN, -abi.EIO),
])
def test_row3_tdcall_status_mapping(dev, how, status, ret):
    k, p, fd = dev
    before = snapshot(p)
    if how == "forced":
        k.force_tdcall(status, leaf=abi.TDG_MR_REPORT)
    else:
        assert k.module.rtmr_lock_try(True) == 0
    try:
        assert call(k, p, fd) == ret
    finally:
        if how == "rtmr_lock":
            k.module.rtmr_unlock(True)
    assert snapshot(p) == before
    assert call(k, p, fd) == 0


@pytest.mark.parametrize("fault_at", [0, 1, 512, 1023])
def test_row4_copy_out_fault_prefix_and_cache_already_new(dev, fault_at):
    k, p, fd = dev
    arg = REQ + PAGE - OUT - fault_at
    p.poke(arg, REPORTDATA)
    p.mprotect(REQ + PAGE, PAGE, "r")
    before = snapshot(p)
    assert call(k, p, fd, arg=arg) == -abi.EFAULT
    report = k.module.report(REPORTDATA)
    after = snapshot(p)
    off = arg + OUT - (REQ - PAGE)
    assert after[off:off + fault_at] == report[:fault_at]
    assert after[:off] == before[:off] and after[off + fault_at:] == before[off + fault_at:]
    assert kernel_memory(k).find(report) >= 0  # the cache already holds the new report


def test_injected_faults_on_both_copies(dev):
    k, p, fd = dev
    before = snapshot(p)
    for n, point in ((1, "reportdata:copy_from_user"), (2, "tdreport:copy_to_user")):
        p.fail_nth = n
        assert call(k, p, fd) == -abi.EFAULT
        assert [t[0] for t in p.last_trace() if t[2]] == [point]
        assert snapshot(p) == before
    p.fail_nth = 3
    assert call(k, p, fd) == 0
    assert p.fail_nth == 1


@pytest.mark.parametrize("cmd", [abi.TDX_CMD_GET_TDREPORT, 0, 0xC4405402])
def test_unknown_command_is_enotty(dev, cmd):
    k, p, fd = dev
    before = snapshot(p)
    assert call(k, p, fd, cmd=cmd) == -abi.ENOTTY
    assert snapshot(p) == before


def test_no_poison_reaches_the_user(dev):
    k, p, fd = dev
    poison = bytes([abi.SLAB_POISON_INUSE]) * 4
    for n in range(1, 4):
        p.fail_nth = n
        call(k, p, fd)
        p.fail_nth = 0
        assert poison not in snapshot(p)


# ------------------------------------------------------------------------------------------ measurements
def mopen(p, name, flags=os.O_RDONLY, d=MDIR):
    return p.open(f"{d}/{name}", flags)


def mread(k, p, name, count=48, offset=0, check=True):
    fd = mopen(p, name)
    assert fd >= 3
    p.poke(BUF, bytes(PAGE))
    n = p.pread(fd, BUF, count, offset)
    assert p.close(fd) == 0
    if check:
        balanced(k)
    return n, p.peek(BUF, max(n, 0))


def mwrite(k, p, name, data, count=None, offset=0, check=True):
    fd = mopen(p, name, os.O_WRONLY)
    assert fd >= 3
    p.poke(BUF, data)
    n = p.pwrite(fd, BUF, len(data) if count is None else count, offset)
    assert p.close(fd) == 0
    if check:
        balanced(k)
    return n


@pytest.mark.parametrize("d", abi.MEASUREMENT_DIRS)
def test_read_every_measurement_file(dev, d):
    k, p, fd = dev
    m = k.module
    tdinfo = m.tdinfo()
    for name, (off, _) in abi.MEASUREMENTS.items():
        f = mopen(p, name, d=d)
        assert f >= 3
        assert p.pread(f, BUF, 48, 0) == 48
        assert p.peek(BUF, 48) == tdinfo[off - abi.TDR_OFF_TDINFO:off - abi.TDR_OFF_TDINFO + 48], name
        assert p.close(f) == 0
    assert p.peek(BUF, 0) == b""
    assert mread(k, p, "mrconfigid")[1] == bytes([7]) * 48
    assert mread(k, p, "mrtd:sha384")[1] == ModuleConfig().mrtd


def test_measurement_reads_follow_sysfs_rules(dev):
    k, p, fd = dev
    full = mread(k, p, "rtmr1:sha384")[1]
    assert mread(k, p, "rtmr1:sha384", count=100) == (48, full)
    assert mread(k, p, "rtmr1:sha384", count=10, offset=40) == (8, full[40:])
    assert mread(k, p, "rtmr1:sha384", count=48, offset=48) == (0, b"")
    assert mread(k, p, "rtmr1:sha384", count=0) == (0, b"")
    f = mopen(p, "rtmr1:sha384")
    assert p.pread(f, BUF, -1, 0) == -abi.EINVAL
    assert p.pread(f, BUF, 48, -1) == -abi.EINVAL
    assert p.ioctl(f, CMD, REQ) == -abi.ENOTTY
    assert p.close(f) == 0


def test_write_extends_the_rtmr(dev):
    k, p, fd = dev
    m = k.module
    data = bytes(range(100, 148))
    for index in range(4):
        old = m.rtmr(index)
        assert mwrite(k, p, f"rtmr{index}:sha384", data) == 48
        assert m.rtmr(index) == hashlib.sha384(old + data).digest()
        assert mread(k, p, f"rtmr{index}:sha384")[1] == m.rtmr(index)
    assert call(k, p, fd) == 0  # and the next report carries it
    report = p.peek(REQ + OUT, abi.TDX_REPORT_LEN)
    assert report[abi.TDR_OFF_RTMR0:abi.TDR_OFF_RTMR0 + 48] == m.rtmr(0)


@pytest.mark.parametrize("count, offset, ret", [
    (47, 0, -abi.EINVAL), (48, 1, -abi.EINVAL), (1, 47, -abi.EINVAL), (30, 10, -abi.EINVAL),  # tsm-mr
    (0, 0, 0), (0, 47, 0),                               # sysfs: a clipped count of 0
    (48, 48, -abi.EFBIG), (0, 48, -abi.EFBIG), (1, 1 << 40, -abi.EFBIG),  # sysfs: past the end
    (-1, 0, -abi.EINVAL), (48, -1, -abi.EINVAL),         # the VFS
])
def test_write_refusals_in_kernfs_sysfs_tsm_mr_order(dev, count, offset, ret):
    """ref §2.5 "Write" #2-#3: sysfs gives -EFBIG for offset >= 48 and 0 for a count clipped to 0;
    tsm-mr -EINVAL unless offset 0 and 48 bytes. Nothing is extended."""
    k, p, fd = dev
    old = k.module.rtmr(2)
    assert mwrite(k, p, "rtmr2:sha384", bytes(range(64)), count=count, offset=offset) == ret
    assert k.module.rtmr(2) == old


@pytest.mark.parametrize("count", [49, 64, PAGE, PAGE + 1000])
def test_a_long_write_at_offset_0_extends_with_the_first_48_bytes(dev, count):
    """ref §2.5 "Write": kernfs copies min(count, PAGE_SIZE) bytes, sysfs clips the count to 48; the
    write extends with the first 48 bytes and returns 48."""
    k, p, fd = dev
    p.mmap(BUF + PAGE, PAGE, "rw")
    data = bytes(range(256)) * 16
    old = k.module.rtmr(2)
    assert mwrite(k, p, "rtmr2:sha384", data[:min(count, 2 * PAGE)], count=count) == 48
    assert k.module.rtmr(2) == hashlib.sha384(old + data[:48]).digest()


@pytest.mark.parametrize("count, offset", [(64, 0), (48, 48), (100, 1), (PAGE, 0)])
def test_the_user_bytes_are_copied_before_any_size_check(dev, count, offset):
    """ref §2.5 "Write" #1: kernfs copies min(count, PAGE_SIZE) user bytes first; a short copy is
    -EFAULT whatever the offset and count, even where only 48 bytes would be used."""
    k, p, fd = dev
    old = k.module.rtmr(2)
    f = mopen(p, "rtmr2:sha384", os.O_WRONLY)
    start = BUF + PAGE - min(count, PAGE) + 1  # the last byte falls on the unmapped next page
    assert p.pwrite(f, start, count, offset) == -abi.EFAULT
    assert p.last_trace()[-1] == ("measurement:copy_from_user", "fail_usercopy", False)
    assert p.close(f) == 0
    assert k.module.rtmr(2) == old
    balanced(k)


def test_a_zero_byte_write_copies_nothing(dev):
    k, p, fd = dev
    f = mopen(p, "rtmr2:sha384", os.O_WRONLY)
    assert p.pwrite(f, 0xDEAD0000, 0, 0) == 0  # no byte to copy, so no fault
    assert "measurement:copy_from_user" not in [pt for pt, _, _ in p.last_trace()]
    assert p.close(f) == 0


def test_read_refreshes_a_stale_cache_only(dev):
    """The cache starts stale; a LIVE read refreshes it with a REPORT; a successful write makes it
    stale again; non-LIVE files never refresh."""
    k, p, fd = dev
    reports = lambda: k.module.counters()["reports"]  # noqa: E731
    r0 = reports()
    mread(k, p, "mrtd:sha384")
    assert reports() == r0
    mread(k, p, "rtmr0:sha384")
    assert reports() == r0 + 1
    mread(k, p, "rtmr3:sha384")
    assert reports() == r0 + 1  # fresh now
    mwrite(k, p, "rtmr3:sha384", bytes(48))
    mread(k, p, "rtmr0:sha384")
    assert reports() == r0 + 2


@pytest.mark.parametrize("status, ret", [(INVALID_RCX, -abi.ENXIO), (BUSY, -abi.EBUSY),
                                         (abi.TDX_INVALID_CPUSVN, -abi.EIO)])
def test_refresh_errors_propagate(dev, status, ret):
    k, p, fd = dev
    k.force_tdcall(status, leaf=abi.TDG_MR_REPORT)
    assert mread(k, p, "mrowner")[0] == 48  # not LIVE: served from the cache, no TDCALL
    assert mread(k, p, "rtmr0:sha384")[0] == ret
    assert mread(k, p, "rtmr0:sha384")[0] == 48  # still stale, refreshed now


@pytest.mark.parametrize("how, status, ret", [
    ("forced", abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX, -abi.ENXIO),
    ("rtmr_lock", BUSY, -abi.EBUSY),  # a REPORT on another vCPU holds the RTMR lock shared
    ("forced", abi.TDX_INVALID_CPUSVN, -abi.EIO),
])
def test_write_errors(dev, how, status, ret):
    k, p, fd = dev
    mread(k, p, "rtmr1:sha384")  # fresh cache
    old = k.module.rtmr(1)
    r = k.module.counters()["reports"]
    if how == "forced":
        k.force_tdcall(status, leaf=abi.TDG_MR_RTMR_EXTEND)
    else:
        assert k.module.rtmr_lock_try(False) == 0
    try:
        assert mwrite(k, p, "rtmr1:sha384", bytes(48)) == ret
    finally:
        if how == "rtmr_lock":
            k.module.rtmr_unlock(False)
    assert k.module.rtmr(1) == old
    mread(k, p, "rtmr1:sha384")
    assert k.module.counters()["reports"] == r  # a failed write leaves the cache fresh


def test_measurement_eintr(dev):
    k, p, fd = dev
    assert k.mr_lock_try()
    p.signal_pending = True
    try:
        assert mread(k, p, "rtmr0:sha384", check=False)[0] == -abi.EINTR
        assert mwrite(k, p, "rtmr0:sha384", bytes(48), check=False) == -abi.EINTR
        assert mread(k, p, "mrtd:sha384", check=False)[0] == 48  # no lock needed
    finally:
        k.mr_lock_release()
    balanced(k)


def test_measurement_user_faults(dev):
    k, p, fd = dev
    old = k.module.rtmr(2)
    f = mopen(p, "rtmr2:sha384", os.O_RDWR)
    p.mprotect(BUF, PAGE, "")
    assert p.pread(f, BUF, 48, 0) == -abi.EFAULT
    assert p.pwrite(f, BUF, 48, 0) == -abi.EFAULT
    p.mprotect(BUF, PAGE, "rw")
    p.fail_nth = 1
    assert p.pwrite(f, BUF, 48, 0) == -abi.EFAULT
    # kernfs' bounce buffer comes first; ignore-gfp-wait hides it from fail-nth (ref §7)
    assert p.last_trace() == [("kernfs_buf:kmalloc", "failslab", False),
                              ("measurement:copy_from_user", "fail_usercopy", True)]
    p.fail_nth = 1
    assert p.pread(f, BUF, 48, 0) == -abi.EFAULT
    assert p.last_trace() == [("kernfs_buf:kmalloc", "failslab", False),
                              ("measurement:copy_to_user", "fail_usercopy", True)]
    assert p.close(f) == 0
    assert k.module.rtmr(2) == old
    balanced(k)


def test_measurement_file_modes(dev):
    k, p, fd = dev
    for name, (_, writable) in abi.MEASUREMENTS.items():
        for flags in (os.O_WRONLY, os.O_RDWR):
            f = mopen(p, name, flags)
            if writable:
                assert f >= 3 and p.close(f) == 0
            else:
                assert f == -abi.EACCES, name  # 0444
    f = mopen(p, "rtmr0:sha384", os.O_WRONLY)
    assert p.pread(f, BUF, 48, 0) == -abi.EBADF
    assert p.close(f) == 0
    f = mopen(p, "rtmr0:sha384", os.O_RDONLY)
    assert p.pwrite(f, BUF, 48, 0) == -abi.EBADF
    assert p.close(f) == 0
    assert p.open(f"{MDIR}/rtmr4:sha384") == -abi.ENOENT
    assert p.open(f"{MDIR}/") == -abi.ENOENT


@pytest.mark.parametrize("driver", ["v4-2022-04", "v6.2"])
def test_older_drivers_have_no_measurement_files(make_kernel, driver):
    p = make_kernel(driver).process()
    for d in abi.MEASUREMENT_DIRS:
        assert p.open(f"{d}/rtmr0:sha384") == -abi.ENOENT


# ------------------------------------------------------------------------------------------ threads
def test_mr_lock_serialises_reports_and_extends(dev):
    """Driver-issued REPORTs and EXTENDs from many threads never meet the module's BUSY (ref §4.8:
    mr_lock serialises them), and no extend is lost."""
    k, p, fd = dev
    m = k.module
    old = m.rtmr(3)
    data = bytes([0x42]) * 48
    rounds, results = 15, []
    lock = threading.Lock()

    def reporter():
        q = k.process()
        q.mmap(REQ, 2 * PAGE, "rw")
        qfd = q.open(k.device_path)
        out = [q.ioctl(qfd, CMD, REQ) for _ in range(rounds)]
        q.close(qfd)
        with lock:
            results.extend(out)

    def extender():
        q = k.process()
        q.mmap(BUF, PAGE, "rw")
        q.poke(BUF, data)
        qfd = q.open(f"{MDIR}/rtmr3:sha384", os.O_RDWR)
        out = []
        for _ in range(rounds):
            out.append(q.pwrite(qfd, BUF, 48, 0) - 48)
            out.append(q.pread(qfd, BUF + 64, 48, 0) - 48)
        q.close(qfd)
        with lock:
            results.extend(out)

    threads = [threading.Thread(target=f) for f in (reporter, extender, reporter, extender)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [0] * len(results) and len(results) == 6 * rounds
    expected = old
    for _ in range(2 * rounds):
        expected = hashlib.sha384(expected + data).digest()
    assert m.rtmr(3) == expected
    assert m.counters()["rtmr_busy"] == 0
    balanced(k)


# ------------------------------------------------------------------------------ NULL argument
def test_null_arg_skips_the_copy_in_and_reports_with_the_stale_reportdata(dev):
    """ref §2.5 "NULL arg": with arg == 0 step 2 is skipped (sockptr_is_null), the REPORT is issued
    with whatever REPORTDATA sits at buf+128, and only the copy-out to address 64 can fault."""
    k, p, fd = dev
    assert call(k, p, fd) == 0  # buf+128 now holds REPORTDATA
    reports = k.module.counters()["reports"]
    assert call(k, p, fd, arg=0) == -abi.EFAULT  # page 0 unmapped: the copy-out faults
    assert k.module.counters()["reports"] == reports + 1  # the TDCALL was issued
    assert p.last_trace() == [("tdreport:copy_to_user", "fail_usercopy", False)]
    p.mmap(0, PAGE, "rw")
    assert call(k, p, fd, arg=0) == 0
    report = p.peek(OUT, abi.TDX_REPORT_LEN)
    assert report[abi.TDR_OFF_REPORTDATA:abi.TDR_OFF_REPORTDATA + 64] == REPORTDATA
    assert report == k.module.report(REPORTDATA)  # the stale REPORTDATA, current measurements
    assert p.peek(0, 64) == bytes(64)  # nothing read from, nothing written to arg+0..63


def test_null_arg_tdcall_failure_comes_first(dev):
    k, p, fd = dev
    k.force_tdcall(INVALID_RCX, leaf=abi.TDG_MR_REPORT)
    assert call(k, p, fd, arg=0) == -abi.ENXIO
    assert p.last_trace() == []


# --------------------------------------------------------------------- tsm-mr's rwsem vs mr_lock
def test_a_fresh_rtmr_read_takes_no_mr_lock(dev):
    """ref §2.5 "Read": a LIVE read whose cache is current takes tsm-mr's rwsem only; mr_lock is for
    the refresh. So while an ioctl (here: another task) holds mr_lock, a fresh read still returns,
    even with a signal pending, and the stale one is the only one that meets mr_lock."""
    k, p, fd = dev
    assert mread(k, p, "rtmr0:sha384")[0] == 48  # refresh: the cache is fresh now
    taken = k.counters()["locks_taken"]
    assert k.mr_lock_try()
    p.signal_pending = True
    try:
        n, data = mread(k, p, "rtmr1:sha384", check=False)
        assert (n, data) == (48, k.module.rtmr(1))
        assert k.counters()["locks_taken"] == taken + 1  # only mr_lock_try's
    finally:
        k.mr_lock_release()
        p.signal_pending = False
    assert mwrite(k, p, "rtmr1:sha384", bytes(48)) == 48  # stale again
    assert k.mr_lock_try()
    p.signal_pending = True
    try:
        assert mread(k, p, "rtmr1:sha384", check=False)[0] == -abi.EINTR  # the refresh needs mr_lock
    finally:
        k.mr_lock_release()
    balanced(k)


def test_a_writer_waiting_for_mr_lock_holds_tsm_mr_rwsem(dev):
    """ref §2.5 "Read" #3 and "Write" #4: a sysfs writer takes tsm-mr's rwsem for writing, then waits
    for mr_lock; a reader meanwhile waits for the rwsem, and a signal pending makes it -EINTR, even on
    a register that is not LIVE."""
    k, p, fd = dev
    writer = k.process()
    writer.mmap(BUF, PAGE, "rw")
    wfd = writer.open(f"{MDIR}/rtmr2:sha384", os.O_WRONLY)
    assert k.mr_lock_try()
    result = []
    t = threading.Thread(target=lambda: result.append(writer.pwrite(wfd, BUF, 48, 0)))
    t.start()
    try:
        p.signal_pending = True
        f = mopen(p, "mrtd:sha384")
        for _ in range(5000):  # until the writer holds the rwsem (it reads 48 before that)
            n = p.pread(f, BUF, 48, 0)
            if n == -abi.EINTR:
                break
            assert n == 48
            t.join(0.001)
        assert n == -abi.EINTR
        assert p.close(f) == 0
    finally:
        k.mr_lock_release()
        t.join()
    assert result == [48]
    p.signal_pending = False
    assert mread(k, p, "mrtd:sha384")[0] == 48
    assert writer.close(wfd) == 0
    balanced(k)


@pytest.mark.parametrize("count, size_class", [(1, 8), (48, 64), (4095, 4096), (9000, abi.KMALLOC_8K)])
def test_kernfs_bounce_buffer_of_a_write_fails_first(dev, count, size_class):
    """kernfs kmallocs min(count, PAGE_SIZE) + 1 before copying anything (ref §2.5 "Write" #1, §7):
    failslab failing it is -ENOMEM whatever the offset, before -EFAULT, -EFBIG or -EINVAL."""
    k, p, fd = dev
    old = k.module.rtmr(2)
    f = mopen(p, "rtmr2:sha384", os.O_RDWR)
    p.mmap(BUF + PAGE, 2 * PAGE, "rw")
    fs = k.fault("failslab")
    fs.ignore_gfp_wait = False
    fs.probability, fs.times, fs.space = 100, -1, 0
    for offset in (0, 1, 48):
        assert p.pwrite(f, 0, count, offset) == -abi.ENOMEM   # address 0 would fault: never reached
        assert p.last_trace() == [("kernfs_buf:kmalloc", "failslab", True)]
    # space: the budget counts the object size the cache hands out (kmalloc-8k for 4096 + 1)
    fs.space = size_class + 1   # should_fail takes the size off a larger budget and does not fail
    assert p.pwrite(f, BUF, count, 0) == (48 if count >= 48 else -abi.EINVAL)
    assert fs.space == 1
    fs.probability, fs.space = 100, 0
    assert p.pwrite(f, BUF, 0, 0) == -abi.ENOMEM   # even a 0-byte write kmallocs its 1-byte NUL
    fs.probability = 0
    assert p.close(f) == 0
    assert (k.module.rtmr(2) == old) == (count < 48)
    balanced(k)


def test_kernfs_bounce_buffer_of_a_read(dev):
    """A read kmallocs min(count, PAGE_SIZE) first (ref §2.5 "Read" #1): -ENOMEM even at offset 48;
    a 0-byte read asks kmalloc(0), ZERO_SIZE_PTR, and passes no point."""
    k, p, fd = dev
    f = mopen(p, "rtmr0:sha384", os.O_RDONLY)
    fs = k.fault("failslab")
    fs.ignore_gfp_wait = False
    fs.probability, fs.times = 100, -1
    for offset in (0, 48):
        assert p.pread(f, BUF, 48, offset) == -abi.ENOMEM
        assert p.last_trace() == [("kernfs_buf:kmalloc", "failslab", True)]
    assert p.pread(f, BUF, 0, 0) == 0 and p.last_trace() == []
    fs.probability = 0
    assert p.pread(f, BUF, 48, 0) == 48
    assert k.counters()["slab_allocs"] == 3 + 1  # init's three and this read's buffer
    assert p.close(f) == 0
    balanced(k)
