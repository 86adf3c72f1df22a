"""The ioctl quote paths as z3 terms, one request at a time (layer 5, proofs only).

``request(driver, env)`` mirrors one get_quote ioctl as a client makes it (quote.md §2.7: the 24-B
header and the payload the profile names in a ``buf_len`` buffer, the profile's timeout) through the
two ioctl quote paths, step-numbered as the driver code is (csrc/tdx_driver.c ``gen_quote_v4`` and
``get_quote_downstream``, ``tdxmodel._reference.drivers``):

- v4 3/3 ``tdx_get_tdquote`` as posted (ref §2.2): #1 quote_lock, #2 reinit_completion, #3 the 24-B
  request, #4 len / timeout zero, #5 dma_alloc_coherent(PAGE_ALIGN(len)), #6 len bytes in, #7 GetQuote
  (R10 put_user()ed on failure), #8 the interruptible wait with the caller's timeout, #9 PAGE_ALIGN(len)
  bytes back, #10 the status check, #11 free and unlock;
- Intel downstream ``tdx_get_quote`` (quote.md §2.6; the driver's #1-#9 against the reference's list):
  #1 the 16-B request, #2 len zero (§2.6 1), #3 the entry and its shared buffer, #4 the whole len in
  (§2.6 2), #5 GetQuote under quote_lock (§2.6 3), #6 on quote_list (§2.6 4), #7 the wait without a
  timeout, a signal orphaning an IN_FLIGHT entry (§2.6 5-6), #8 the whole len back, its -EFAULT dropped
  (§2.6 7), #9 del_quote_entry.

What differs between them is data, ``tdxmodel.profiles.IoctlQuote``: ``parallel`` (quote_list: the
lock only around the hypercall, an interrupted request orphans its IN_FLIGHT entry; else quote_lock
over the whole call and the buffer freed on every exit), ``lock_kept_on_early_return``,
``checks_status`` (after the copy back), ``drops_copy_fault``, ``interrupted_errno``, ``timeout_ms``
(0: none) and the command's injection points (``Command.points``: which allocations and user copies
exist, in order), never the generation's name.

The host is QEMU's model (quote.md §4.1, as ``proofs.quote_path``): the request passes H1-H4 (a
page-multiple buffer, version 1); IN_FLIGHT written unless ``no_in_flight``; completion at the
service time or QEMU's 30 s timer (ERROR); the reply (the quote, QGS-framed for a QGS payload) at
data and out_len on SUCCESS; the registered notify vector injected on completion unless
``no_interrupt`` (§3.3); SERVICE_UNAVAILABLE written at once with no completion, so no vector (H5).
Completion reaches the caller only by the vector: a request is one caller's, so the only interrupt
is its own completion. A signal is pending from the start (the campaign's ``{"at": "wait"}``); the
caller's len is ``buf_len`` or 0 (the ``len_zero`` misuse), its timeout the profile's or 0. After the
call the campaign makes one clean next request at once (``next_*``): its buffer is the pages this call
freed, so a late reply of this request can land in it.

The host assumptions are ``proofs.quote_path.HOSTS``; for a generation that registers a valid vector
(32..255, quote.md §3.3) a QEMU-conformant host injects it after every completed GetQuote, so
``no_interrupt`` is an ``any``-host fault here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import z3

from proofs import abi as zabi
from proofs.quote_path import FAULT_NAMES, TEST_QUOTE_LEN, TIMER_US, _fault, _neg, _Seq, _u32
from tdxmodel import abi as A
from tdxmodel import campaign_quote, profiles

W = zabi.REG_BITS
L = 32
_QEMU_FAULTS = (None, "service_time", "error", "service_unavailable", "retry", "no_interrupt")
MISUSES = ("len_zero", "timeout_zero", "request_unmapped", "buffer_unmapped")
#: What the host adds around the quote for a QGS payload (quote.md §4.2: the 4-byte frame length and
#: the GET_QUOTE_RESP header; the downstream driver's clients expect the reply framed, §2.7 5).
QGS_REPLY_OVERHEAD = A.QGS_FRAME_LEN_SIZE + A.QGS_GET_QUOTE_RESP_LEN


def has_timeout_field(driver: str) -> bool:
    return "timeout" in [f.name for f in profiles.get(driver).command("get_quote").fields]


def _page_align(n: int) -> int:
    return (n + A.TDX_PAGE_SIZE - 1) & ~(A.TDX_PAGE_SIZE - 1)


def vector_registered(driver: str) -> bool:
    v = profiles.get(driver).ioctl_quote.notify_vector
    return A.EVENT_NOTIFY_VECTOR_MIN <= v <= A.EVENT_NOTIFY_VECTOR_MAX


class IoctlEnv:
    """The free inputs of one get_quote ioctl (one named z3 variable per environment decision)."""

    def __init__(self, driver: str, prefix: str = "") -> None:
        prof = profiles.get(driver)
        self.driver, self.prefix = driver, prefix
        bv, b = (lambda n, w: z3.BitVec(prefix + n, w)), (lambda n: z3.Bool(prefix + n))
        self.host_fault = bv("host_fault", 8)
        self.service_us = bv("service_us", W)
        self.out_len_param = bv("out_len_param", L)
        self.quote_len = bv("quote_len", L)
        self.signal = b("signal_pending")
        self.misuse = {m: b(m) for m in MISUSES if m != "timeout_zero" or has_timeout_field(driver)}
        self.points = tuple(prof.command("get_quote").points)
        self.fail = {p: b(f"fail[{p}]") for p in self.points}

    def variables(self) -> Dict[str, z3.ExprRef]:
        out: Dict[str, z3.ExprRef] = {"host_fault": self.host_fault, "service_us": self.service_us,
                                      "out_len_param": self.out_len_param, "quote_len": self.quote_len,
                                      "signal_pending": self.signal}
        out.update(self.misuse)
        out.update({f"fail[{p}]": v for p, v in self.fail.items()})
        return {self.prefix + k: v for k, v in out.items()}

    def domain(self, host: str) -> List[z3.BoolRef]:
        """What the environment can do at all, under the host assumption."""
        iq = profiles.get(self.driver).ioctl_quote
        faults = FAULT_NAMES
        if host == "qemu":
            faults = tuple(f for f in _QEMU_FAULTS if f != "no_interrupt" or not vector_registered(self.driver))
        out = [z3.Or([self.host_fault == _fault(f) for f in faults]), z3.ULT(self.service_us, 1 << 40)]
        if host == "qemu":
            size = _page_align(iq.buf_len)
            out += [z3.UGT(self.quote_len, 0), z3.ULE(self.quote_len, size - A.HOST_QUOTE_OVERHEAD)]
        return out

    def replayable(self) -> List[z3.BoolRef]:
        """Preferred values: what the campaign's client and the test producer can show."""
        return [self.quote_len == TEST_QUOTE_LEN, z3.ULE(self.out_len_param, 1 << 16),
                z3.ULE(self.service_us, campaign_quote.SLOW_SECONDS * 1_000_000),
                z3.Or(self.service_us == A.HOST_SERVICE_TIME_US, z3.URem(self.service_us, 250_000) == 0)]

    def preferences(self, shown: List[z3.BoolRef]) -> List[z3.BoolRef]:
        """A counterexample's soft preferences, most important first (``quote_runner`` keeps each one
        the part still admits): replayable values, the theorem's preferred kind, one thing injected."""
        whole_ms = z3.Or(self.service_us == A.HOST_SERVICE_TIME_US, z3.URem(self.service_us, 1000) == 0)
        return self.replayable() + [whole_ms] + list(shown) + self.simple()

    def simple(self) -> List[z3.BoolRef]:
        """Preferred too: one thing injected (the host's default service time, no signal, misuse or
        failing point)."""
        return [self.service_us == A.HOST_SERVICE_TIME_US, z3.Not(self.signal), self.out_len_param == 0,
                self.host_fault == A.HOST_FAULT_NONE] + [z3.Not(v) for v in self.misuse.values()] \
            + [z3.Not(v) for v in self.fail.values()]


