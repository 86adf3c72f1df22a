"""v4 3/3 TDX_CMD_GEN_QUOTE as posted on 22 Apr 2022 (ref §2.2; LKML "[PATCH v4 3/3] x86/tdx: Add
Quote generation support"), row by row on both backends with its defects observable: the early returns
keep quote_lock held, a timed-out buffer is freed while the host still owns it (and its late quote
lands in whoever gets the pages next), the buffer is copied back before the status is checked.

Steps (csrc/tdx_driver.c gen_quote_v4): 1 quote_lock; 2 reinit_completion; 3 the 24-B request (a
fault returns with the lock held); 4 len or timeout 0 (-EINVAL, lock held); 5 dma_alloc_coherent;
6 len bytes in; 7 GetQuote (R10 != 0: put_user to arg + 0, -EIO); 8 the wait with the caller's
timeout (timeout or signal: -EIO); 9 PAGE_ALIGN(len) bytes back; 10 status != 0: -EIO; 11 free, unlock.
"""

from __future__ import annotations

import hashlib
import struct

import pytest

from tdxmodel import abi, errors, profiles

DRIVER = "v4-2022-04"
PROF = profiles.get(DRIVER)
CMD = PROF.command("get_quote")
PAGE = abi.TDX_PAGE_SIZE
UBUF = 0x100000
UPAGES = 64
REQ = UBUF
BUF = UBUF + PAGE
LEN = 2 * PAGE
SEC = 1_000_000_000
MS = 1_000_000
SERVICE = abi.HOST_SERVICE_TIME_US * 1000
RD = bytes(range(0x20, 0x60))


def test_quote(payload):
    return b"tdxmodel-testq-1" + hashlib.sha384(payload).digest() + payload


test_quote.__test__ = False


def make(backend, make_module, host=True, **host_kwargs):
    m = make_module(memory_pages=160)
    host_kwargs.setdefault("producer", backend.TestQuoteProducer())
    h = backend.Host(m, **host_kwargs) if host else None
    k = backend.Kernel(m, DRIVER)
    p = k.process()
    p.mmap(UBUF, UPAGES * PAGE, "rw")
    fd = p.open(PROF.device_path)
    assert fd >= 3
    return k, p, fd, h


@pytest.fixture
def v4(backend, make_module):
    """v4(**host_kwargs) -> (kernel, process, fd, host), the host before the kernel; balanced."""
    made = []

    def factory(**kw):
        made.append(make(backend, make_module, **kw))
        return made[-1]

    yield factory
    for k, p, fd, h in made:
        p.close(fd)
        c = k.counters()
        assert c["outstanding"] == c["resident"], f"allocations leaked: {c}"
        assert c["locks_held"] == 0 and c["locks_taken"] == c["locks_released"], c
        if h is not None:
            h.close()


def request(p, k, reportdata=RD, length=LEN, buf=BUF, timeout_ms=1000, payload=None, req=REQ):
    if payload is None:
        payload = k.module.report(reportdata)
    p.poke(buf, struct.pack("<QQII", 1, 0, len(payload), 0) + payload)
    p.poke(req, struct.pack("<QQI4x", buf, length, timeout_ms))
    return payload


def header(p, buf=BUF):
    version, status, in_len, out_len = struct.unpack("<QQII", p.peek(buf, 24))
    return {"version": version, "status": status, "in_len": in_len, "out_len": out_len}


def balanced(k):
    c = k.counters()
    return c["outstanding"] == c["resident"]


# ---- the ABI and boot ----------------------------------------------------------------------------

def test_command_and_request_layout():
    # arch/x86/include/uapi/asm/tdx.h of v4 3/3: _IOR('T', 0x02, __u64) on {u64 buf; u64 len; u32 timeout}
    assert abi.ioc(abi.IOC_READ, ord("T"), 2, 8) == abi.TDX_CMD_GEN_QUOTE == 0x80085402
    assert [(f.name, f.offset, f.size) for f in CMD.fields] == [("buf", 0, 8), ("len", 8, 8), ("timeout", 16, 4)]
    assert CMD.request_len == 24 and PROF.device_path == "/dev/tdx-attest"
    assert not PROF.ioctl_quote.parallel


def test_boot_registers_the_event_notify_vector(v4):
    k, p, fd, h = v4()
    assert h.notify_vector == abi.TDX_V4_EVENT_NOTIFY_VECTOR == 0xEC


# ---- success -------------------------------------------------------------------------------------

def test_success_copies_the_buffer_back_at_the_interrupt(v4):
    k, p, fd, h = v4()
    tdreport = request(p, k)
    assert p.ioctl(fd, CMD.value, REQ) == 0
    q = test_quote(tdreport)
    assert header(p) == {"version": 1, "status": 0, "in_len": 1024, "out_len": len(q)}
    assert p.peek(BUF + 24, len(q)) == q
    assert h.clock.now_ns() == SERVICE                  # the interrupt, not a poll
    assert [t[0] for t in p.last_trace()] == [pt for pt in CMD.points if pt != "quote_err:put_user"]
    assert balanced(k)


# ---- steps 3-4: the early returns keep quote_lock held --------------------------------------------

