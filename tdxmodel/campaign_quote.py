"""The fault campaign over one generation's quote path (layer 3; ``tdxmodel.campaign`` runs it).

``cases(driver)`` enumerates the quote cases of a generation with a configfs-tsm quote path
(``profiles.Profile.quote``); ``run_case(backend_name, driver, spec)`` runs one on a fresh Module +
Host (virtual clock, the test quote producer) + Kernel + Process and returns its record. The proofs'
quote theorems replay their counterexamples through ``tdxmodel.campaign.run_case``, which sends every
spec with a ``"path"`` key here.

Every case is one request as a client makes it (quote.md §2.8: mkdir, write inblob, close, read
outblob until EOF), with one thing injected, then a second, clean request (the next client) and the
rmdir, so the record shows what the first request left behind (a buffer the host still owns: -EBUSY,
or a request issued into it).

Case specification (a dict; every key always present)::

    id           str   unique within the driver and stable, e.g. "host:never", "signal:sleep:30",
                       "fail_nth:2", "misuse:write_past_64", "init:fail_decrypt"
    path         str   "configfs"
    host_fault   null | str   a name of the host fault menu (abi.HOST_FAULTS) for the first request
    host_params  {} | {"seconds": number} | {"out_len": int}   its parameters (tdxmodel.host_faults)
    fail_nth     int   0: off; N: Process.fail_nth = N armed for the first read(outblob), with the
                       documented sweep's settings (ref §7)
    tdcall       null | {"status": int}   TDG.MR.REPORT (P5) forced to return this nonzero status
    signal       null | {"at": "quote_lock" | "mr_lock"}   another task holds that lock and the caller
                       has a signal pending (P1, P5 6.16+: -EINTR) | {"at": "pending"}   a signal
                       pending from the start: the uncontended locks' fast paths and the
                       uninterruptible tsm_rwsem ignore it, the first msleep_interruptible does not |
                       {"at": "sleep", "sleep": k}   a signal a quarter into sleep k (1..30) of the
                       wait loop (Process.signal_at_ns), the host taking 100 s (QEMU's 30 s timer ends it)
    misuse       null | str   a configfs misuse (MISUSES)
    init         null | {"fail_nth": N} | {"fail_decrypt": true}   module load faults: the N-th
                       init point fails, or the quote buffer's conversion to shared fails (quote.md §2.2)
    inblob_len   int   bytes written to inblob (64: the TDX REPORTDATA)
    description  str

Case record (the spec's keys plus)::

    backend, driver  str
    ret              int   0 or -errno of the call that returns the quote: the read(outblob) (the
                           first failing read, else 0); for an init case the module load's -errno
    outcome          str   "0" or "-E..."
    outblob_len      int   bytes read from outblob (until EOF)
    outblob_is_quote bool  the outblob is exactly the host's quote of this request's TDREPORT
    foreign_bytes    int   outblob bytes from beyond the quote buffer's data (size - 24 bytes): kernel
                           memory disclosed by an unbounded out_len (quote.md §2.3 P9)
    leaked           int   allocations outstanding after the rmdir beyond the kernel's resident ones
                           (init: 1 when the buffer pages were leaked, the deliberate leak)
    leaked_pages     int   init: pages leaked on purpose (quote.md §2.2); else 0
    locks_held       int   kernel locks still held after the case
    fail_nth_fired   bool | null
    trace            [[point, capability, failed], ...]   the first read(outblob)'s points
    syscalls         [{"call", "args", "ret"}, ...]   every syscall of the case with its return value
    clock_ns         int   the platform clock after the first request
    status_after     int | null   the quote buffer's status word after the first request
    host_owns_after  bool  the host still owns the buffer (a request of its in flight)
    next_ret         int | null   the next request's read(outblob): 0 or -errno
    issued_while_owned bool  the next request issued GetQuote while the host owned the buffer
    get_quotes       int   GetQuote TDVMCALLs the host saw
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any, Dict, List, Optional

from tdxmodel import _backend, abi, errors, host_faults, profiles
from tdxmodel.config import ModuleConfig

PATH = "configfs"
ITEM = profiles.TSM_REPORT_DIR + "/q"
PAGE_SIZE = abi.TDX_PAGE_SIZE
#: Guest memory: the kernel, a 7.0+ 128 KiB quote buffer (32 pages), outblobs up to 32 KiB + 1.
MODULE_PAGES = 160
#: The user window: the REPORTDATA at UBUF, reads into UBUF in READ_CHUNK pieces.
UBUF = 0x100000
UPAGES = 16
READ_CHUNK = UPAGES * PAGE_SIZE
UNMAPPED = 0x7000_0000
REPORTDATA = bytes(range(0x40, 0x80))
SEC = 1_000_000_000
#: Where a "signal during sleep k" lands: this far into the sleep.
SIGNAL_INTO_SLEEP_NS = SEC // 4
#: The host's service time for the signal-at-sleep cases: past the 30 polls.
SLOW_SECONDS = 100
#: Wait-loop rows (quote.md §2.4): service seconds -> the sleep the quote completes in.
SERVICE_TIMES = ((0, "before the first check"), (0.5, "during sleep 1"), (28.5, "during sleep 29"),
                 (29.5, "during sleep 30"), (SLOW_SECONDS, "after the 30 s QEMU timer"))
#: Configfs misuses (quote.md §1.3-§1.6), each followed by the read(outblob) whose ret is the case's.
MISUSES = {
    "no_inblob": "read outblob before any inblob write (R1)",
    "short_inblob": "write 63 bytes of inblob (P3: TDX needs exactly 64)",
    "write_past_64": "write 65 bytes of inblob: -EFBIG at write, the empty buffer commits at close",
    "zero_length_write": "write 0 bytes of inblob: -EFAULT, an empty inblob commits at close",
    "read_before_close": "read outblob while the inblob fd is still open (the commit is at close)",
    "write_from_unmapped": "write inblob from unmapped memory: -EFAULT",
    "wrap_guard": "write_gen == read_gen - 1: the commit's -EBUSY is lost at close, nothing commits",
    "rmdir_under_fd": "rmdir the item while its outblob is open, then read: the item is gone",
    "no_provider": "the provider unregistered before the read (R3)",
    "zero_count_read": "read(outblob, count 0): copy_to_iter copies nothing after the provider ran",
    "read_to_unmapped": "read outblob into unmapped memory",
    "open_outblob_for_write": "open outblob O_WRONLY (read-only attribute), then the normal request",
    "open_inblob_for_read": "open inblob O_RDONLY (write-only attribute), then the normal request",
    "mkdir_twice": "mkdir an existing item, then the normal request",
    "reread_cached": "a second read of the same generation is served from the cache (R2)",
    "retry_after_eintr": "retry at once after a signal ended the previous request's wait (P2: the "
                         "host still owns the buffer)",
}


def has_quote_path(driver: str) -> bool:
    return profiles.get(driver).quote is not None


def _spec(id_: str, description: str, *, host_fault: Optional[str] = None, host_params=None,
          fail_nth: int = 0, tdcall=None, signal=None, misuse=None, init=None,
          inblob_len: int = abi.TDX_REPORTDATA_LEN) -> Dict[str, Any]:
    return {"id": id_, "path": PATH, "host_fault": host_fault, "host_params": dict(host_params or {}),
            "fail_nth": fail_nth, "tdcall": tdcall, "signal": signal, "misuse": misuse, "init": init,
            "inblob_len": inblob_len, "description": description}


def cases(driver: str) -> List[Dict[str, Any]]:
    """cases(driver: str) -> list[dict]: the quote cases of ``driver`` (none without a quote path)."""
    prof = profiles.get(driver)
    q = prof.quote
    if q is None:
        return []
    out = [_spec("quote", "a quote through configfs-tsm, QEMU's host")]
    # each host fault of the menu (quote.md §4.1), the wait loop's rows for service_time
    for seconds, words in SERVICE_TIMES:
        out.append(_spec(f"host:service_time:{seconds}", f"the quote takes {seconds} s ({words})",
                         host_fault="service_time", host_params={"seconds": seconds}))
    for name in abi.HOST_FAULTS:
        if name == "service_time":
            continue
        if name == "oversize_out_len":
            for out_len, words in ((q.max_out_len + 1000, "1000 bytes past the buffer's data"),
                                   (q.outblob_max + 1, "past the outblob limit")):
                out.append(_spec(f"host:oversize_out_len:{out_len}", f"the host says out_len {out_len} "
                                 f"({words})", host_fault=name, host_params={"out_len": out_len}))
            continue
        if name == "out_len_changes":
            out.append(_spec("host:out_len_changes:3000", "out_len reads 1088, then 3000",
                             host_fault=name, host_params={"out_len": 3000}))
            continue
        out.append(_spec(f"host:{name}", f"host fault {name}", host_fault=name))
    # each injection point of the read (ref §7): the fail-nth sweep until the fault no longer fires
    points = _count_points(driver)
    for n in range(1, points + 2):
        out.append(_spec(f"fail_nth:{n}", f"fail-nth {n} on read(outblob) (ignore-gfp-wait N)",
                         fail_nth=n))
    # TDG.MR.REPORT failing (P5)
    for status, words in ((abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX, "OPERAND_INVALID (RCX)"),
                          (abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR, "OPERAND_BUSY (RTMR)"),
                          (0xC000100000000000, "an unknown status class")):
        out.append(_spec(f"tdcall:0x{status:016x}", f"TDG.MR.REPORT returns {words}",
                         tdcall={"status": status}))
    # signals at each lock and each sleep
    out.append(_spec("signal:quote_lock", "quote_lock held by another task, signal pending (P1)",
                     signal={"at": "quote_lock"}))
    if prof.has_lock("mr_lock"):
        out.append(_spec("signal:mr_lock", "mr_lock held by another task, signal pending (P5)",
                         signal={"at": "mr_lock"}))
    out.append(_spec("signal:pending", "a signal pending from the start: the uncontended locks and "
                     "the uninterruptible tsm_rwsem ignore it, msleep_interruptible does not",
                     signal={"at": "pending"}))
    for k in range(1, abi.GETQUOTE_TIMEOUT + 1):
        out.append(_spec(f"signal:sleep:{k}", f"a signal during sleep {k} of the wait loop (the "
                         f"quote takes {SLOW_SECONDS} s)", signal={"at": "sleep", "sleep": k},
                         host_fault="service_time", host_params={"seconds": SLOW_SECONDS}))
    # each configfs misuse
    for name, words in MISUSES.items():
        out.append(_spec(f"misuse:{name}", words, misuse=name,
                         inblob_len=63 if name == "short_inblob" else abi.TDX_REPORTDATA_LEN))
    # module load (quote.md §2.2, ref §7): each init point, and the conversion failure's deliberate leak
    for n in range(1, _count_init_points(driver) + 2):
        out.append(_spec(f"init:fail_nth:{n}", f"fail-nth {n} at module load", init={"fail_nth": n}))
    out.append(_spec("init:fail_decrypt", "set_memory_decrypted fails: the pages are leaked on purpose",
                     init={"fail_decrypt": True}))
    return out


_POINTS: Dict[str, int] = {}


def _count_points(driver: str) -> int:
    """Injectable points the first read(outblob) passes (one dry run on the reference model, cached)."""
    if driver not in _POINTS:
        _POINTS[driver] = len(run_case("reference", driver, _spec("dry", "dry run"))["trace"])
    return _POINTS[driver]


def _count_init_points(driver: str) -> int:
    """Init points before the quote buffer's (6.16+: the report buffer first; ref §7)."""
    return sum(1 for p in profiles.get(driver).points if p in ("report_buf:kzalloc", "quote_buf:alloc_pages"))