@dataclass
class IoctlRequest:
    """One get_quote ioctl's outcome as terms (the campaign record's names where it has them)."""

    ret: z3.BitVecRef
    returns: z3.BoolRef              # the call returns (a wait without a timeout nothing ends does not)
    outblob_len: z3.BitVecRef        # quote bytes the caller's buffer holds after a 0 return
    status_after: z3.BitVecRef       # the caller's header status after the call
    copied_back: z3.BoolRef          # the shared buffer reached the caller's buffer
    copied_len: z3.BitVecRef         # bytes the copy back writes (0 when it does not run)
    buffer_len: int                  # bytes of the shared buffer the driver allocates
    beyond_buffer: z3.BitVecRef      # bytes of the copy back from past that buffer
    quote_reached: z3.BoolRef        # this request's non-empty host reply, with its length, reached it
    host_success: z3.BoolRef
    reached_wait: z3.BoolRef
    interrupted: z3.BoolRef          # the pending signal ended the wait
    timed_out: z3.BoolRef            # the caller's timeout ended the wait
    owned_at_timeout: z3.BoolRef     # the host still owned the buffer when the timeout expired
    owned_at_signal: z3.BoolRef      # ... when the signal ended the wait
    host_owns_after: z3.BoolRef      # the host owns the buffer when the call returns
    freed_while_owned: z3.BoolRef    # ... and the driver has freed it (the allocator may hand it on)
    orphaned: z3.BoolRef             # left on quote_list for the notify callback to free
    leaked: z3.BitVecRef             # allocations outstanding right after the call
    leaked_after_host: z3.BitVecRef  # ... once the host finished
    owned_after_host: z3.BoolRef     # the host never finishes (it owns the buffer for good)
    locks_held: z3.BitVecRef         # locks held after the call
    clock_ns: z3.BitVecRef           # virtual time when the call returns
    get_quotes: z3.BitVecRef         # GetQuote hypercalls made
    documented: z3.BoolRef           # ret is 0 or an errno of the command's documented set
    reached: Dict[str, z3.BoolRef]   # injection point -> reached
    next_runs: z3.BoolRef            # the campaign's clean next request runs (no lock kept)
    next_ret: z3.BitVecRef           # ... and returns this
    next_outblob_is_own: z3.BoolRef  # ... 0, with its own quote in its buffer


