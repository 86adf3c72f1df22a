"""Intel downstream TDX_CMD_GET_QUOTE (0x80105404) row by row on both backends (quote.md §2.6;
intel/td-partitioning tdx-guest.c @1b3c1894 tdx_get_quote), with the host's fault menu on the virtual
clock: the 16-B request, the per-request shared buffer, GetQuote under quote_lock, the wait for the
notify interrupt with no timeout, the whole length copied back (a fault dropped), parallel requests on
quote_list, and the host's reply framed as libtdx_attest expects (quote.md §2.7, §4.2).

Steps (csrc/tdx_driver.c get_quote_downstream): 1 copy the request; 2 len == 0; 3 the entry and
dma_alloc_coherent(PAGE_ALIGN(len)); 4 len bytes in; 5 GetQuote (R10 != 0: -EIO); 6 on quote_list;
7 wait (signal: -EINTR, orphaned while IN_FLIGHT); 8 len bytes back; 9 free.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time

import pytest

from tdxmodel import abi, profiles
from tdxmodel._reference.host import qgs_request_report, qgs_response_frame

DRIVER = "intel-downstream"
PROF = profiles.get(DRIVER)
CMD = PROF.command("get_quote")
PAGE = abi.TDX_PAGE_SIZE
UBUF = 0x100000
UPAGES = 64
REQ = UBUF                     # struct tdx_quote_req
BUF = UBUF + PAGE              # the quote buffer the request points to
LEN = 4 * PAGE                 # 16 KiB, libtdx_attest's REQ_BUF_SIZE
SEC = 1_000_000_000
SERVICE = abi.HOST_SERVICE_TIME_US * 1000
RD = bytes(range(0x10, 0x50))


def test_quote(payload):
    return b"tdxmodel-testq-1" + hashlib.sha384(payload).digest() + payload


test_quote.__test__ = False


@pytest.fixture
def dq(backend, make_module):
    """dq(host=True, **host_kwargs) -> (kernel, process, fd, host); the host exists before the kernel
    boots (the notify vector is registered at boot); balanced at teardown."""
    made = []

    def factory(host=True, **host_kwargs):
        m = make_module(memory_pages=160)
        host_kwargs.setdefault("producer", backend.TestQuoteProducer())
        h = backend.Host(m, **host_kwargs) if host else None
        k = backend.Kernel(m, DRIVER)
        p = k.process()
        p.mmap(UBUF, UPAGES * PAGE, "rw")
        fd = p.open(PROF.device_path)
        assert fd >= 3
        made.append((k, p, fd, h))
        return k, p, fd, h

    yield factory
    for k, p, fd, h in made:
        p.close(fd)
        c = k.counters()
        assert c["outstanding"] == c["resident"], f"allocations leaked: {c}"
        assert c["locks_held"] == 0 and c["locks_taken"] == c["locks_released"], c
        if h is not None:
            h.close()


def request(p, k, reportdata=RD, length=LEN, buf=BUF, payload=None, version=1):
    """The caller's buffer: the 24-B header and a raw TDREPORT (or ``payload``), then the request."""
    if payload is None:
        payload = k.module.report(reportdata)
    p.poke(buf, bytes(min(length, LEN)))
    p.poke(buf, struct.pack("<QQII", version, 0, len(payload), 0) + payload)
    p.poke(REQ, struct.pack("<QQ", buf, length))
    return payload


def header(p, buf=BUF):
    version, status, in_len, out_len = struct.unpack("<QQII", p.peek(buf, 24))
    return {"version": version, "status": status, "in_len": in_len, "out_len": out_len}


def balanced(k):
    c = k.counters()
    return c["outstanding"] == c["resident"]


def wait_until(cond, what):
    """Synchronisation with a thread blocked in the emulated kernel (not a timing assertion)."""
    deadline = time.monotonic() + 30
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.001)


def in_thread(p, fd, arg=REQ):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("ret", p.ioctl(fd, CMD.value, arg)), daemon=True)
    t.start()
    return t, out


# ---- the ABI -------------------------------------------------------------------------------------