def _outcome_name(ret: int) -> str:
    return "0" if ret == 0 else f"-{_errno.errorcode.get(-ret, str(-ret))}"


def validate(spec: Dict[str, Any]) -> None:
    required = ("id", "path", "host_fault", "host_params", "fail_nth", "tdcall", "signal", "misuse",
                "init", "inblob_len")
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a dict, not {type(spec).__name__}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"spec lacks {', '.join(missing)}")
    if spec["path"] != PATH:
        raise ValueError(f"spec path must be {PATH!r} for this generation, not {spec['path']!r}")
    if not isinstance(spec["host_params"], dict):
        raise ValueError("spec host_params must be a dict")
    host_faults.parse(spec["host_fault"], **spec["host_params"])  # ValueError / TypeError
    if not _is_int(spec["fail_nth"]) or not 0 <= spec["fail_nth"] < 1 << 31:
        raise ValueError(f"spec fail_nth must be an int in 0..2^31-1, not {spec['fail_nth']!r}")
    td = spec["tdcall"]
    if td is not None and not (isinstance(td, dict) and _is_int(td.get("status"))
                               and 0 < td["status"] < 1 << 64):
        raise ValueError(f"spec tdcall must be null or {{'status': nonzero u64}}, not {td!r}")
    sig = spec["signal"]
    ok_sig = sig is None or (isinstance(sig, dict) and (
        sig.get("at") in ("quote_lock", "mr_lock", "pending") and set(sig) == {"at"}
        or sig.get("at") == "sleep" and _is_int(sig.get("sleep")) and 1 <= sig["sleep"] <= 1 << 20))
    if not ok_sig:
        raise ValueError(f"spec signal must be null, {{'at': quote_lock|mr_lock|pending}} or "
                         f"{{'at': 'sleep', 'sleep': k >= 1}}, not {sig!r}")
    if spec["misuse"] is not None and spec["misuse"] not in MISUSES:
        raise ValueError(f"spec misuse must be null or one of {', '.join(MISUSES)}, not {spec['misuse']!r}")
    init = spec["init"]
    if init is not None and init not in ({"fail_decrypt": True},) and not (
            isinstance(init, dict) and set(init) == {"fail_nth"} and _is_int(init["fail_nth"])
            and 1 <= init["fail_nth"] < 1 << 31):
        raise ValueError(f"spec init must be null, {{'fail_nth': N >= 1}} or {{'fail_decrypt': true}}, "
                         f"not {init!r}")
    if not _is_int(spec["inblob_len"]) or not 0 <= spec["inblob_len"] <= abi.TSM_INBLOB_MAX:
        raise ValueError(f"spec inblob_len must be 0..{abi.TSM_INBLOB_MAX}, not {spec['inblob_len']!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Run:
    """One case's Process with every syscall recorded."""

    def __init__(self, proc) -> None:
        self.p = proc
        self.calls: List[Dict[str, Any]] = []

    def _log(self, call: str, args: list, ret):
        self.calls.append({"call": call, "args": args, "ret": ret})
        return ret

    @staticmethod
    def _rel(path: str) -> str:
        return path[len(profiles.TSM_REPORT_DIR) + 1:] if path.startswith(profiles.TSM_REPORT_DIR + "/") else path

    def mkdir(self, path):
        return self._log("mkdir", [self._rel(path)], self.p.mkdir(path))

    def rmdir(self, path):
        return self._log("rmdir", [self._rel(path)], self.p.rmdir(path))

    def open(self, path, flags):
        mode = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}[flags]
        return self._log("open", [self._rel(path), mode], self.p.open(path, flags))

    def close(self, fd):
        return self._log("close", [fd], self.p.close(fd))

    def write(self, fd, addr, n):
        return self._log("write", [fd, n], self.p.write(fd, addr, n))

    def read(self, fd, addr, n):
        return self._log("read", [fd, n], self.p.read(fd, addr, n))

    def write_inblob(self, data: bytes, addr: int = UBUF, close: bool = True):
        fd = self.open(ITEM + "/inblob", os.O_WRONLY)
        if fd < 0:
            return fd, None
        if addr == UBUF:
            self.p.poke(UBUF, data)
        ret = self.write(fd, addr, len(data))
        if close:
            self.close(fd)
            return ret, None
        return ret, fd

    def read_outblob(self, arm=None, addr: int = UBUF, count: int = READ_CHUNK, fd=None):
        """(ret, outblob bytes, trace of the first read, fail_nth fired or None)"""
        own = fd is None
        if own:
            fd = self.open(ITEM + "/outblob", os.O_RDONLY)
            if fd < 0:
                return fd, b"", [], None
        fired = None
        if arm:
            self.p.fail_nth = arm
        data, ret, trace = b"", 0, None
        while True:
            n = self.read(fd, addr, count)
            if trace is None:
                trace = [list(t) for t in self.p.last_trace()]
                if arm:
                    fired = self.p.fail_nth == 0
                    self.p.fail_nth = 0
            if n < 0:
                ret = n
                break
            if n == 0 or count == 0 or addr == UNMAPPED:
                break
            data += self.p.peek(addr, n)
        if own:
            self.close(fd)
        return ret, data, trace, fired


