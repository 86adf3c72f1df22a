"""Cases where the two backends once disagreed, each pinned to the kernel's behaviour (docs/CONTRACT.md
"Kernel-model details"); every test body runs on both backends."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from tdxmodel import abi, client

PAGE = abi.TDX_PAGE_SIZE
BUF = 0x10000
UNMAPPED = 0x90000
U64_MAX = (1 << 64) - 1
KERNEL_FIRST_PAGE = 16  # CONTRACT: the kernel's allocator owns pages 16..memory_pages-1


def _device(k):
    p = k.process()
    p.mmap(BUF, 2 * PAGE, "rw")
    return p, p.open(k.device_path)


# ---- FaultAttr: setting one knob changes that knob only -------------------------------------------------

@pytest.mark.parametrize("knob, value", [("verbose", 1), ("task_filter", False), ("probability", 100)])
def test_setting_a_knob_while_calls_run_keeps_the_times_they_used_up(backend, make_kernel, knob, value):
    """ref §7: `times` is the maximum number of failures. A setter that wrote the whole knob struct
    back restored the `times` calls had used up meanwhile, so more calls failed than `times` allows.
    The calls run in the driver-path batch (on the core one loop without the GIL) while another
    thread sets an unrelated knob over and over."""
    k = make_kernel("v6.2")
    p = k.process()
    p.mmap(client.REQUEST_BUFFER_ADDR, 2 * PAGE, "rw")
    fd = p.open(k.device_path)
    attr = k.fault("fail_usercopy")
    limit = 20000 if backend.BACKEND_NAME == "core" else 300
    attr.probability = 100
    attr.times = limit
    stop, started = threading.Event(), threading.Event()

    def setter():
        while not stop.is_set():
            setattr(attr, knob, value)
            started.set()

    t = threading.Thread(target=setter)
    t.start()
    try:
        started.wait()
        rets, _ = client.ioctl_batch(p, fd, np.zeros((3 * limit, abi.TDX_REPORTDATA_LEN), np.uint8))
    finally:
        stop.set()
        t.join()
    assert int((rets == -abi.EFAULT).sum()) == limit
    assert attr.times == 0 and rets[-1] == 0


def test_setting_one_knob_leaves_the_space_calls_consumed(make_kernel):
    k = make_kernel("v6.2")
    p, fd = _device(k)
    attr = k.fault("fail_usercopy")
    attr.probability = 100
    attr.space = 5  # each user copy consumes 1 (ref §7 step 6)
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, BUF) == 0  # copy-in and copy-out: space 5 -> 3
    attr.verbose = 0
    assert (attr.space, attr.times, attr.verbose) == (3, 1, 0)


def test_interval_reads_back_the_whole_unsigned_long(make_kernel):
    """ref §7: `interval` is an unsigned long knob; 2**64-1 is a value the kernel keeps as written."""
    k = make_kernel("v6.2")
    attr = k.fault("failslab")
    attr.interval = U64_MAX
    assert attr.interval == U64_MAX
    attr.interval = (1 << 63) + 5
    assert attr.interval == (1 << 63) + 5
    with pytest.raises(ValueError):
        attr.interval = 1 << 64


def test_an_interval_beyond_int64_lets_no_call_fail(make_kernel):
    k = make_kernel("v6.2")
    p, fd = _device(k)
    attr = k.fault("fail_usercopy")
    attr.probability = 100
    attr.times = -1
    attr.interval = U64_MAX
    assert [p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, BUF) for _ in range(4)] == [0] * 4


# ---- host-side access of zero bytes -----------------------------------------------------------------

@pytest.mark.parametrize("addr", [UNMAPPED, UNMAPPED + 1, BUF + 2 * PAGE + 7, U64_MAX])
def test_zero_byte_poke_and_peek_touch_no_page(make_kernel, addr):
    """CONTRACT: ValueError if any byte is unmapped; zero bytes name no page, so nothing is refused."""
    k = make_kernel("v6.2")
    p, _ = _device(k)
    assert p.peek(addr, 0) == b""
    p.poke(addr, b"")
    with pytest.raises(ValueError):
        p.peek(UNMAPPED + 1, 1)


# ---- last_trace() after a call that never became a syscall ------------------------------------------

REJECTED = [
    ("ioctl cmd out of range", lambda p, fd: p.ioctl(fd, 1 << 32, BUF), ValueError),
    ("ioctl negative arg", lambda p, fd: p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, -1), ValueError),
    ("ioctl fd not an int", lambda p, fd: p.ioctl("3", abi.TDX_CMD_GET_REPORT0, BUF), TypeError),
    ("close fd not an int", lambda p, fd: p.close(None), TypeError),
    ("pread addr negative", lambda p, fd: p.pread(fd, -1, 1, 0), ValueError),
    ("pwrite count not an int", lambda p, fd: p.pwrite(fd, BUF, "48", 0), TypeError),
    ("open flags negative", lambda p, fd: p.open("/dev/tdx_guest", -1), ValueError),
]


@pytest.mark.parametrize("label, call, exc", REJECTED, ids=[r[0] for r in REJECTED])
def test_a_rejected_call_leaves_the_last_syscalls_trace(make_kernel, label, call, exc):
    """A call refused with TypeError/ValueError made no syscall: last_trace() still lists the points
    the last syscall passed."""
    k = make_kernel("v6.2")
    p, fd = _device(k)
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, BUF) == 0
    before = p.last_trace()
    assert [point for point, _, _ in before] == [point for point in k.injection_points()]
    with pytest.raises(exc):
        call(p, fd)
    assert p.last_trace() == before


def test_a_syscall_that_fails_early_has_an_empty_trace(make_kernel):
    k = make_kernel("v6.2")
    p, fd = _device(k)
    for call in (lambda: p.ioctl(99, abi.TDX_CMD_GET_REPORT0, BUF), lambda: p.close(99),
                 lambda: p.open("/nope"), lambda: p.pread(fd, BUF, 1, -1)):
        assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, BUF) == 0 and p.last_trace()
        assert call() < 0
        assert p.last_trace() == []


# ---- the descriptor limit ---------------------------------------------------------------------------

def test_open_gives_emfile_past_the_descriptor_limit(make_kernel):
    """abi.FD_LIMIT (RLIMIT_NOFILE's soft default): fds 0..FD_LIMIT-1, 0-2 taken by stdio."""
    k = make_kernel("v6.2")
    p = k.process()
    fds = [p.open(k.device_path) for _ in range(abi.FD_LIMIT - 3)]
    assert fds == list(range(3, abi.FD_LIMIT))
    assert p.open(k.device_path) == -abi.EMFILE
    assert p.open("/nope") == -abi.ENOENT  # the lookup fails first
    assert p.close(500) == 0
    assert p.open(k.device_path) == 500  # the lowest free descriptor
    assert p.open(k.device_path) == -abi.EMFILE
    assert k.process().open(k.device_path) == 3  # per process


# ---- empty slabs go back to the page allocator --------------------------------------------------------

def test_an_empty_slab_page_serves_another_size_class(make_kernel):
    """Two kernel pages: v6.2's kmalloc(64) and kzalloc(1024) take one slab page each and free both.
    A misaligned REPORTDATA then needs a 128-B object (a third slab class): the empty slabs' pages
    must serve it, so the call reaches the module (OPERAND_INVALID on RDX -> -EINVAL, ref §2.4 #4)
    instead of failing with -ENOMEM."""
    k = make_kernel("v6.2", memory_pages=KERNEL_FIRST_PAGE + 2)
    p, fd = _device(k)
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, BUF) == 0
    k.force_misaligned("reportdata")
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, BUF) == -abi.EINVAL
    k.force_misaligned("tdreport")  # 2048-B class for the misaligned TDREPORT: RCX
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, BUF) == -abi.EINVAL
    k.force_misaligned(None)
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, BUF) == 0


