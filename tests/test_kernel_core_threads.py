"""Real threads against the guest kernel: 6.16's mr_lock (ref §2.5 step 1, §4.8) and the allocator.

Each test runs on both backends. They show that an emulated syscall waiting for mr_lock does not hold
the GIL (the main thread keeps running and can deliver the signal that interrupts it), that mr_lock
serialises the driver's REPORTs and EXTENDs so the module never answers BUSY to them, and that the
allocator stays consistent when many threads allocate at once.
"""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from tdxmodel import abi, profiles

BUF = 0x10000
REQ_LEN = abi.TDX_REPORT_REQ_LEN
RD_OFF = abi.TDR_OFF_REPORTDATA
JOIN_TIMEOUT = 20.0


class Caller(threading.Thread):
    """Run fn() in a thread; .result holds its return value (or the exception it raised)."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.result = None
        self.started_call = threading.Event()

    def run(self):
        self.started_call.set()
        try:
            self.result = self.fn()
        except BaseException as exc:  # surfaced by finish()
            self.result = exc

    def finish(self):
        self.join(JOIN_TIMEOUT)
        assert not self.is_alive(), "the call never returned"
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def mapped_process(kernel, pages=1):
    p = kernel.process()
    p.mmap(BUF, pages * abi.TDX_PAGE_SIZE, "rw")
    return p


def report0(p, fd, addr=BUF):
    return p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, addr)


def wait_until_blocked(caller, seconds=0.3):
    """The caller is inside the syscall and has not come back."""
    assert caller.started_call.wait(JOIN_TIMEOUT)
    time.sleep(seconds)
    return caller.is_alive()


def test_contended_ioctl_waits_for_mr_lock_then_succeeds(make_kernel):
    k = make_kernel("v6.16")
    p = mapped_process(k)
    p.poke(BUF, bytes(range(64)))
    fd = p.open(k.device_path)
    assert k.mr_lock_try()
    caller = Caller(lambda: report0(p, fd))
    caller.start()
    # the ioctl waits without the GIL: this thread keeps running while it is blocked
    assert wait_until_blocked(caller)
    assert p.peek(BUF + 64, 1024) == bytes(1024), "nothing is copied out while the lock is held"
    k.mr_lock_release()
    assert caller.finish() == 0
    assert p.peek(BUF + 64 + RD_OFF, 64) == bytes(range(64))
    c = k.counters()
    assert c["locks_held"] == 0 and c["locks_taken"] == c["locks_released"]


def test_signal_from_another_thread_interrupts_the_wait(make_kernel):
    k = make_kernel("v6.16")
    p = mapped_process(k)
    p.poke(BUF, b"\x11" * 64)
    before = p.peek(BUF, REQ_LEN)
    fd = p.open(k.device_path)
    assert k.mr_lock_try()
    try:
        caller = Caller(lambda: report0(p, fd))
        caller.start()
        assert wait_until_blocked(caller)
        p.signal_pending = True  # delivered while the other thread waits in the kernel
        assert caller.finish() == -abi.EINTR
    finally:
        k.mr_lock_release()
    assert p.peek(BUF, REQ_LEN) == before, "an interrupted ioctl touches no user memory"
    assert p.last_trace() == [], "it never reached an injection point"


def test_signal_matters_only_when_the_lock_is_contended(make_kernel):
    k = make_kernel("v6.16")
    p = mapped_process(k)
    fd = p.open(k.device_path)
    p.signal_pending = True
    assert report0(p, fd) == 0, "the uncontended fast path never looks at signals"
    assert k.mr_lock_try()
    try:
        assert report0(p, fd) == -abi.EINTR
    finally:
        k.mr_lock_release()
    p.signal_pending = False
    assert report0(p, fd) == 0


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_concurrent_reports_each_carry_their_own_reportdata(make_kernel, driver):
    k = make_kernel(driver)
    threads, calls = 4, 40
    cmd = profiles.get(driver).report.value
    out_off = profiles.get(driver).report.field("tdreport").offset
    procs = [mapped_process(k) for _ in range(threads)]
    mismatches = []

    def worker(t):
        p = procs[t]
        fd = p.open(k.device_path)
        rets = []
        for i in range(calls):
            reportdata = bytes([t, i]) * 32
            p.poke(BUF, reportdata + bytes(REQ_LEN - 64))
            rets.append(p.ioctl(fd, cmd, BUF))
            if p.peek(BUF + out_off + RD_OFF, 64) != reportdata:
                mismatches.append((t, i))
        return rets

    callers = [Caller(lambda t=t: worker(t)) for t in range(threads)]
    for c in callers:
        c.start()
    results = [c.finish() for c in callers]
    assert all(r == 0 for rets in results for r in rets)
    assert mismatches == []
    c = k.counters()
    per_call = 0 if profiles.get(driver).cached_report_buf else 2
    assert c["allocs"] - c["resident"] == threads * calls * per_call
    assert c["outstanding"] == c["resident"]


def test_mr_lock_keeps_module_busy_away_from_driver_reports_and_extends(make_kernel):
    """ref §4.8: REPORT takes the module's RTMR lock shared and EXTEND exclusive, and the module answers
    BUSY to a conflicting leaf; 6.16's mr_lock serialises the driver's own leaves, so concurrent
    ioctls and RTMR writes all succeed, and no extend is lost."""
    k = make_kernel("v6.16")
    rtmr_dir = abi.MEASUREMENT_DIRS[0]
    extends_per_thread, reports_per_thread = 25, 60

    def extender(index):
        p = mapped_process(k)
        fd = p.open(f"{rtmr_dir}/rtmr{index}:sha384", 1)  # O_WRONLY
        rets = []
        for i in range(extends_per_thread):
            p.poke(BUF, bytes([index, i]) * 24)
            rets.append(p.pwrite(fd, BUF, 48, 0))
        return rets

    def reporter():
        p = mapped_process(k)
        fd = p.open(k.device_path)
        return [report0(p, fd) for _ in range(reports_per_thread)]

    callers = [Caller(lambda i=i: extender(i)) for i in (2, 3)] + [Caller(reporter) for _ in range(2)]
    for c in callers:
        c.start()
    results = [c.finish() for c in callers]
    assert results[0] == [48] * extends_per_thread and results[1] == [48] * extends_per_thread
    assert results[2] == [0] * reports_per_thread and results[3] == [0] * reports_per_thread
    for index in (2, 3):
        expected = bytes(48)
        for i in range(extends_per_thread):
            expected = hashlib.sha384(expected + bytes([index, i]) * 24).digest()
        assert k.module.rtmr(index) == expected


def test_allocator_survives_threads_racing_for_few_pages(make_kernel):
    """Four kernel pages for four threads that each need a slab object and a page per call: some calls
    may find memory exhausted (-ENOMEM, nothing changed); none may corrupt the allocator."""
    k = make_kernel("v4-2022-04", memory_pages=20)
    threads, calls = 4, 150

    def worker():
        p = mapped_process(k)
        p.poke(BUF, b"\x42" * 64)
        fd = p.open(k.device_path)
        rets = []
        for _ in range(calls):
            ret = p.ioctl(fd, abi.TDX_CMD_GET_TDREPORT, BUF)
            rets.append(ret)
            if ret == 0:
                assert p.peek(BUF + RD_OFF, 64) == b"\x42" * 64
                p.poke(BUF, b"\x42" * 64)  # the report overwrote the request in place
        return rets

    callers = [Caller(worker) for _ in range(threads)]
    for c in callers:
        c.start()
    rets = [r for c in callers for r in c.finish()]
    assert set(rets) <= {0, -abi.ENOMEM}
    assert rets.count(0) > 0
    c = k.counters()
    assert c["outstanding"] == 0
    # every page came back: a lone caller now always succeeds
    p = mapped_process(k)
    fd = p.open(k.device_path)
    assert all(p.ioctl(fd, abi.TDX_CMD_GET_TDREPORT, BUF) == 0 for _ in range(20))


@pytest.mark.parametrize("call", ["pread", "pwrite"])
def test_measurement_file_waits_for_mr_lock_and_a_signal_interrupts_it(make_kernel, call):
    """ref §2.5: reading a LIVE register (rtmrN) and writing one both go through mr_lock; a waiter is
    interrupted by a signal delivered from another thread, and the RTMR is left unchanged."""
    k = make_kernel("v6.16")
    p = mapped_process(k)
    p.poke(BUF, b"\x5c" * 48)
    fd = p.open(f"{abi.MEASUREMENT_DIRS[0]}/rtmr3:sha384", 2)  # O_RDWR
    rtmr_before = k.module.rtmr(3)
    user_before = p.peek(BUF + 64, 48)
    syscall = getattr(p, call)
    assert k.mr_lock_try()
    try:
        caller = Caller(lambda: syscall(fd, BUF + (64 if call == "pread" else 0), 48, 0))
        caller.start()
        assert wait_until_blocked(caller)
        p.signal_pending = True
        assert caller.finish() == -abi.EINTR
    finally:
        k.mr_lock_release()
    assert k.module.rtmr(3) == rtmr_before
    assert p.peek(BUF + 64, 48) == user_before
    p.signal_pending = False
    # uncontended, the same call goes through
    if call == "pwrite":
        assert p.pwrite(fd, BUF, 48, 0) == 48
        assert k.module.rtmr(3) == hashlib.sha384(rtmr_before + b"\x5c" * 48).digest()
    else:
        assert p.pread(fd, BUF + 64, 48, 0) == 48
        assert p.peek(BUF + 64, 48) == k.module.rtmr(3)


def test_fail_nth_fires_exactly_once_for_threads_sharing_a_process(make_kernel):
    """fail-nth belongs to the task (ref §7): with threads of one Process racing through user copies,
    the N-th eligible point fails exactly once, and fail-nth then reads 0."""
    k = make_kernel("v6.2")
    p = mapped_process(k, pages=4)
    fd = p.open(k.device_path)
    threads, calls = 4, 25
    eligible_per_call = 2  # the two user copies; ignore-gfp-wait hides both allocations
    p.fail_nth = threads * calls * eligible_per_call // 2 + 1

    def worker(t):
        return [report0(p, fd, BUF + t * abi.TDX_PAGE_SIZE) for _ in range(calls)]

    callers = [Caller(lambda t=t: worker(t)) for t in range(threads)]
    for c in callers:
        c.start()
    rets = [r for c in callers for r in c.finish()]
    assert sorted(set(rets)) == [-abi.EFAULT, 0]
    assert rets.count(-abi.EFAULT) == 1
    assert p.fail_nth == 0


def test_memory_one_process_freed_serves_another(make_kernel):
    """Two kernel pages: one slab page for the kmalloc(64) and one page for v4's get_zeroed_page. After
    one process's ioctl freed its page, another process's ioctl gets it (the core's per-process
    allocation caches give everything back before an allocation may fail)."""
    k = make_kernel("v4-2022-04", memory_pages=18)
    first, second = mapped_process(k), mapped_process(k)
    for p in (first, second, first, second):
        p.poke(BUF, b"\x01" * 64)
        assert p.ioctl(p.open(k.device_path), abi.TDX_CMD_GET_TDREPORT, BUF) == 0
        assert p.peek(BUF + RD_OFF, 64) == b"\x01" * 64
    c = k.counters()
    assert c["outstanding"] == 0 and c["page_allocs"] == 4