def test_command_decodes_as_the_uapi_header_says():
    # include/uapi/linux/tdx-guest.h @074bb0ff: _IOR('T', 4, struct tdx_quote_req {u64 buf; u64 len;})
    assert abi.ioc(abi.IOC_READ, ord("T"), 4, CMD.request_len) == abi.TDX_CMD_GET_QUOTE == 0x80105404
    assert [(f.name, f.offset, f.size) for f in CMD.fields] == [("buf", 0, 8), ("len", 8, 8)]
    assert PROF.ioctl_quote.parallel and PROF.ioctl_quote.timeout_ms == 0


def test_boot_registers_the_notify_vector(dq):
    k, p, fd, h = dq()
    assert h.notify_vector == PROF.ioctl_quote.notify_vector


# ---- success (steps 1-9) -------------------------------------------------------------------------

def test_quote_comes_back_in_the_callers_buffer_at_the_interrupt(dq):
    k, p, fd, h = dq()
    tdreport = request(p, k)
    assert p.ioctl(fd, CMD.value, REQ) == 0
    q = test_quote(tdreport)
    assert header(p) == {"version": 1, "status": abi.GET_QUOTE_SUCCESS, "in_len": 1024, "out_len": len(q)}
    assert p.peek(BUF + 24, len(q)) == q
    # completion by the notify interrupt: no 1 s poll, the wait ends at the service time
    assert h.clock.now_ns() == SERVICE
    c = h.counters()
    assert (c["interrupts"], c["last_vector"], c["in_flight"]) == (1, PROF.ioctl_quote.notify_vector, 0)
    assert [t[0] for t in p.last_trace()] == list(CMD.points)
    assert balanced(k)


def test_the_host_sees_page_aligned_length_and_the_whole_len_comes_back(dq):
    k, p, fd, h = dq()
    tdreport = request(p, k, length=PAGE + 100)       # PAGE_ALIGN: R13 = 8 KiB
    p.poke(BUF + PAGE + 100, b"\xEE" * 64)              # past len: not the kernel's to write
    assert p.ioctl(fd, CMD.value, REQ) == 0
    assert p.peek(BUF + 24, 8) == b"tdxmodel"
    assert p.peek(BUF + PAGE + 100, 64) == b"\xEE" * 64
    # the quote is bounded by size - 52 of the 8 KiB the host was told, not by len (quote.md §4.1)
    assert header(p)["out_len"] == len(test_quote(tdreport))


def test_a_qgs_framed_request_gets_a_framed_reply(dq):
    """libtdx_attest's legacy path (quote.md §2.7 step 5): a GET_QUOTE_REQ frame in, the QGS reply
    passed back unchanged: BE32 length == out_len - 4, a GET_QUOTE_RESP around the quote."""
    k, p, fd, h = dq()
    tdreport = k.module.report(RD)
    msg = struct.pack("<HHIIIII", 1, 1, abi.QGS_MSG_GET_QUOTE_REQ, 24 + 1024, 0, 1024, 0) + tdreport
    frame = len(msg).to_bytes(4, "big") + msg
    assert qgs_request_report(frame) == tdreport
    request(p, k, payload=frame)
    assert p.ioctl(fd, CMD.value, REQ) == 0
    hdr = header(p)
    body = p.peek(BUF + 24, hdr["out_len"])
    assert hdr["status"] == abi.GET_QUOTE_SUCCESS and hdr["out_len"] > 4
    assert int.from_bytes(body[:4], "big") == hdr["out_len"] - 4
    assert body == qgs_response_frame(test_quote(tdreport))
    major, minor, mtype, size, err, sel, qsize = struct.unpack_from("<HHIIIII", body, 4)
    assert (major, mtype, err, sel, qsize, size) == (1, abi.QGS_MSG_GET_QUOTE_RESP, 0, 0,
                                                     len(test_quote(tdreport)), 24 + qsize)


def test_a_malformed_frame_is_raw_mode(dq):
    k, p, fd, h = dq()
    tdreport = k.module.report(RD)
    msg = struct.pack("<HHIIIII", 2, 1, 0, 24 + 1024, 0, 1024, 0) + tdreport   # major 2
    frame = len(msg).to_bytes(4, "big") + msg
    assert qgs_request_report(frame) is None
    request(p, k, payload=frame)
    assert p.ioctl(fd, CMD.value, REQ) == 0
    assert p.peek(BUF + 24, header(p)["out_len"]) == test_quote(frame)