def _bad_request_fault(p):
    return UBUF + UPAGES * PAGE - 16             # 16 of the 24 bytes mapped


def _len_zero(p):
    p.poke(REQ, struct.pack("<QQI4x", BUF, 0, 1000))
    return REQ


def _timeout_zero(p):
    p.poke(REQ, struct.pack("<QQI4x", BUF, LEN, 0))
    return REQ


@pytest.mark.parametrize("setup,err", [(_bad_request_fault, abi.EFAULT), (_len_zero, abi.EINVAL),
                                       (_timeout_zero, abi.EINVAL)],
                         ids=["3: request fault", "4: len 0", "4: timeout 0"])
def test_3_4_early_returns_keep_quote_lock_held(backend, make_module, setup, err):
    k, p, fd, h = make(backend, make_module)
    try:
        arg = setup(p)
        assert p.ioctl(fd, CMD.value, arg) == -err
        c = k.counters()
        assert c["locks_held"] == c["locks_leaked"] == 1  # nobody will ever release it
        assert not k.quote_lock_try()
        assert c["outstanding"] == c["resident"] and h.counters()["get_quotes"] == 0
        request(p, k)                                     # a good request now blocks for good
        with pytest.raises(errors.TaskHung):
            p.ioctl(fd, CMD.value, REQ)
        assert h.counters()["get_quotes"] == 0 and k.counters()["locks_held"] == 1
    finally:
        h.close()


# ---- steps 5-7 -----------------------------------------------------------------------------------

def test_5_dma_allocation_failure_is_enomem(v4):
    k, p, fd, h = v4()
    request(p, k)
    k.fault("fail_page_alloc").ignore_gfp_wait = False
    p.fail_nth = 2
    assert p.ioctl(fd, CMD.value, REQ) == -abi.ENOMEM
    assert p.last_trace()[-1] == ("quote_buf:dma_alloc_coherent", "fail_page_alloc", True)
    assert h.counters()["get_quotes"] == 0


def test_5_a_length_no_allocation_can_hold_is_enomem(v4):
    k, p, fd, h = v4()
    request(p, k, length=(PAGE << 10) + 1)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.ENOMEM


def test_6_buffer_fault_is_efault(v4):
    k, p, fd, h = v4()
    buf = UBUF + (UPAGES - 1) * PAGE
    p.poke(buf, struct.pack("<QQII", 1, 0, 1024, 0))
    p.poke(REQ, struct.pack("<QQI4x", buf, LEN, 1000))   # 1 of 2 pages mapped
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EFAULT
    assert h.counters()["get_quotes"] == 0


@pytest.mark.parametrize("how,r10", [
    ("retry", abi.TDVMCALL_STATUS_RETRY),
    ("size", abi.TDVMCALL_STATUS_INVALID_OPERAND),        # H4: PAGE_ALIGN(len) above 128 KiB
    ("no host", abi.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED),
])
def test_7_getquote_failure_puts_r10_over_the_request_and_is_eio(backend, make_module, v4, how, r10):
    k, p, fd, h = v4(host=how != "no host")
    request(p, k, length=abi.HOST_GET_QUOTE_MAX_BUF_LEN + 1 if how == "size" else LEN)
    if how == "retry":
        h.push_fault("retry")
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO
    assert int.from_bytes(p.peek(REQ, 8), "little") == r10     # put_user(err, (long __user *)argp)
    assert p.peek(REQ + 8, 8) != bytes(8)                      # only bytes 0..7


def test_7_put_user_failure_still_returns_eio(v4):
    k, p, fd, h = v4()
    request(p, k)
    h.push_fault("retry")
    p.fail_nth = 3   # request, data in, put_user
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO
    assert p.last_trace()[-1] == ("quote_err:put_user", "fail_usercopy", True)
    assert int.from_bytes(p.peek(REQ, 8), "little") == BUF     # unchanged


# ---- step 8: the caller's timeout; the buffer freed while the host owns it ------------------------

def test_8_timeout_is_eio_and_frees_the_buffer_the_host_still_owns(v4):
    k, p, fd, h = v4()
    request(p, k, timeout_ms=1000)
    h.push_fault("service_time", seconds=5)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO
    assert h.clock.now_ns() == SEC                       # msecs_to_jiffies(1000) at HZ = 1000
    assert header(p)["status"] == 0                      # nothing copied back
    assert balanced(k) and h.counters()["in_flight"] == 1  # freed, but the host still has it
    h.clock.advance_ns(4 * SEC)
    c = h.counters()
    assert c["in_flight"] == 0 and c["completed"] == 0   # the late write found private pages
    assert c["interrupts"] == 1                          # and the interrupt still came