def _bv(v: int, w: int = W) -> z3.BitVecRef:
    return z3.BitVecVal(v, w)


def request(driver: str, env: IoctlEnv) -> IoctlRequest:
    """request(driver, env) -> IoctlRequest: one get_quote ioctl of a libtdx_attest-style client."""
    prof = profiles.get(driver)
    iq = prof.ioctl_quote
    f = env.host_fault
    is_ = lambda name: f == _fault(name)   # noqa: E731
    fail = lambda point: env.fail.get(point, z3.BoolVal(False))   # noqa: E731
    misuse = lambda name: env.misuse.get(name, z3.BoolVal(False))   # noqa: E731
    has = lambda point: point in env.points   # noqa: E731
    size = _page_align(iq.buf_len)                        # PAGE_ALIGN(len): what the host sees (R13)
    reached: Dict[str, z3.BoolRef] = {}
    s = _Seq()
    # v4 #1-#2: quote_lock (a plain mutex_lock: no signal ends it) over the whole call; downstream
    # takes it around the hypercall only (#5), so requests run in parallel (quote.md §2.6 4)

    # v4 #3 / downstream #1: the request struct, one copy (its len and timeout are read once)
    reached["quote_req:copy_from_user"] = s.alive
    early = s.ret_if(z3.Or(fail("quote_req:copy_from_user"), misuse("request_unmapped")), _neg("EFAULT"))
    # v4 #4: len == 0 || timeout == 0 (both unsigned); downstream #2: len == 0 (§2.6 1)
    early = z3.Or(early, s.ret_if(z3.Or(misuse("len_zero"), misuse("timeout_zero")), _neg("EINVAL")))
    # v4 3/3: those two returns keep quote_lock (ref §2.2 "early returns keep quote_lock held")
    locks_held = z3.If(early, _bv(1), _bv(0)) if iq.lock_kept_on_early_return else _bv(0)

    # downstream #3: the kmalloc'd entry; v4 #5 / downstream #3: dma_alloc_coherent(PAGE_ALIGN(len)),
    # zeroed and shared (§2.6 2)
    allocs = [p for p in ("quote_entry:kmalloc", "quote_buf:dma_alloc_coherent") if has(p)]
    for point in allocs:
        reached[point] = s.alive
        s.ret_if(fail(point), _neg("ENOMEM"))
    nallocs = len(allocs)
    # v4 #6 / downstream #4: the whole len from req.buf
    reached["quote_data:copy_from_user"] = s.alive
    s.ret_if(z3.Or(fail("quote_data:copy_from_user"), misuse("buffer_unmapped")), _neg("EFAULT"))
    # v4 #7 / downstream #5: GetQuote (R12 = the shared GPA, R13 = PAGE_ALIGN(len)); R10 != 0 -> -EIO
    issued = s.alive
    if has("quote_err:put_user"):   # v4: R10 put_user()ed to arg + 0 first, its result overwritten
        reached["quote_err:put_user"] = z3.And(s.alive, is_("retry"))
    s.ret_if(is_("retry"), _neg("EIO"))
    reached_wait = s.alive

    # -- the host (quote.md §4.1 H5-H9, completion 1-6; §3.3 the vector) ------------------------------
    unavailable = is_("service_unavailable")              # H5: the status at once, no completion
    accepted = z3.And(issued, z3.Not(is_("retry")), z3.Not(unavailable))
    inflight_written = z3.And(accepted, z3.Not(is_("no_in_flight")))
    completes = z3.And(accepted, z3.Not(is_("never")))
    timer = z3.UGE(env.service_us, TIMER_US)
    due = z3.If(timer, _bv(TIMER_US), env.service_us)
    success = z3.And(completes, z3.Not(timer), z3.Not(is_("error")),
                     z3.ULE(env.quote_len, size - A.HOST_QUOTE_OVERHEAD))
    frame = QGS_REPLY_OVERHEAD if iq.payload == "qgs" else 0
    reply_len = env.quote_len + frame
    param = z3.If(env.out_len_param == 0, _u32(size), env.out_len_param)
    out_len_written = z3.If(success, z3.If(is_("oversize_out_len"), param, reply_len), _u32(0))
    irq = z3.And(completes, z3.Not(is_("no_interrupt")))   # the vector, at the completion

    def done_at(t):
        return z3.And(completes, z3.ULE(due, t))

    def woken_by(t):                                      # the completion reached the waiter
        return z3.And(irq, z3.ULE(due, t))

    def owned_at(t):
        return z3.And(accepted, z3.Or(is_("never"), z3.UGT(due, t)))

    def in_flight_at(t):                                  # the header says IN_FLIGHT
        return z3.And(inflight_written, z3.Not(done_at(t)))

    # -- v4 #8 / downstream #7: the wait (§2.6 5-6) ---------------------------------------------------
    # A pending signal ends it at once unless the completion is already there (do_wait_for_common
    # tests done first); the caller's timeout (v4) ends it at T, a completion due at T wins.
    zero = _bv(0)
    interrupted = z3.And(reached_wait, env.signal, z3.Not(woken_by(zero)))
    if iq.timeout_ms:
        t_out = _bv(iq.timeout_ms * 1000)
        timed_out = z3.And(reached_wait, z3.Not(interrupted), z3.Not(woken_by(t_out)))
        returns = z3.BoolVal(True)
        owned_at_timeout = owned_at(t_out)
    else:                                                 # no timeout: only the vector or a signal
        t_out = zero
        timed_out = z3.BoolVal(False)
        returns = z3.Not(z3.And(reached_wait, z3.Not(interrupted), z3.Not(irq)))
        owned_at_timeout = z3.BoolVal(False)
    woken = z3.And(reached_wait, z3.Not(interrupted), z3.Not(timed_out))
    t_end = z3.If(woken, due, z3.If(timed_out, t_out, zero))
    # a signal on a parallel path: an IN_FLIGHT entry is orphaned on quote_list, else freed
    orphaned = z3.And(interrupted, in_flight_at(zero)) if iq.parallel else z3.BoolVal(False)
    s.ret_if(interrupted, -_bv(iq.interrupted_errno))    # v4: -ERESTARTSYS (< 0) -> -EIO
    s.ret_if(timed_out, _neg("EIO"))                      # v4: 0 (timed out) -> -EIO

    # -- v4 #9 / downstream #8: the copy back (§2.6 7) --------------------------------------------------
    # v4 copies PAGE_ALIGN(len), downstream len: the same bytes for the page-multiple buffer clients pass
    reached["quote_data:copy_to_user"] = s.alive
    copy_runs = s.alive
    copy_fault = fail("quote_data:copy_to_user")          # fail-nth: nothing written (ref §7)
    copied_back = z3.And(copy_runs, z3.Not(copy_fault))
    if not iq.drops_copy_fault:
        s.ret_if(copy_fault, _neg("EFAULT"))
    # v4 #10: the status after the copy back; downstream returns 0 whatever it says
    status_end = z3.If(success, zabi.bv("GET_QUOTE_SUCCESS", W), zabi.bv("GET_QUOTE_ERROR", W))
    if iq.checks_status:
        s.ret_if(status_end != zabi.bv("GET_QUOTE_SUCCESS", W), _neg("EIO"))
    ret = s.ret(zero)

    # -- what the caller and the allocator see -----------------------------------------------------------
    caller_out_len = z3.If(copied_back, out_len_written, _u32(0))
    room = _u32(iq.buf_len - A.QUOTE_HDR_LEN)
    outblob_len = z3.If(ret == 0, z3.If(z3.ULT(caller_out_len, room), caller_out_len, room), _u32(0))
    status_after = z3.If(copied_back, status_end, zero)
    copied_len = z3.If(copied_back, _u32(size), _u32(0))
    beyond = z3.If(z3.UGT(copied_len, size), copied_len - size, _u32(0))
    quote_reached = z3.And(copied_back, success, z3.UGT(reply_len, 0), out_len_written == reply_len)
    host_owns_after = owned_at(t_end)
    # v4 #11 / downstream #9 (or #7 for an interrupted one not IN_FLIGHT): the buffer is freed
    freed_while_owned = z3.And(host_owns_after, z3.Not(orphaned))

    # -- the campaign's clean next request, made at t_end (none after a kept lock) ----------------------
    # It allocates its buffer as the call freed its own: the allocator hands back those pages (both
    # backends' LIFO choice), so a late reply of this request lands in it. Its own completion is QEMU's
    # at t_end + the default service time, with the vector; at an equal time this request's completion
    # comes first (the host's FIFO), so the next one's own reply is the last written.
    next_runs = locks_held == 0
    due_next = t_end + A.HOST_SERVICE_TIME_US
    late = z3.And(host_owns_after, completes)             # this request completes after the call
    lands = z3.And(freed_while_owned, completes)          # ... into the next request's buffer
    first = z3.And(late, irq, z3.ULT(due, due_next))      # its vector comes before the next one's own
    if iq.parallel:   # the work completes the next entry once its header is not IN_FLIGHT
        next_early = z3.And(first, lands)
        next_ret = zero
    else:             # v4's one req_compl: any vector completes it, and #10 checks the status found
        next_early = first
        next_ret = z3.If(z3.And(next_early, z3.Not(success)), _neg("EIO"), zero)
    next_own = z3.And(next_runs, next_ret == 0, z3.Not(next_early))
    # an orphan is freed by the notify callback (§2.6 5) once its header is final: this request's
    # vector, or the next request's (at due_next)
    orphan_stays = z3.And(orphaned, z3.Not(irq), z3.Not(z3.And(next_runs, completes, z3.ULE(due, due_next))))
    n = _bv(nallocs)
    leaked = z3.If(orphaned, n, zero)
    leaked_after_host = z3.If(orphan_stays, n, zero)
    documented = z3.Or([ret == 0] + [ret == -_bv(e) for e in iq.errnos])
    return IoctlRequest(
        ret=ret, returns=returns, outblob_len=outblob_len, status_after=status_after,
        copied_back=copied_back, copied_len=copied_len, buffer_len=size, beyond_buffer=beyond,
        quote_reached=quote_reached, host_success=success, reached_wait=reached_wait,
        interrupted=interrupted, timed_out=timed_out, owned_at_timeout=owned_at_timeout,
        owned_at_signal=z3.And(interrupted, owned_at(zero)), host_owns_after=host_owns_after,
        freed_while_owned=freed_while_owned, orphaned=orphaned, leaked=leaked,
        leaked_after_host=leaked_after_host, owned_after_host=z3.And(accepted, is_("never")),
        locks_held=locks_held, clock_ns=t_end * 1000, get_quotes=z3.If(issued, _bv(1), zero),
        documented=documented, reached=reached, next_runs=next_runs, next_ret=next_ret,
        next_outblob_is_own=next_own)