# ---- steps 1-4: before the hypercall -------------------------------------------------------------

def test_1_request_fault_is_efault(dq):
    k, p, fd, h = dq()
    assert p.ioctl(fd, CMD.value, UBUF + UPAGES * PAGE - 8) == -abi.EFAULT   # 8 of 16 bytes mapped
    assert h.counters()["get_quotes"] == 0 and balanced(k)


def test_2_zero_length_is_einval(dq):
    k, p, fd, h = dq()
    request(p, k, length=0)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EINVAL
    assert [t[0] for t in p.last_trace()] == ["quote_req:copy_from_user"]
    assert h.counters()["get_quotes"] == 0


@pytest.mark.parametrize("nth,point,cap", [(2, "quote_entry:kmalloc", "failslab"),
                                           (3, "quote_buf:dma_alloc_coherent", "fail_page_alloc")])
def test_3_allocation_failure_is_enomem(dq, nth, point, cap):
    k, p, fd, h = dq()
    request(p, k)
    k.fault("failslab").ignore_gfp_wait = False
    k.fault("fail_page_alloc").ignore_gfp_wait = False
    k.fault("fail_page_alloc").min_order = 0
    p.fail_nth = nth
    assert p.ioctl(fd, CMD.value, REQ) == -abi.ENOMEM
    assert p.last_trace()[-1] == (point, cap, True)
    assert h.counters()["get_quotes"] == 0 and balanced(k)


@pytest.mark.parametrize("length", [(PAGE << 10) + 1, (1 << 64) - 1])
def test_3_a_length_no_allocation_can_hold_is_enomem(dq, length):
    k, p, fd, h = dq()
    request(p, k, length=length)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.ENOMEM
    assert "quote_buf:dma_alloc_coherent" not in [t[0] for t in p.last_trace()]
    assert balanced(k)


def test_4_buffer_fault_is_efault_and_frees_both(dq):
    k, p, fd, h = dq()
    buf = UBUF + (UPAGES - 2) * PAGE                   # 2 of the 4 pages are mapped
    p.poke(buf, struct.pack("<QQII", 1, 0, 1024, 0) + k.module.report(RD))
    p.poke(REQ, struct.pack("<QQ", buf, LEN))
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EFAULT
    assert h.counters()["get_quotes"] == 0 and balanced(k)


# ---- step 5: the hypercall -----------------------------------------------------------------------

def _h4_too_big(p, k):
    request(p, k, length=abi.HOST_GET_QUOTE_MAX_BUF_LEN + 1)   # PAGE_ALIGN: 132 KiB > 128 KiB


def _h3_version(p, k):
    request(p, k, version=2)


@pytest.mark.parametrize("setup,fault", [(None, "retry"), (_h4_too_big, None), (_h3_version, None)],
                         ids=["R10 RETRY", "H4 size above 128 KiB", "H3 header version 2"])
def test_5_getquote_failure_is_eio(dq, setup, fault):
    k, p, fd, h = dq()
    (setup or request)(p, k)
    if fault:
        h.push_fault(fault)
    before = p.peek(BUF, 64)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO
    assert p.peek(BUF, 64) == before                    # nothing copied back
    assert h.counters()["accepted"] == 0 and balanced(k)


def test_5_no_vmm_is_eio(dq):
    k, p, fd, h = dq(host=False)
    request(p, k)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EIO      # SUBFUNC_UNSUPPORTED
    assert balanced(k)


def test_5_quote_lock_is_held_only_around_the_hypercall_and_not_interruptible(dq):
    k, p, fd, h = dq()
    request(p, k)
    assert k.quote_lock_try()                           # another caller inside steps 5-6
    t, out = in_thread(p, fd)
    wait_until(lambda: k.counters()["outstanding"] - k.counters()["resident"] == 2,
               "the request has its entry and buffer")
    p.signal_pending = True                             # mutex_lock does not look at it
    k.quote_lock_release()
    t.join(30)
    p.signal_pending = False
    # the hypercall was made after the lock; only the interruptible wait saw the signal
    assert out["ret"] == -abi.EINTR and h.counters()["get_quotes"] == 1
    h.clock.advance_ns(SERVICE)                         # the orphan is freed when the host is done
    assert balanced(k)