def run_case(backend_name: Optional[str], driver: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    """run_case(backend_name, driver, spec) -> dict: one quote case (module docstring)."""
    prof = profiles.get(driver)
    if prof.quote is None:
        raise ValueError(f"{driver} has no configfs-tsm quote path")
    validate(spec)
    q = prof.quote
    backend = _backend.load(backend_name)
    module = backend.Module(ModuleConfig(seed=1), memory_pages=MODULE_PAGES)
    producer = backend.TestQuoteProducer()
    host = backend.Host(module, producer=producer)
    record = dict(spec)
    record.update({"backend": backend.BACKEND_NAME, "driver": driver, "outblob_len": 0,
                   "outblob_is_quote": False, "foreign_bytes": 0, "leaked": 0, "leaked_pages": 0,
                   "locks_held": 0, "fail_nth_fired": None, "trace": [], "syscalls": [],
                   "clock_ns": 0, "status_after": None, "host_owns_after": False, "next_ret": None,
                   "issued_while_owned": False, "get_quotes": 0})
    try:
        try:
            kernel = _make_kernel(backend, module, driver, spec["init"])
        except errors.KernelError as e:
            leaked_pages = getattr(e, "leaked_pages", 0) or 0
            record.update({"ret": -e.errno, "outcome": _outcome_name(-e.errno), "leaked": int(leaked_pages > 0),
                           "leaked_pages": leaked_pages,
                           "syscalls": [{"call": "init", "args": [], "ret": -e.errno}]})
            return record
        _run_requests(kernel, module, host, producer, q, spec, record)
        return record
    finally:
        host.close()


def _make_kernel(backend, module, driver, init):
    if init is None:
        return backend.Kernel(module, driver, seed=0)
    if "fail_decrypt" in init:
        return backend.Kernel(module, driver, seed=0, fail_decrypt=True)
    return backend.Kernel(module, driver, seed=0, fail_nth=init["fail_nth"])


def _run_requests(kernel, module, host, producer, q, spec, record) -> None:
    proc = kernel.process()
    proc.mmap(UBUF, UPAGES * PAGE_SIZE, "rw")
    run = _Run(proc)
    misuse = spec["misuse"]
    inblob = REPORTDATA[:spec["inblob_len"]]

    # -- the first request, up to the read ---------------------------------------------------------
    run.mkdir(ITEM)
    if misuse == "mkdir_twice":
        run.mkdir(ITEM)
    if misuse == "open_inblob_for_read":
        run.open(ITEM + "/inblob", os.O_RDONLY)
    if misuse == "open_outblob_for_write":
        run.open(ITEM + "/outblob", os.O_WRONLY)
    inblob_fd = None
    if misuse == "no_inblob":
        pass
    elif misuse == "write_past_64":
        run.write_inblob(REPORTDATA + b"\x00")
    elif misuse == "zero_length_write":
        run.write_inblob(b"")
    elif misuse == "write_from_unmapped":
        fd = run.open(ITEM + "/inblob", os.O_WRONLY)
        run.write(fd, UNMAPPED, len(inblob))
        run.close(fd)
    elif misuse == "wrap_guard":
        kernel._tsm_set_generations("q", (1 << 64) - 1, 0)
        run.write_inblob(inblob)
    elif misuse == "read_before_close":
        _, inblob_fd = run.write_inblob(inblob, close=False)
    elif misuse == "retry_after_eintr":
        host.push_fault("service_time", seconds=SLOW_SECONDS)
        run.write_inblob(inblob)
        proc.signal_pending = True
        run.read_outblob()                      # -EINTR before sleep 1; IN_FLIGHT stays
        proc.signal_pending = False
        run.write_inblob(inblob)
    else:
        run.write_inblob(inblob)

    # -- the injection -----------------------------------------------------------------------------
    if spec["host_fault"] is not None or spec["host_params"]:   # QEMU's behaviour with its parameters
        host.push_fault(spec["host_fault"], **spec["host_params"])
    if spec["tdcall"] is not None:
        kernel.force_tdcall(spec["tdcall"]["status"], leaf=abi.TDG_MR_REPORT)
    if spec["fail_nth"]:
        for cap in ("failslab", "fail_page_alloc"):  # the documented sweep's settings (ref §7)
            kernel.fault(cap).ignore_gfp_wait = False
        kernel.fault("fail_page_alloc").min_order = 0
    held = None
    sig = spec["signal"]
    if sig is not None:
        at = sig["at"]
        if at == "quote_lock":
            held = ("quote_lock", kernel.quote_lock_try())
            proc.signal_pending = True
        elif at == "mr_lock":
            held = ("mr_lock", kernel.mr_lock_try())
            proc.signal_pending = True
        elif at == "pending":
            proc.signal_pending = True
        else:
            proc.signal_at_ns = (sig["sleep"] - 1) * SEC + SIGNAL_INTO_SLEEP_NS
    if misuse == "no_provider":
        kernel.tsm_unregister()

    # -- the read that returns the quote -----------------------------------------------------------
    if misuse == "rmdir_under_fd":
        fd = run.open(ITEM + "/outblob", os.O_RDONLY)
        run.rmdir(ITEM)
        ret, data, trace, fired = run.read_outblob(spec["fail_nth"], fd=fd)
        run.close(fd)
        run.mkdir(ITEM)
        run.write_inblob(inblob)
    elif misuse == "zero_count_read":
        ret, data, trace, fired = run.read_outblob(spec["fail_nth"], count=0)
    elif misuse == "read_to_unmapped":
        ret, data, trace, fired = run.read_outblob(spec["fail_nth"], addr=UNMAPPED)
    else:
        ret, data, trace, fired = run.read_outblob(spec["fail_nth"])
        if misuse == "reread_cached" and ret == 0:
            ret, data, _, _ = run.read_outblob()   # R2: served from the cache, no new GetQuote
    if inblob_fd is not None:
        run.close(inblob_fd)
    # every injection ends with the request
    if held is not None and held[1]:
        (kernel.quote_lock_release if held[0] == "quote_lock" else kernel.mr_lock_release)()
    proc.signal_pending = False
    proc.signal_at_ns = None
    if misuse == "no_provider":
        kernel.tsm_register()  # 6.16+: refused while the item exists; the rmdir below, then again

    # -- what the request left behind --------------------------------------------------------------
    gpa = kernel.quote_buf_gpa
    status_after = int.from_bytes(module.read_memory(gpa + abi.QUOTE_HDR_OFF_STATUS, 8), "little")
    clock_ns = host.clock.now_ns()
    owns = host.counters()["in_flight"] > 0
    report = module.report(REPORTDATA)
    quote = producer.produce(report)

    # -- the next request: a clean one ------------------------------------------------------------
    next_ret = None
    issued_while_owned = False
    if kernel.tsm_registered:
        run.write_inblob(REPORTDATA)
        before = host.counters()
        next_ret, _, _, _ = run.read_outblob()
        issued_while_owned = before["in_flight"] > 0 and host.counters()["get_quotes"] > before["get_quotes"]
    run.rmdir(ITEM)
    if misuse == "no_provider" and not kernel.tsm_registered:
        kernel.tsm_register()
    counters = kernel.counters()

    record.update({
        "ret": ret, "outcome": _outcome_name(ret), "outblob_len": len(data),
        "outblob_is_quote": data == quote,
        "foreign_bytes": max(0, len(data) - q.max_out_len),
        "leaked": counters["outstanding"] - counters["resident"], "locks_held": counters["locks_held"],
        "fail_nth_fired": fired, "trace": trace or [], "syscalls": run.calls, "clock_ns": clock_ns,
        "status_after": status_after, "host_owns_after": owns, "next_ret": next_ret,
        "issued_while_owned": issued_while_owned, "get_quotes": host.counters()["get_quotes"],
    })


def summarize(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The quote cases' summary: counts per outcome class and the invariants' totals."""
    outcomes: Dict[str, int] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {
        "cases": len(records),
        "outcomes": dict(sorted(outcomes.items())),
        "leaking_cases": sum(1 for r in records if r["leaked"] and not r["leaked_pages"]),
        "deliberate_leak_cases": sum(1 for r in records if r["leaked_pages"]),
        "lock_imbalanced_cases": sum(1 for r in records if r["locks_held"]),
        "foreign_bytes": sum(r["foreign_bytes"] for r in records),
        "empty_success_cases": sum(1 for r in records if r["ret"] == 0 and r["outblob_len"] == 0),
        "issued_while_owned_cases": sum(1 for r in records if r["issued_while_owned"]),
    }


__all__ = ["cases", "run_case", "summarize", "validate", "MISUSES", "PATH", "has_quote_path"]