def test_v4_page_and_slab_share_the_last_pages(make_kernel):
    """v4: kmalloc(64) and a zeroed page on two kernel pages. After a call whose REPORTDATA took a
    128-B slab, the next call's 64-B slab and zeroed page need both pages: the empty 128-B slab's
    page must come back."""
    k = make_kernel("v4-2022-04", memory_pages=KERNEL_FIRST_PAGE + 2)
    p, fd = _device(k)
    k.force_misaligned("reportdata")  # a 128-B object on one page, the TDREPORT page on the other
    assert p.ioctl(fd, abi.TDX_CMD_GET_TDREPORT, BUF) == -abi.EIO
    k.force_misaligned(None)  # 64-B object: a new slab page only if the empty 128 one is returned
    assert p.ioctl(fd, abi.TDX_CMD_GET_TDREPORT, BUF) == 0


def test_memory_really_runs_out(make_kernel):
    k = make_kernel("v6.2", memory_pages=KERNEL_FIRST_PAGE + 1)
    p, fd = _device(k)
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, BUF) == -abi.ENOMEM
    assert p.last_trace()[:2] == [("reportdata:kmalloc", "failslab", False),
                                  ("tdreport:kzalloc", "failslab", False)]


# ---- pread/pwrite: a negative offset is refused before the fd lookup ----------------------------------

@pytest.mark.parametrize("write", [False, True])
def test_negative_offset_is_einval_before_the_fd_lookup(make_kernel, write):
    """ref §2.5 last paragraph [26]: ksys_pread64/ksys_pwrite64 check pos < 0 before fdget."""
    k = make_kernel("v6.16")
    p = k.process()
    p.mmap(BUF, PAGE, "rw")
    op = p.pwrite if write else p.pread
    assert op(99, BUF, 48, -1) == -abi.EINVAL      # no such fd
    assert op(-5, BUF, 48, -1) == -abi.EINVAL
    wrong_mode = p.open(f"{abi.MEASUREMENT_DIRS[0]}/rtmr2:sha384", os.O_RDONLY if write else os.O_WRONLY)
    assert op(wrong_mode, BUF, 48, -1) == -abi.EINVAL  # before the access-mode check too
    assert op(wrong_mode, BUF, 48, 0) == -abi.EBADF
    assert op(99, BUF, 48, 0) == -abi.EBADF
    assert op(99, BUF, -1, 0) == -abi.EBADF          # a negative count is checked after the fd