# ---- step 7: the wait: the interrupt, no timeout, a signal ---------------------------------------

def test_7_no_timeout_the_hosts_30_s_timer_ends_it(dq):
    k, p, fd, h = dq()
    request(p, k)
    h.push_fault("service_time", seconds=100)
    assert p.ioctl(fd, CMD.value, REQ) == 0             # 0 with the host's ERROR in the buffer
    assert h.clock.now_ns() == abi.HOST_QGS_TIMEOUT_MS * 1_000_000
    assert header(p) == {"version": 1, "status": abi.GET_QUOTE_ERROR, "in_len": 1024, "out_len": 0}


@pytest.mark.parametrize("fault", ["error", "no_in_flight", "out_len_changes"])
def test_7_the_buffer_comes_back_as_the_host_left_it(dq, fault):
    k, p, fd, h = dq()
    tdreport = request(p, k)
    h.push_fault(fault)
    assert p.ioctl(fd, CMD.value, REQ) == 0
    hdr = header(p)
    if fault == "error":
        assert (hdr["status"], hdr["out_len"]) == (abi.GET_QUOTE_ERROR, 0)
    else:   # the driver never reads out_len: the first value is what comes back
        assert (hdr["status"], hdr["out_len"]) == (abi.GET_QUOTE_SUCCESS, len(test_quote(tdreport)))


def test_7_oversize_out_len_is_the_callers_to_bound(dq):
    k, p, fd, h = dq()
    request(p, k)
    p.poke(BUF + LEN, b"\xEE" * 64)
    h.push_fault("oversize_out_len", out_len=1 << 20)
    assert p.ioctl(fd, CMD.value, REQ) == 0
    assert header(p)["out_len"] == 1 << 20
    assert p.peek(BUF + LEN, 64) == b"\xEE" * 64        # the kernel copied len bytes, no more


def test_7_signal_before_the_interrupt_orphans_the_entry_until_the_host_is_done(dq):
    k, p, fd, h = dq()
    request(p, k)
    h.push_fault("service_time", seconds=5)
    p.signal_pending = True
    before = p.peek(BUF, 64)
    assert p.ioctl(fd, CMD.value, REQ) == -abi.EINTR
    p.signal_pending = False
    assert p.peek(BUF, 64) == before                    # nothing copied back
    assert not balanced(k) and h.counters()["in_flight"] == 1   # the host still owns the buffer
    h.clock.advance_ns(5 * SEC)                         # completion, the interrupt, quote_work frees it
    assert balanced(k) and h.counters()["completed"] == 1


@pytest.mark.parametrize("fault", ["service_unavailable", "no_interrupt"])
def test_7_without_an_interrupt_the_caller_waits_for_a_signal(dq, fault):
    """H5 answers at once and starts no task, no_interrupt completes silently: either way no vector
    arrives and, with no timeout, only a signal ends the wait (the buffer is no longer IN_FLIGHT, so
    the entry is freed at once)."""
    k, p, fd, h = dq()
    request(p, k)
    h.push_fault(fault)
    t, out = in_thread(p, fd)
    key = "get_quotes" if fault == "service_unavailable" else "completed"
    wait_until(lambda: h.counters()[key] == 1, f"the host's {key}")
    assert "ret" not in out
    p.signal_pending = True
    t.join(30)
    p.signal_pending = False
    assert out["ret"] == -abi.EINTR and h.counters()["interrupts"] == 0
    assert header(p)["status"] == 0                      # the caller's buffer untouched
    assert balanced(k)


