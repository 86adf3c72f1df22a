"""The fault campaign over a generation's ioctl quote path (layer 3; ``tdxmodel.campaign`` runs it):
Intel downstream TDX_CMD_GET_QUOTE (quote.md §2.6) and the v4 series' GET_QUOTE (ref §2.2), from the
profile's ``ioctl_quote`` and its ``get_quote`` command.

Every case is one request as libtdx_attest makes it (quote.md §2.7: the 24-B header and the payload
the profile names, a raw TDREPORT or a QGS frame, in a ``buf_len`` buffer), with one thing injected,
on a fresh Module + Host (virtual clock, the test producer) + Kernel + Process; then the host is let
finish (the clock runs to its last completion) so the record shows what the request left behind.

Case specification (every key always present)::

    id, description  str
    path         str   "ioctl"
    host_fault   null | str, host_params {} | {"seconds": n} | {"out_len": n}   (tdxmodel.host_faults)
    fail_nth     int   0: off; N: the N-th injectable point of the ioctl fails (ref §7 sweep settings)
    signal       null | {"at": "wait"}   a signal pending when the call starts: the interruptible wait
                       ends at once (quote_lock is a plain mutex_lock: a signal does not end it)
    misuse       null | "len_zero" | "timeout_zero" (a request with a timeout field) | "request_unmapped" |
                       "buffer_unmapped"

Case record (the spec's keys plus): ``backend``, ``driver``, ``ret`` (the ioctl's 0 or -errno),
``outcome``, ``outblob_len`` (quote bytes the caller's buffer holds after a 0 return: the header's
out_len, bounded by the buffer), ``status_after`` (the caller's header status), ``leaked``
(allocations outstanding right after the call beyond the resident ones), ``leaked_after_host``
(the same once the host finished), ``locks_held`` (after the call: v4's early returns keep
quote_lock), ``host_owns_after`` (a request of the host's in flight after the call),
``freed_while_owned`` (the host still owned the buffer but the driver had freed it), ``trace``,
``fail_nth_fired``, ``syscalls`` (``[{"call", "args", "ret"}]``), ``clock_ns``, ``get_quotes`` (the
call's GetQuotes); ``next_ret`` and ``next_outblob_is_own``: a clean next request made at once (another
REPORTDATA, QEMU's host, before the host finished the first) returns 0 or -errno, and whether its buffer
then holds its own quote (a freed buffer the host still owned can be the next one's, and the late reply
lands in it); ``next_ret`` is null when the call kept quote_lock (the next one would block for good).
"""

from __future__ import annotations

import errno as _errno
import os
import struct
from typing import Any, Dict, List, Optional

from tdxmodel import _backend, abi, host_faults, profiles
from tdxmodel.config import ModuleConfig

PATH = "ioctl"
PAGE_SIZE = abi.TDX_PAGE_SIZE
MODULE_PAGES = 160
UBUF = 0x100000
UPAGES = 16
REQ = UBUF
BUF = UBUF + PAGE_SIZE
UNMAPPED = 0x7000_0000
REPORTDATA = bytes(range(0x40, 0x80))
NEXT_REPORTDATA = bytes(range(0x80, 0xC0))
SEC = 1_000_000_000
SERVICE_TIMES = ((0, "before the call returns"), (0.5, "after half a second"),
                 (29.5, "just before 30 s"), (100, "after QEMU's 30 s timer"))
MISUSES = {
    "len_zero": "a request with len 0",
    "timeout_zero": "a request with timeout 0",
    "request_unmapped": "the request struct in unmapped memory",
    "buffer_unmapped": "req.buf in unmapped memory",
}
#: Faults after which no notify vector comes (H5 writes its status without a completion, quote.md
#: §4.1): a wait without a timeout ends only by a signal.
_NO_COMPLETION_FAULTS = ("never", "no_interrupt", "service_unavailable")


def has_ioctl_quote(driver: str) -> bool:
    return getattr(profiles.get(driver), "ioctl_quote", None) is not None


def _spec(id_, description, *, host_fault=None, host_params=None, fail_nth=0, signal=None, misuse=None):
    return {"id": id_, "path": PATH, "host_fault": host_fault, "host_params": dict(host_params or {}),
            "fail_nth": fail_nth, "signal": signal, "misuse": misuse, "description": description}


