"""The configfs-tsm quote path as z3 terms, one request at a time (layer 5, proofs only).

One function, ``request(driver, env)``, mirrors what a read(outblob) does after a write(inblob) and
close (quote.md §1.5 R1-R8, §2.3 P1-P11, the wait loop of §2.4 / tdx-abi.md §2.7, the stock
completion every upstream generation ships), step-numbered against those tables, with every
environment decision left free in a ``QuoteEnv``: the host's behaviour (a fault of the menu, how long
the quote takes, its length, the out_len values it shows), the TDCALL status of P5, allocation
failures, a signal at ``quote_lock``, at ``mr_lock`` or during sleep k, the inblob's length, the
provider gone, a buffer left IN_FLIGHT by an earlier request. The generation's facts come from its
profile (``tdxmodel.profiles.Quote``: buffer size, outblob limit, out_len read once, the status
check; ``cached_report_buf``: P5's form), never from its name.

The host is QEMU's model (quote.md §4.1; ``tdxmodel._reference.host``): IN_FLIGHT written before the
call returns unless ``no_in_flight``, the 30 s transaction timer giving ERROR, the quote written at
data and out_len set on SUCCESS, a quote longer than size - 52 an ERROR. Times are in microseconds
from the GetQuote; check j of the wait loop happens at j s (``GETQUOTE_POLL_MS``; the stock loop on the
exact clock, hz 0). Two host assumptions (``HOSTS``):

- ``qemu``: a QEMU-conformant host: the faults QEMU itself can show (none, service_time, error,
  service_unavailable, retry, no_interrupt) and a quote service whose SUCCESS carries a non-empty
  quote of at most size - 52 bytes (quote.md §4.1 "Sizes");
- ``any``: every fault of the menu (never, oversize_out_len, out_len_changes, no_in_flight too) and
  any quote length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import z3

from proofs import abi as zabi
from proofs.drivers import DRIVERS
from tdxmodel import abi as _abi
from tdxmodel import campaign_quote, profiles
from tdxmodel.host_faults import TestQuoteProducer

A = _abi
W = zabi.REG_BITS      # return values, statuses, times
L = 32                 # u32 lengths (in_len, out_len)
POLL_US = A.GETQUOTE_POLL_MS * 1000
POLLS = A.GETQUOTE_TIMEOUT
TIMER_US = A.HOST_QGS_TIMEOUT_MS * 1000
#: Where the campaign's "signal during sleep k" lands: this far into the sleep.
SIGNAL_INTO_SLEEP_US = campaign_quote.SIGNAL_INTO_SLEEP_NS // 1000
#: The largest block the emulator's kvmemdup takes (GK_MAX_ORDER 10): larger is -ENOMEM (a model choice).
KVMEMDUP_MAX = A.TDX_PAGE_SIZE << 10
#: The test producer's quote of a TDREPORT: what replays use as the host's quote length.
TEST_QUOTE_LEN = len(TestQuoteProducer().produce(bytes(A.TDX_REPORT_LEN)))
HOSTS = ("qemu", "any")
FAULT_NAMES = (None,) + tuple(A.HOST_FAULTS)
_QEMU_FAULTS = (None, "service_time", "error", "service_unavailable", "retry", "no_interrupt")
#: The read's injectable points, in the order a request reaches them (ref §7).
READ_POINTS = ("reportdata:kmalloc", "tdreport:kzalloc", "outblob:kvmemdup", "configfs:copy_to_user")


def _fault(name: Optional[str]) -> int:
    return A.HOST_FAULT_NONE if name is None else A.VALUES["HOST_FAULT_" + name.upper()]


class QuoteEnv:
    """The free inputs of one request (one named z3 variable per environment decision)."""

    def __init__(self, driver: str, prefix: str = "") -> None:
        prof = profiles.get(driver)
        self.prefix = prefix
        bv, b = (lambda n, w: z3.BitVec(prefix + n, w)), (lambda n: z3.Bool(prefix + n))
        self.host_fault = bv("host_fault", 8)
        self.service_us = bv("service_us", W)
        self.out_len_param = bv("out_len_param", L)
        self.quote_len = bv("quote_len", L)
        self.tdcall_status = bv("tdcall_status", W)
        self.sig_quote_lock = b("signal_quote_lock")
        self.sig_mr_lock = b("signal_mr_lock")
        self.sig_sleep = bv("signal_sleep", 8)       # 0: none; k: during sleep k
        self.inblob_len = bv("inblob_len", 8)
        self.no_provider = b("no_provider")
        self.leftover = b("leftover_in_flight")      # an earlier request's buffer still IN_FLIGHT
        self.points = tuple(p for p in READ_POINTS if p in prof.points)
        self.fail = {p: b(f"fail[{p}]") for p in self.points}
        init_points = [p for p in ("report_buf:kzalloc", "quote_buf:alloc_pages") if p in prof.points]
        self.init_fail = {p: b(f"init.fail[{p}]") for p in init_points}
        self.decrypt_fails = b("init.decrypt_fails")

    def variables(self) -> Dict[str, z3.ExprRef]:
        out = {k: getattr(self, a) for k, a in (
            ("host_fault", "host_fault"), ("service_us", "service_us"), ("out_len_param", "out_len_param"),
            ("quote_len", "quote_len"), ("tdcall_status", "tdcall_status"),
            ("signal_quote_lock", "sig_quote_lock"), ("signal_mr_lock", "sig_mr_lock"),
            ("signal_sleep", "sig_sleep"), ("inblob_len", "inblob_len"), ("no_provider", "no_provider"),
            ("leftover_in_flight", "leftover"))}
        out.update({f"fail[{p}]": v for p, v in self.fail.items()})
        out.update({f"init.fail[{p}]": v for p, v in self.init_fail.items()})
        out["init.decrypt_fails"] = self.decrypt_fails
        return {self.prefix + k: v for k, v in out.items()}

    def domain(self, host: str, driver: str) -> List[z3.BoolRef]:
        """What the environment can do at all, under the host assumption."""
        q = profiles.get(driver).quote
        faults = _QEMU_FAULTS if host == "qemu" else FAULT_NAMES
        out = [z3.Or([self.host_fault == _fault(f) for f in faults]),
               z3.ULT(self.service_us, 1 << 40), z3.ULE(self.sig_sleep, POLLS),
               z3.ULE(self.inblob_len, A.TSM_INBLOB_MAX),
               # the module answers SUCCESS or a status with a class (ref §4.1)
               z3.Or(self.tdcall_status == 0, zabi.status_class(self.tdcall_status) != 0)]
        if host == "qemu":
            out += [z3.UGT(self.quote_len, 0), z3.ULE(self.quote_len, q.buf_size - A.HOST_QUOTE_OVERHEAD)]
        return out

    def replayable(self) -> List[z3.BoolRef]:
        """Preferred values for a counterexample: what the campaign's guest and the test producer can
        show (its quote length, lengths its 640 KiB guest can allocate, service times to 100 s)."""
        return [self.quote_len == TEST_QUOTE_LEN, z3.ULE(self.out_len_param, 1 << 16),
                z3.ULE(self.service_us, campaign_quote.SLOW_SECONDS * 1_000_000),
                z3.Or(self.service_us == A.HOST_SERVICE_TIME_US, z3.URem(self.service_us, 250_000) == 0)]

    def simple(self) -> List[z3.BoolRef]:
        """Preferred too: one thing injected (no signal, allocation failure, REPORT failure, misuse)."""
        return [z3.Not(self.sig_quote_lock), z3.Not(self.sig_mr_lock), self.sig_sleep == 0,
                self.inblob_len == A.TDX_REPORTDATA_LEN, z3.Not(self.no_provider), z3.Not(self.leftover),
                self.tdcall_status == 0] + [z3.Not(v) for v in self.fail.values()]


@dataclass
class Request:
    """One request's outcome as terms."""

    ret: z3.BitVecRef
    delivered: z3.BitVecRef          # bytes the caller read from outblob
    copied: z3.BitVecRef             # bytes kvmemdup copied (the first out_len read)
    served: z3.BitVecRef             # outblob_len (the second read before 7.0)
    disclosed: z3.BitVecRef          # delivered bytes not from this request's shared buffer data
    beyond_buffer: z3.BitVecRef      # delivered bytes past the buffer's data region
    quote_reached: z3.BoolRef        # the host's non-empty quote of this request is the outblob
    reached_wait: z3.BoolRef
    interrupted: z3.BoolRef          # a signal ended the wait
    owned_at_timeout: z3.BoolRef     # the host still owned the buffer after the 30th poll
    reached_p11: z3.BoolRef
    owned_end: z3.BoolRef            # the host owns the buffer when the request returns
    in_flight_end: z3.BoolRef        # ... and the status says IN_FLIGHT
    leak: z3.BoolRef                 # an allocation neither freed nor owned by the item
    locks_unbalanced: z3.BoolRef
    init_ret: z3.BitVecRef
    init_leak_undocumented: z3.BoolRef
    documented: z3.BoolRef           # ret is 0 or an errno of the generation's documented set
    issued: z3.BoolRef
    reached: Dict[str, z3.BoolRef] = field(default_factory=dict)