def test_7_another_requests_interrupt_completes_a_silent_one(dq, backend):
    """Parallel requests share the vector: quote_work completes every entry no longer IN_FLIGHT."""
    k, p, fd, h = dq()
    tdreport_a = request(p, k)
    h.push_fault("no_interrupt")
    t, out = in_thread(p, fd)
    wait_until(lambda: h.counters()["completed"] == 1, "A completes without its interrupt")
    p2 = k.process()
    p2.mmap(UBUF, UPAGES * PAGE, "rw")
    fd2 = p2.open(PROF.device_path)
    rd_b = bytes(64)
    tdreport_b = request(p2, k, reportdata=rd_b)
    assert p2.ioctl(fd2, CMD.value, REQ) == 0           # B, while A still waits: no serialisation
    t.join(30)
    assert out["ret"] == 0
    assert p.peek(BUF + 24, len(test_quote(tdreport_a))) == test_quote(tdreport_a)
    assert p2.peek(BUF + 24, len(test_quote(tdreport_b))) == test_quote(tdreport_b)
    assert h.counters()["interrupts"] == 1
    p2.close(fd2)


def test_7_parallel_requests_are_in_flight_together(backend, make_module):
    """A never finishes; B is accepted beside it and completes; A's signal leaves its entry
    orphaned for good (the host never gives the buffer back)."""
    m = make_module(memory_pages=160)
    h = backend.Host(m, producer=backend.TestQuoteProducer())
    k = backend.Kernel(m, DRIVER)
    pa, pb = k.process(), k.process()
    for p in (pa, pb):
        p.mmap(UBUF, UPAGES * PAGE, "rw")
    fa, fb = pa.open(PROF.device_path), pb.open(PROF.device_path)
    request(pa, k)
    h.push_fault("never")
    t, out = in_thread(pa, fa)
    wait_until(lambda: h.counters()["accepted"] == 1, "A accepted")
    request(pb, k, reportdata=bytes(64))
    assert pb.ioctl(fb, CMD.value, REQ) == 0
    assert h.counters()["in_flight"] == 1 and h.counters()["accepted"] == 2
    pa.signal_pending = True
    t.join(30)
    assert out["ret"] == -abi.EINTR
    c = k.counters()
    assert c["outstanding"] - c["resident"] == 2        # A's entry and buffer, orphaned
    assert c["locks_held"] == 0
    h.close()


def test_a_kernel_booted_before_the_host_has_no_vector(backend, make_module):
    """The vector is registered at boot: a host attached later injects nothing, and the request
    waits for a signal (docs/CONTRACT.md: attach the Host first)."""
    m = make_module(memory_pages=160)
    k = backend.Kernel(m, DRIVER)
    h = backend.Host(m, producer=backend.TestQuoteProducer())
    try:
        p = k.process()
        p.mmap(UBUF, UPAGES * PAGE, "rw")
        fd = p.open(PROF.device_path)
        request(p, k)
        assert h.notify_vector is None
        t, out = in_thread(p, fd)
        wait_until(lambda: h.counters()["completed"] == 1, "the quote completes")
        p.signal_pending = True
        t.join(30)
        assert out["ret"] == -abi.EINTR and h.counters()["interrupts"] == 0
        assert balanced(k)
    finally:
        h.close()


# ---- step 8: the copy back -----------------------------------------------------------------------

def test_8_copy_back_fault_is_dropped_and_returns_0(dq):
    k, p, fd, h = dq()
    request(p, k)
    p.mprotect(BUF, LEN, "r")                           # readable for step 4, not writable for step 8
    before = p.peek(BUF, 64)
    assert p.ioctl(fd, CMD.value, REQ) == 0
    assert p.peek(BUF, 64) == before
    assert p.last_trace()[-1] == ("quote_data:copy_to_user", "fail_usercopy", False)
    assert h.counters()["completed"] == 1 and balanced(k)


def test_8_injected_copy_back_failure_returns_0(dq):
    k, p, fd, h = dq()
    request(p, k)
    k.fault("fail_usercopy")
    before = p.peek(BUF, 64)
    p.fail_nth = 3   # request, data in, data out
    assert p.ioctl(fd, CMD.value, REQ) == 0
    assert p.last_trace()[-1] == ("quote_data:copy_to_user", "fail_usercopy", True)
    assert p.peek(BUF, 64) == before