def cases(driver: str) -> List[Dict[str, Any]]:
    """cases(driver) -> list[dict]: the ioctl quote cases (none without an ioctl quote path)."""
    if not has_ioctl_quote(driver):
        return []
    iq = profiles.get(driver).ioctl_quote
    cmd = profiles.get(driver).command("get_quote")
    out = [_spec("ioctl:quote", "a quote through the get_quote ioctl, QEMU's host")]
    for seconds, words in SERVICE_TIMES:
        out.append(_spec(f"ioctl:host:service_time:{seconds}", f"the quote takes {seconds} s ({words})",
                         host_fault="service_time", host_params={"seconds": seconds}))
    for name in abi.HOST_FAULTS:
        if name == "service_time":
            continue
        params = {"out_len": iq.buf_len} if name in ("oversize_out_len", "out_len_changes") else {}
        signal = None
        words = f"host fault {name}"
        if name in _NO_COMPLETION_FAULTS and not iq.timeout_ms:
            signal = {"at": "wait"}   # no timeout: only a signal ends the wait
            words += "; the caller gives up with a signal"
        out.append(_spec(f"ioctl:host:{name}", words, host_fault=name, host_params=params, signal=signal))
    for n in range(1, _count_points(driver) + 2):
        out.append(_spec(f"ioctl:fail_nth:{n}", f"fail-nth {n} on the get_quote ioctl", fail_nth=n))
    out.append(_spec("ioctl:signal:wait", "a signal pending: the interruptible wait ends at once",
                     signal={"at": "wait"}, host_fault="service_time", host_params={"seconds": 5}))
    for name, words in MISUSES.items():
        if name == "timeout_zero" and "timeout" not in [f.name for f in cmd.fields]:
            continue
        out.append(_spec(f"ioctl:misuse:{name}", words, misuse=name))
    return out


_POINTS: Dict[str, int] = {}


def _count_points(driver: str) -> int:
    if driver not in _POINTS:
        _POINTS[driver] = len(run_case("reference", driver, _spec("dry", "dry run"))["trace"])
    return _POINTS[driver]


def validate(spec: Dict[str, Any]) -> None:
    required = ("id", "path", "host_fault", "host_params", "fail_nth", "signal", "misuse")
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a dict, not {type(spec).__name__}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"spec lacks {', '.join(missing)}")
    if spec["path"] != PATH:
        raise ValueError(f"spec path must be {PATH!r} for this generation, not {spec['path']!r}")
    if not isinstance(spec["host_params"], dict):
        raise ValueError("spec host_params must be a dict")
    host_faults.parse(spec["host_fault"], **spec["host_params"])
    if isinstance(spec["fail_nth"], bool) or not isinstance(spec["fail_nth"], int) \
            or not 0 <= spec["fail_nth"] < 1 << 31:
        raise ValueError(f"spec fail_nth must be an int in 0..2^31-1, not {spec['fail_nth']!r}")
    if spec["signal"] not in (None, {"at": "wait"}):
        raise ValueError(f"spec signal must be null or {{'at': 'wait'}}, not {spec['signal']!r}")
    if spec["misuse"] is not None and spec["misuse"] not in MISUSES:
        raise ValueError(f"spec misuse must be null or one of {', '.join(MISUSES)}, not {spec['misuse']!r}")


def _request(proc, cmd, iq, payload: bytes, buf: int, length: int, timeout_ms: int) -> None:
    """The client's buffer at BUF (the 24-B header, the payload) and its request struct at REQ."""
    image = struct.pack("<QQII", abi.GET_QUOTE_CMD_VER, 0, len(payload), 0) + payload
    proc.poke(BUF, image + bytes(iq.buf_len - len(image)))
    values = {"buf": buf, "len": length, "timeout": timeout_ms}
    req = bytearray(cmd.request_len)
    for f in cmd.fields:
        req[f.offset:f.end] = values[f.name].to_bytes(f.size, "little")
    proc.poke(REQ, bytes(req))


def _quote_of(iq, reply: bytes) -> Optional[bytes]:
    """The quote in the host's reply: unframed for a QGS payload (quote.md §2.7 5); None if not one."""
    if iq.payload == "tdreport":
        return bytes(reply)
    from tdxmodel.client import qgs_get_quote_response
    try:
        return qgs_get_quote_response(reply)
    except ValueError:
        return None


def _payload(iq, tdreport: bytes) -> bytes:
    if iq.payload == "tdreport":
        return tdreport
    from tdxmodel.client import qgs_get_quote_request
    return qgs_get_quote_request(tdreport)