class _Seq:
    """Straight-line C with early returns: ``ret_if(cond, errno)`` while still running."""

    def __init__(self) -> None:
        self.alive: z3.BoolRef = z3.BoolVal(True)
        self._rets: List = []

    def ret_if(self, cond, value) -> z3.BoolRef:
        hit = z3.And(self.alive, cond)
        self._rets.append((hit, value))
        self.alive = z3.And(self.alive, z3.Not(cond))
        return hit

    def ret(self, ok_value) -> z3.BitVecRef:
        out = ok_value
        for hit, value in reversed(self._rets):
            out = z3.If(hit, value, out)
        return out


def _neg(name: str) -> z3.BitVecRef:
    return zabi.neg_errno(name, W)


def _u32(v: int) -> z3.BitVecRef:
    return z3.BitVecVal(v, L)


def request(driver: str, env: QuoteEnv) -> Request:
    """request(driver, env) -> Request: one read(outblob) of a freshly written 64-byte inblob."""
    prof = profiles.get(driver)
    q = prof.quote
    spec = DRIVERS[driver]
    f = env.host_fault
    size = q.buf_size
    is_ = lambda name: f == _fault(name)   # noqa: E731

    core = _Seq()
    # -- tsm_report_read (quote.md §1.5) --------------------------------------------------------------
    core.ret_if(env.inblob_len == 0, _neg("EINVAL"))                                        # R1
    core.ret_if(env.no_provider, -z3.BitVecVal(q.no_provider_errno, W))                     # R3
    # R2/R5 (a cached copy) need an earlier read of this generation: not this request; R6: no old blob
    in_provider = core.alive

    # -- tdx_report_new (quote.md §2.3) ---------------------------------------------------------------
    pr = _Seq()
    pr.alive = in_provider
    quote_lock_taken = z3.And(in_provider, z3.Not(env.sig_quote_lock))
    pr.ret_if(env.sig_quote_lock, _neg("EINTR"))                                            # P1
    pr.ret_if(env.leftover, _neg("EBUSY"))                                                  # P2
    pr.ret_if(env.inblob_len != A.TDX_REPORTDATA_LEN, _neg("EINVAL"))                       # P3
    reached: Dict[str, z3.BoolRef] = {}
    temps_allocated, temps_freed = [], []
    mr_taken = z3.BoolVal(False)
    if prof.cached_report_buf:   # 6.16+: P4 then P5 through tdx_do_report under mr_lock
        mr_taken = z3.And(pr.alive, z3.Not(env.sig_mr_lock))
        pr.ret_if(env.sig_mr_lock, _neg("EINTR"))
    else:                        # <= 6.15: the kmalloc'd temporaries, then P4
        for point in ("reportdata:kmalloc", "tdreport:kzalloc"):
            reached[point] = pr.alive
            temps_allocated.append(z3.And(pr.alive, z3.Not(env.fail[point])))
            pr.ret_if(env.fail[point], _neg("ENOMEM"))
        temps_freed = list(temps_allocated)   # P11: freed on every exit (kfree after the unlock)
    status_ret = spec.status_to_ret(env.tdcall_status)
    pr.ret_if(env.tdcall_status != 0, status_ret)                                           # P5
    issued = pr.alive                                                                       # P6
    pr.ret_if(is_("retry"), _neg("EIO"))
    reached_wait = pr.alive

    # -- the host (quote.md §4.1 H5-H9, completion 1-6) -------------------------------------------------
    unavailable = is_("service_unavailable")
    accepted = z3.And(issued, z3.Not(is_("retry")), z3.Not(unavailable))
    inflight_written = z3.And(accepted, z3.Not(is_("no_in_flight")))
    completes = z3.And(accepted, z3.Not(is_("never")))
    timer = z3.UGE(env.service_us, TIMER_US)
    due = z3.If(timer, z3.BitVecVal(TIMER_US, W), env.service_us)
    success = z3.And(completes, z3.Not(timer), z3.Not(is_("error")),
                     z3.ULE(env.quote_len, size - A.HOST_QUOTE_OVERHEAD))
    param = z3.If(env.out_len_param == 0, _u32(size), env.out_len_param)
    out_len_written = z3.If(success, z3.If(is_("oversize_out_len"), param, env.quote_len), _u32(0))

    def done_at(t):
        return z3.And(completes, z3.ULE(due, t))

    def in_flight_at(t):
        return z3.Or(env.leftover, z3.And(inflight_written, z3.Not(done_at(t))))

    def status_at(t):
        return z3.If(unavailable, zabi.bv("GET_QUOTE_SERVICE_UNAVAILABLE", W),
                     z3.If(done_at(t), z3.If(success, zabi.bv("GET_QUOTE_SUCCESS", W),
                                             zabi.bv("GET_QUOTE_ERROR", W)),
                           z3.If(inflight_written, zabi.bv("GET_QUOTE_IN_FLIGHT", W),
                                 zabi.bv("GET_QUOTE_SUCCESS", W))))

    # -- P7: wait_for_quote_completion as written (§2.4) ---------------------------------------------
    check = [z3.BitVecVal(j * POLL_US, W) for j in range(POLLS + 1)]
    inflight = [in_flight_at(t) for t in check]            # status IN_FLIGHT at check j
    interrupted = z3.And(reached_wait, z3.Or([z3.And(env.sig_sleep == k, inflight[k - 1])
                                              for k in range(1, POLLS + 1)]))
    sleeps = sum(z3.If(inflight[j - 1], z3.BitVecVal(1, W), z3.BitVecVal(0, W)) for j in range(1, POLLS + 1))
    t_exit = sleeps * POLL_US
    wait_timed_out = z3.And(z3.Not(inflight[POLLS]), inflight[POLLS - 1])   # i == 30 at the exit
    pr.ret_if(interrupted, _neg("EINTR"))
    pr.ret_if(wait_timed_out, _neg("ETIMEDOUT"))
    status_exit = status_at(t_exit)
    if q.status_check:                                                                      # P8 (7.1)
        pr.ret_if(status_exit != zabi.bv("GET_QUOTE_SUCCESS", W), _neg("EIO"))
    completed_exit = done_at(t_exit)
    read1 = z3.If(completed_exit, out_len_written, _u32(0))
    changed = z3.And(success, is_("out_len_changes"), completed_exit)
    read2 = z3.If(changed, param, read1)
    if q.out_len_once:                                                                      # P9 (7.0)
        pr.ret_if(z3.UGT(read1, q.max_out_len), _neg("EFBIG"))
    copied = read1
    reached["outblob:kvmemdup"] = z3.And(pr.alive, copied != 0)                             # P10
    outblob_allocated = z3.And(reached["outblob:kvmemdup"], z3.Not(env.fail["outblob:kvmemdup"]),
                               z3.ULE(copied, KVMEMDUP_MAX))
    pr.ret_if(z3.And(copied != 0, z3.Or(env.fail["outblob:kvmemdup"], z3.UGT(copied, KVMEMDUP_MAX))),
              _neg("ENOMEM"))
    reached_p11 = pr.alive
    served = read1 if q.out_len_once else read2                                             # P11
    provider_ret = pr.ret(z3.BitVecVal(0, W))

    # -- back in the core: R7, R8, configfs's copy to the caller ----------------------------------------
    core.ret_if(provider_ret != 0, provider_ret)
    core.ret_if(z3.UGT(served, q.outblob_max), _neg("EFBIG"))                               # R8
    reached["configfs:copy_to_user"] = z3.And(core.alive, served != 0)
    core.ret_if(z3.And(served != 0, env.fail["configfs:copy_to_user"]), _neg("EFAULT"))
    ret = core.ret(z3.BitVecVal(0, W))
    delivered = z3.If(z3.And(core.alive, ret == 0), served, _u32(0))

    data_len = _u32(q.max_out_len)
    from_buffer = z3.If(z3.ULT(copied, data_len), copied, data_len)          # kvmemdup's bytes of the data
    host_bytes = z3.If(z3.ULT(delivered, from_buffer), delivered, from_buffer)
    beyond = z3.If(z3.UGT(delivered, data_len), delivered - data_len, _u32(0))
    quote_reached = z3.And(z3.UGT(delivered, 0), success, completed_exit, served == env.quote_len,
                           copied == env.quote_len)

    t_signal = (z3.ZeroExt(W - 8, env.sig_sleep) - 1) * POLL_US + SIGNAL_INTO_SLEEP_US
    t_end = z3.If(interrupted, t_signal, z3.If(reached_wait, t_exit, z3.BitVecVal(0, W)))
    owned_end = z3.Or(env.leftover, z3.And(accepted, z3.Or(is_("never"), z3.UGT(due, t_end))))
    owned_at_timeout = z3.And(accepted, z3.Or(is_("never"), z3.UGT(due, check[POLLS])))

    # allocations and locks: the temporaries are freed at P11, the outblob belongs to the item when the
    # provider succeeded (R7; an R8 -EFBIG keeps it cached, sticky), the locks are released on exit
    leak = z3.Or([z3.And(a, z3.Not(fr)) for a, fr in zip(temps_allocated, temps_freed)]
                 + [z3.And(outblob_allocated, provider_ret != 0)])
    locks_unbalanced = z3.BoolVal(False)   # quote_lock / mr_lock: taken and released in one scope
    _ = quote_lock_taken, mr_taken

    # module load (quote.md §2.2): each init allocation, then the conversion to shared
    init = _Seq()
    for point, fail in env.init_fail.items():
        init.ret_if(fail, _neg("ENOMEM"))
    pages_allocated = init.alive
    init.ret_if(env.decrypt_fails, _neg("ENOMEM"))
    init_ret = init.ret(z3.BitVecVal(0, W))
    # set_memory_decrypted failed: NULL returned without freeing the pages; any other init failure
    # frees what init allocated before it (the quote buffer is the last allocation)
    pages_leaked = z3.And(pages_allocated, env.decrypt_fails)
    init_leak_undocumented = z3.And(pages_leaked, z3.Not(env.decrypt_fails))   # the theorem's exception

    documented = z3.Or([ret == 0] + [ret == -z3.BitVecVal(e, W) for e in q.read_errnos])
    return Request(ret=ret, delivered=delivered, copied=copied, served=served,
                   disclosed=delivered - host_bytes, beyond_buffer=beyond, quote_reached=quote_reached,
                   reached_wait=reached_wait, interrupted=interrupted, owned_at_timeout=owned_at_timeout,
                   reached_p11=reached_p11, owned_end=owned_end, in_flight_end=in_flight_at(t_end),
                   leak=leak, locks_unbalanced=locks_unbalanced, init_ret=init_ret,
                   init_leak_undocumented=init_leak_undocumented, documented=documented, issued=issued,
                   reached=reached)


def next_request_issues(driver: str, r: Request, env: QuoteEnv) -> z3.BoolRef:
    """A clean next request (the campaign's) issues GetQuote: it runs (the provider is registered:
    <= 6.15 re-registers at once, 6.16+ refuses while the item exists) and P2 finds no IN_FLIGHT."""
    q = profiles.get(driver).quote
    runs = z3.Not(env.no_provider) if q.counts_items else z3.BoolVal(True)
    return z3.And(runs, z3.Not(r.in_flight_end))