def test_8_the_late_quote_lands_in_the_next_request(v4):
    """A times out; B gets the same pages, shared again; at A's completion the host writes A's quote
    there and the interrupt completes B's req_compl: B returns 0 with A's quote."""
    k, p, fd, h = v4()
    rd_a, rd_b = bytes([0xAA]) * 64, bytes([0xBB]) * 64
    tdreport_a = request(p, k, reportdata=rd_a, timeout_ms=1000)
    h.push_fault("service_time", seconds=5)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO
    request(p, k, reportdata=rd_b, timeout_ms=10000)
    h.push_fault("never")
    assert p.ioctl(fd, CMD.value, REQ) == 0              # woken by A's interrupt
    assert h.clock.now_ns() == 5 * SEC
    q = test_quote(tdreport_a)
    assert header(p)["out_len"] == len(q) and p.peek(BUF + 24, len(q)) == q
    assert rd_a in p.peek(BUF + 24, len(q)) and rd_b not in p.peek(BUF + 24, len(q))
    assert h.counters()["in_flight"] == 1                # B's own request is still the host's


def test_8_signal_is_eio_not_eintr(v4):
    k, p, fd, h = v4()
    request(p, k)
    h.push_fault("service_time", seconds=5)
    p.signal_pending = True
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO       # ret <= 0 -> -EIO, the -ERESTARTSYS replaced
    p.signal_pending = False
    assert balanced(k) and h.counters()["in_flight"] == 1
    h.clock.advance_ns(5 * SEC)


def test_8_the_timeout_still_expires_once_the_virtual_clock_has_stopped(v4):
    """The clock saturates at 2**64-2 ns (docs/CONTRACT.md "Clock"); a timeout that would end past
    it ends there, instead of a wait that can never time out (found by the fuzzer: both backends
    hung in the ioctl)."""
    k, p, fd, h = v4()
    for _ in range(4):
        h.clock.advance_ns(1 << 62)
    assert h.clock.now_ns() == (1 << 64) - 2
    request(p, k, timeout_ms=1000)
    h.push_fault("never")
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO
    assert balanced(k) and h.counters()["in_flight"] == 1


def test_8_a_timeout_past_the_clocks_end_waits_until_that_end(v4):
    """Half a second before the clock stops, a 1 s timeout ends at the clock's end, not at once (a
    deadline that wrapped past 2**64 ended the wait immediately; found by the mutation run)."""
    k, p, fd, h = v4()
    end = (1 << 64) - 2
    for _ in range(3):
        h.clock.advance_ns(1 << 62)
    h.clock.advance_ns(end - SEC // 2 - h.clock.now_ns())
    assert h.clock.now_ns() == end - SEC // 2
    request(p, k, timeout_ms=1000)
    h.push_fault("never")
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO
    assert h.clock.now_ns() == end


@pytest.mark.parametrize("fault", ["service_unavailable", "no_interrupt"])
def test_8_no_interrupt_runs_into_the_timeout(v4, fault):
    k, p, fd, h = v4()
    request(p, k, timeout_ms=2000)
    h.push_fault(fault)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO
    assert h.clock.now_ns() == 2 * SEC and h.counters()["interrupts"] == 0


# ---- steps 9-10: PAGE_ALIGN(len) back, before the status check ------------------------------------

def test_9_page_align_len_bytes_come_back(v4):
    k, p, fd, h = v4()
    request(p, k, length=PAGE + 100)
    p.poke(BUF + PAGE + 100, b"\xEE" * 64)               # past len, inside PAGE_ALIGN(len)
    assert p.ioctl(fd, CMD.value, REQ) == 0
    assert p.peek(BUF + PAGE + 100, 64) == bytes(64)     # overwritten from the kernel's zeroed pages


def test_9_copy_back_past_the_mapping_is_efault_although_the_quote_is_ready(v4):
    k, p, fd, h = v4()
    length = PAGE + 100
    buf = UBUF + UPAGES * PAGE - length                  # len fits the mapping, PAGE_ALIGN(len) does not
    request(p, k, buf=buf, length=length)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EFAULT
    assert h.counters()["completed"] == 1
    assert p.peek(buf + 24, 8) == b"tdxmodel"            # the prefix that fit was written


@pytest.mark.parametrize("fault,status", [("error", abi.GET_QUOTE_ERROR), ("service_time", abi.GET_QUOTE_ERROR)])
def test_10_status_checked_after_the_copy_back(v4, fault, status):
    k, p, fd, h = v4()
    request(p, k, timeout_ms=60000)
    if fault == "service_time":
        h.push_fault(fault, seconds=40)                  # the host's 30 s timer: ERROR
    else:
        h.push_fault(fault)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO
    assert header(p)["status"] == status                 # the user already has the host's header


@pytest.mark.parametrize("fault", ["no_in_flight", "oversize_out_len", "out_len_changes"])
def test_8_10_faults_the_driver_does_not_look_at(v4, fault):
    """v4 waits for the interrupt, not for IN_FLIGHT to clear, and never reads out_len: these hosts
    give 0 with the buffer as the host left it (the caller must bound out_len itself)."""
    k, p, fd, h = v4()
    tdreport = request(p, k)
    h.push_fault(fault, **({} if fault == "no_in_flight" else {"out_len": 1 << 20}))
    assert p.ioctl(fd, CMD.value, REQ) == 0
    want = 1 << 20 if fault == "oversize_out_len" else len(test_quote(tdreport))
    assert header(p)["out_len"] == want and header(p)["status"] == abi.GET_QUOTE_SUCCESS