def run_case(backend_name: Optional[str], driver: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    """run_case(backend_name, driver, spec) -> dict: one ioctl quote case (module docstring)."""
    prof = profiles.get(driver)
    if not has_ioctl_quote(driver):
        raise ValueError(f"{driver} has no ioctl quote path")
    validate(spec)
    iq, cmd = prof.ioctl_quote, prof.command("get_quote")
    backend = _backend.load(backend_name)
    module = backend.Module(ModuleConfig(seed=1), memory_pages=MODULE_PAGES)
    host = backend.Host(module, producer=backend.TestQuoteProducer())   # before boot: the vector
    try:
        kernel = backend.Kernel(module, driver, seed=0)
        proc = kernel.process()
        proc.mmap(UBUF, UPAGES * PAGE_SIZE, "rw")
        calls: List[Dict[str, Any]] = []
        fd = proc.open(prof.device_path)
        calls.append({"call": "open", "args": [prof.device_path, "O_RDWR"], "ret": fd})
        payload = _payload(iq, module.report(REPORTDATA))
        misuse = spec["misuse"]
        buf = UNMAPPED if misuse == "buffer_unmapped" else BUF
        length = 0 if misuse == "len_zero" else iq.buf_len
        _request(proc, cmd, iq, payload, buf, length, 0 if misuse == "timeout_zero" else iq.timeout_ms)
        arg = UNMAPPED if misuse == "request_unmapped" else REQ
        if spec["host_fault"] is not None or spec["host_params"]:
            host.push_fault(spec["host_fault"], **spec["host_params"])
        if spec["fail_nth"]:
            for cap in ("failslab", "fail_page_alloc"):
                kernel.fault(cap).ignore_gfp_wait = False
            kernel.fault("fail_page_alloc").min_order = 0
            proc.fail_nth = spec["fail_nth"]
        if spec["signal"] is not None:
            proc.signal_pending = True
        ret = proc.ioctl(fd, cmd.value, arg)
        calls.append({"call": "ioctl", "args": [fd, cmd.name, arg], "ret": ret})
        trace = [list(t) for t in proc.last_trace()]
        fired = (proc.fail_nth == 0) if spec["fail_nth"] else None
        proc.fail_nth = 0
        proc.signal_pending = False
        after = kernel.counters()
        owns = host.counters()["in_flight"] > 0
        clock_ns = host.clock.now_ns()
        _v, status, _in, out_len = struct.unpack("<QQII", proc.peek(BUF, abi.QUOTE_HDR_LEN))
        outblob_len = min(out_len, iq.buf_len - abi.QUOTE_HDR_LEN) if ret == 0 else 0
        leaked = after["outstanding"] - after["resident"]
        get_quotes = host.counters()["get_quotes"]
        # a clean next request at once, before the host finished the first (none after a kept lock)
        next_ret, next_own = None, False
        if after["locks_held"] == 0:
            host.clear_faults()
            report = module.report(NEXT_REPORTDATA)
            _request(proc, cmd, iq, _payload(iq, report), BUF, iq.buf_len, iq.timeout_ms)
            next_ret = proc.ioctl(fd, cmd.value, REQ)
            calls.append({"call": "ioctl", "args": [fd, cmd.name, REQ], "ret": next_ret})
            _v, _s, _i, next_len = struct.unpack("<QQII", proc.peek(BUF, abi.QUOTE_HDR_LEN))
            reply = proc.peek(BUF + abi.QUOTE_HDR_LEN, min(next_len, iq.buf_len - abi.QUOTE_HDR_LEN))
            next_own = next_ret == 0 and _quote_of(iq, reply) == backend.TestQuoteProducer().produce(report)
        # let the host finish what it still owns (a late completion frees an orphaned entry)
        host.clock.advance_ns(200 * SEC)
        host.clock.poll()
        done = kernel.counters()
        if after["locks_held"] == 0:
            calls.append({"call": "close", "args": [fd], "ret": proc.close(fd)})
        record = dict(spec)
        record.update({
            "backend": backend.BACKEND_NAME, "driver": driver, "ret": ret,
            "outcome": "0" if ret == 0 else f"-{_errno.errorcode.get(-ret, str(-ret))}",
            "outblob_len": outblob_len, "status_after": status, "leaked": leaked,
            "leaked_after_host": done["outstanding"] - done["resident"], "locks_held": after["locks_held"],
            "host_owns_after": owns, "freed_while_owned": owns and leaked == 0,
            "trace": trace, "fail_nth_fired": fired, "syscalls": calls, "clock_ns": clock_ns,
            "get_quotes": get_quotes, "next_ret": next_ret, "next_outblob_is_own": next_own,
        })
        return record
    finally:
        host.close()


def summarize(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    outcomes: Dict[str, int] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {"cases": len(records), "outcomes": dict(sorted(outcomes.items())),
            "leaking_cases": sum(1 for r in records if r["leaked_after_host"]),
            "lock_leaking_cases": sum(1 for r in records if r["locks_held"]),
            "freed_while_owned_cases": sum(1 for r in records if r["freed_while_owned"])}


__all__ = ["cases", "run_case", "summarize", "validate", "MISUSES", "PATH", "has_ioctl_quote"]
