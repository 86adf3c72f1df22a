"""The exhaustive fault campaign over one driver generation's ioctl path and quote path (layer 3).

``cases(driver)`` enumerates case specifications: the report ioctl's (``report_cases``, the schema
below), for a generation with measurement files theirs (``tdxmodel.campaign_measurement``: every spec
with a ``"file"`` key) and, for a generation with a quote path, the quote path's (every spec with a
``"path"`` key: ``"configfs"``, ``tdxmodel.campaign_quote``; ``"ioctl"``,
``tdxmodel.campaign_quote_ioctl``; their schemas there); ``run_case(backend_name, driver, spec)`` runs one on a
fresh Module + Kernel + Process and returns its record; ``run(driver, backend_name)`` runs them all.
``run_case`` is the one runner of concrete cases: the proofs' conformance tests and
``python -m proofs --replay`` run their cases through it too and compare each record with the z3
encoding, so specs and records are plain JSON and their spellings are stable.

Case specification (a dict; every key always present)::

    id            str   unique within the driver, stable across releases, e.g. "fail_nth:2@success",
                        "user_fault:write:middle", "tdcall:operand_invalid:RCX", "unknown_cmd",
                        "mr_lock:eintr"
    cmd           int   the ioctl command issued (the driver's own, or another generation's for
                        "unknown_cmd")
    fail_nth      int   0: off; N: Process.fail_nth = N, with the kernel's documented sweep settings
                        (failslab and fail_page_alloc ignore_gfp_wait False, fail_page_alloc
                        min_order 0; ref §7)
    user_fault    null | {"access": "read" | "write", "at": POSITION | int}
                        a genuine page fault in the user buffer. "read" is the REPORTDATA copy-in
                        region (request bytes 0..63), "write" the TDREPORT copy-out region (v4:
                        bytes 0..1023 in place; v6.2+: bytes 64..1087). POSITION names the region
                        offset k of the first faulting byte: "first_byte" k = 0, "middle"
                        k = len // 2, "last_byte" k = len - 1, "page_boundary" k = len (the region
                        ends exactly at a page boundary and the next page faults, so the copy must
                        stop at the region's end); an int is k itself (0..len). The page holding
                        offset k and every later page lose the access ("read": pages become "w";
                        "write": pages become "r").
    partial_to_user  null | int   model-only mid-copy fault: Process.fault_user_copy(
                        "partial_to_user", at=N) (ref §7: a genuine fault leaves a prefix)
    tdcall        {"outcome": "success" | "operand_invalid" | "busy" | "forced",
                   "operand": null | "RCX" | "RDX" | "R8"[, "status": int]}
                        how the REPORT TDCALL ends. operand_invalid RCX/RDX are produced by the
                        module itself through Kernel.force_misaligned("tdreport"/"reportdata") where
                        the driver allocates per call (v4, v6.2) and by Kernel.force_tdcall on v6.16;
                        R8 (drivers always pass 0) by force_tdcall; busy by holding the module's
                        RTMR lock exclusively (another vCPU extending: TDX_OPERAND_BUSY | RTMR);
                        "forced" (operand null) makes the REPORT return "status" through
                        Kernel.force_tdcall (the proofs' replays of an arbitrary status)
    mr_lock_held  bool  v6.16: another task holds mr_lock and the caller has a signal pending
    description   str   what is injected, in words

Case record (``run_case``'s result; the spec's keys plus)::

    backend, driver     str
    arg                 int   the user address passed to the ioctl
    status              int   the 64-bit status the REPORT TDCALL was made to return (0: success;
                              not issued at all when an earlier step failed)
    user_fault_offset   int | null   the region offset k of the first faulting user byte
    ret                 int   0 or -errno, as the ioctl returned it
    outcome             str   "0" or "-E..." (the class the summary counts)
    leaked              int   outstanding allocations after the call beyond the documented resident
    locks_held          int   kernel locks still held after the call
    fail_nth_fired      bool | null   whether the armed fault fired (null when not armed)
    trace               [[point, capability, failed], ...]   Process.last_trace()
    init_trace          [[point, capability, failed], ...]   Kernel.init_trace() (module init's points)
    user_changed        int   bytes of the user buffer (the request and the pages around it) changed
    changed             [{"offset": int, "hex": str}, ...]    the changed runs, offsets from ``arg``
    foreign_bytes       int   changed bytes that equal neither the module's TDREPORT for the caller's
                              REPORTDATA at that place nor (v4, TDCALL failure) the masked status the
                              driver writes back: a disclosure of kernel memory if nonzero
    tdreport_complete   bool  the whole TDREPORT reached its place in user memory
"""

from __future__ import annotations

import errno as _errno
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from tdxmodel import _backend, abi, campaign_measurement, campaign_quote, campaign_quote_ioctl, profiles
from tdxmodel.config import ModuleConfig

PAGE_SIZE = abi.TDX_PAGE_SIZE
#: The campaign's user window: 4 pages; the request sits at WINDOW + PAGE_SIZE when nothing faults.
WINDOW = 0x10000
WINDOW_PAGES = 4
#: User bytes outside the REPORTDATA: a filler the driver never writes on its own.
FILLER = 0xA5
#: Guest memory: room for the kernel, a 7.0+ 128 KiB quote buffer (32 pages) and the slabs.
MODULE_PAGES = 96
POSITIONS = ("first_byte", "middle", "last_byte", "page_boundary")
_OPERAND_IDS = {"RCX": abi.TDX_OPERAND_ID_RCX, "RDX": abi.TDX_OPERAND_ID_RDX, "R8": abi.TDX_OPERAND_ID_R8}
_MISALIGN_TARGET = {"RCX": "tdreport", "RDX": "reportdata"}
TDCALL_OUTCOMES = (("success", None), ("operand_invalid", "RCX"), ("operand_invalid", "RDX"),
                   ("operand_invalid", "R8"), ("busy", None))


def _check_driver(driver: str) -> profiles.Profile:
    if driver not in profiles.BY_NAME:
        raise ValueError(f"unknown driver {driver!r}; choose one of {', '.join(profiles.NAMES)}")
    return profiles.get(driver)


def _layout(driver: str):
    """(cmd, request length, (read offset, read length), (write offset, write length)): the report
    command's request layout from the generation's profile (ref §2.2, §2.4)."""
    req = profiles.get(driver).report
    rd, tr = req.field("reportdata"), req.field("tdreport")
    return req.value, req.request_len, (rd.offset, rd.size), (tr.offset, tr.size)


def _spec(id_: str, cmd: int, description: str, *, fail_nth: int = 0, user_fault=None,
          partial_to_user=None, tdcall=("success", None), mr_lock_held: bool = False) -> Dict[str, Any]:
    return {"id": id_, "cmd": cmd, "fail_nth": fail_nth, "user_fault": user_fault,
            "partial_to_user": partial_to_user,
            "tdcall": {"outcome": tdcall[0], "operand": tdcall[1]},
            "mr_lock_held": mr_lock_held, "description": description}


def _tdcall_words(outcome) -> str:
    kind, operand = outcome
    return {"success": "TDCALL succeeds", "busy": "TDCALL answers OPERAND_BUSY (RTMR lock held)"}.get(
        kind, f"TDCALL answers OPERAND_INVALID (operand {operand})")


def _tdcall_tag(outcome) -> str:
    kind, operand = outcome
    return kind if operand is None else f"{kind}:{operand}"


def cases(driver: str) -> List[Dict[str, Any]]:
    """cases(driver: str) -> list[dict]: every case of the campaign for ``driver``: the report
    ioctl's, then the quote path's."""
    _check_driver(driver)
    return (report_cases(driver) + campaign_measurement.cases(driver) + campaign_quote.cases(driver)
            + campaign_quote_ioctl.cases(driver))


def is_quote_case(spec: Dict[str, Any]) -> bool:
    """A quote-path case or record (it has a "path")."""
    return isinstance(spec, dict) and "path" in spec


def is_measurement_case(spec: Dict[str, Any]) -> bool:
    """A measurement-file case or record (it has a "file"; tdxmodel.campaign_measurement)."""
    return campaign_measurement.is_measurement_case(spec)


def is_report_case(spec: Dict[str, Any]) -> bool:
    """A report ioctl case or record (the schema above)."""
    return not is_quote_case(spec) and not is_measurement_case(spec)


def report_cases(driver: str) -> List[Dict[str, Any]]:
    """report_cases(driver: str) -> list[dict]: the report ioctl's cases (schema above)."""
    prof = _check_driver(driver)
    cmd, _, read_region, write_region = _layout(driver)
    out: List[Dict[str, Any]] = []
    # each TDCALL outcome, and under each the fail-nth sweep: n = 1, 2, ... until the fault no longer
    # fires (the last case, n = points + 1, is that stop condition)
    for outcome in TDCALL_OUTCOMES:
        tag = _tdcall_tag(outcome)
        out.append(_spec(f"tdcall:{tag}", cmd, _tdcall_words(outcome), tdcall=outcome))
        points = _count_points(driver, outcome)
        for n in range(1, points + 2):
            out.append(_spec(f"fail_nth:{n}@{tag}", cmd,
                             f"fail-nth {n} (ignore-gfp-wait N, min-order 0); {_tdcall_words(outcome)}",
                             fail_nth=n, tdcall=outcome))
        if outcome[0] != "success":  # v4 puts the status to user memory: make that store fault
            out.append(_spec(f"user_fault:write:first_byte@{tag}", cmd,
                             f"user buffer read-only; {_tdcall_words(outcome)}",
                             user_fault={"access": "write", "at": "first_byte"}, tdcall=outcome))
    # the user buffer faulting at each position class, for the copy-in and the copy-out
    for access, (_, length) in (("read", read_region), ("write", write_region)):
        for at in POSITIONS:
            k = _position_offset(at, length)
            out.append(_spec(f"user_fault:{access}:{at}", cmd,
                             f"{'REPORTDATA copy-in' if access == 'read' else 'TDREPORT copy-out'} "
                             f"faults at region byte {k} of {length} ({at})",
                             user_fault={"access": access, "at": at}))
    # a genuine mid-copy fault that is not at a page boundary
    write_len = write_region[1]
    for at in (1, write_len // 2 + 1, write_len - 1):
        out.append(_spec(f"partial_to_user:{at}", cmd,
                         f"copy_to_user faults after {at} of {write_len} bytes", partial_to_user=at))
    # an unknown command: the other generations' number
    other = prof.other_report_cmd()
    out.append(_spec("unknown_cmd", other, f"unknown ioctl command 0x{other:08X}"))
    if prof.has_lock("mr_lock"):
        out.append(_spec("mr_lock:eintr", cmd, "mr_lock held by another task, signal pending",
                         mr_lock_held=True))
    return out


def _position_offset(at, length: int) -> int:
    if isinstance(at, int):
        return at
    return {"first_byte": 0, "middle": length // 2, "last_byte": length - 1, "page_boundary": length}[at]


_POINT_COUNTS: Dict[tuple, int] = {}


def _count_points(driver: str, outcome) -> int:
    """How many injectable points the call passes with this TDCALL outcome (one dry run on the
    reference model, cached)."""
    key = (driver, outcome)
    if key not in _POINT_COUNTS:
        spec = _spec("dry", _layout(driver)[0], "dry run", tdcall=outcome)
        _POINT_COUNTS[key] = len(run_case("reference", driver, spec)["trace"])
    return _POINT_COUNTS[key]


def _outcome_name(ret: int) -> str:
    return "0" if ret == 0 else f"-{_errno.errorcode.get(-ret, str(-ret))}" if ret < 0 else str(ret)


def _validate_spec(spec: Dict[str, Any]) -> None:
    required = ("id", "cmd", "fail_nth", "user_fault", "partial_to_user", "tdcall", "mr_lock_held")
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a dict, not {type(spec).__name__}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"spec lacks {', '.join(missing)}")
    uf = spec["user_fault"]
    if uf is not None and (not isinstance(uf, dict) or uf.get("access") not in ("read", "write")
                           or not (uf.get("at") in POSITIONS or _is_offset(uf.get("at")))):
        raise ValueError(f"spec user_fault must be null or {{'access': read|write, 'at': "
                         f"{'|'.join(POSITIONS)}|offset}}, not {uf!r}")
    td = spec["tdcall"]
    forced = isinstance(td, dict) and td.get("outcome") == "forced" and td.get("operand") is None \
        and _is_offset(td.get("status")) and 0 < td["status"] < 1 << 64
    if not forced and (not isinstance(td, dict)
                       or (td.get("outcome"), td.get("operand")) not in TDCALL_OUTCOMES):
        raise ValueError(f"spec tdcall must be one of {TDCALL_OUTCOMES} or forced with a nonzero "
                         f"64-bit status, not {td!r}")


def _is_offset(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def run_case(backend_name: Optional[str], driver: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    """run_case(backend_name: str | None, driver: str, spec: dict) -> dict

    Run one case on a fresh Module + Kernel + Process of the backend and return its record."""
    prof = _check_driver(driver)
    if is_quote_case(spec):
        if spec["path"] == campaign_quote_ioctl.PATH:
            return campaign_quote_ioctl.run_case(backend_name, driver, spec)
        return campaign_quote.run_case(backend_name, driver, spec)
    if campaign_measurement.is_measurement_case(spec):
        return campaign_measurement.run_case(backend_name, driver, spec)
    _validate_spec(spec)
    backend = _backend.load(backend_name)
    module = backend.Module(ModuleConfig(seed=1), memory_pages=MODULE_PAGES)
    kernel = backend.Kernel(module, driver, seed=0)
    proc = kernel.process()
    cmd = spec["cmd"]
    _, req_len, (read_off, read_len), (write_off, write_len) = _layout(driver)

    # -- the user buffer ---------------------------------------------------------------------
    proc.mmap(WINDOW, WINDOW_PAGES * PAGE_SIZE, "rw")
    uf = spec["user_fault"]
    if uf is None:
        arg = WINDOW + PAGE_SIZE
    else:
        region_off = read_off if uf["access"] == "read" else write_off
        region_len = read_len if uf["access"] == "read" else write_len
        fault_page = WINDOW + 2 * PAGE_SIZE
        if _position_offset(uf["at"], region_len) > region_len:
            raise ValueError(f"spec user_fault at {uf['at']} is past the {region_len}-byte region")
        arg = fault_page - (region_off + _position_offset(uf["at"], region_len))
    reportdata = bytes(range(abi.TDX_REPORTDATA_LEN))  # as the kernel selftest fills it (ref §3)
    before = bytearray([FILLER]) * (WINDOW_PAGES * PAGE_SIZE)
    base = arg - WINDOW
    before[base + read_off:base + read_off + read_len] = reportdata
    proc.poke(WINDOW, bytes(before))
    if uf is not None:
        proc.mprotect(fault_page, WINDOW + WINDOW_PAGES * PAGE_SIZE - fault_page,
                      "w" if uf["access"] == "read" else "r")

    # -- the injection ---------------------------------------------------------------------------
    outcome, operand = spec["tdcall"]["outcome"], spec["tdcall"]["operand"]
    status: int = abi.TDX_SUCCESS
    rtmr_held = False
    if outcome == "forced":
        status = spec["tdcall"]["status"]
        kernel.force_tdcall(status, leaf=abi.TDG_MR_REPORT)
    elif outcome == "operand_invalid":
        status = abi.TDX_OPERAND_INVALID | _OPERAND_IDS[operand]
        if operand in _MISALIGN_TARGET and not prof.cached_report_buf:
            kernel.force_misaligned(_MISALIGN_TARGET[operand])  # the module itself answers
        else:
            kernel.force_tdcall(status, leaf=abi.TDG_MR_REPORT)
    elif outcome == "busy":
        status = abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR
        rtmr_held = module.rtmr_lock_try(True) == abi.TDX_SUCCESS  # another vCPU extending
    if spec["fail_nth"]:
        for cap in ("failslab", "fail_page_alloc"):  # the documented sweep's settings (ref §7)
            kernel.fault(cap).ignore_gfp_wait = False
        kernel.fault("fail_page_alloc").min_order = 0
    if spec["partial_to_user"] is not None:
        proc.fault_user_copy("partial_to_user", at=spec["partial_to_user"])
    mr_held = False
    if spec["mr_lock_held"]:
        mr_held = kernel.mr_lock_try()
        proc.signal_pending = True

    # -- the call ------------------------------------------------------------------------------
    fd = proc.open(kernel.device_path)
    if spec["fail_nth"]:
        proc.fail_nth = spec["fail_nth"]
    try:
        ret = proc.ioctl(fd, cmd, arg)
        trace = proc.last_trace()
        fired = (proc.fail_nth == 0) if spec["fail_nth"] else None
        proc.fail_nth = 0
    finally:
        if rtmr_held:
            module.rtmr_unlock(True)
        if mr_held:
            kernel.mr_lock_release()
    counters = kernel.counters()
    proc.close(fd)

    # -- what the user sees ----------------------------------------------------------------------
    after = proc.peek(WINDOW, WINDOW_PAGES * PAGE_SIZE)
    expected = bytearray(before)
    report = module.report(reportdata)
    wb = prof.status_writeback
    if wb is not None and status != abi.TDX_SUCCESS:
        masked = status & abi.LINUX_V4_STATUS_MASK  # ref §2.2 #4
        expected[base + wb.offset:base + wb.end] = masked.to_bytes(wb.size, "little")
    else:
        expected[base + write_off:base + write_off + write_len] = report
    changed, runs, foreign = 0, [], 0
    run_start = None
    for i, (old, new) in enumerate(zip(before, after)):
        if old != new:
            changed += 1
            foreign += new != expected[i]
            if run_start is None:
                run_start = i
        elif run_start is not None:
            runs.append({"offset": run_start - base, "hex": after[run_start:i].hex()})
            run_start = None
    if run_start is not None:
        runs.append({"offset": run_start - base, "hex": after[run_start:].hex()})
    complete = after[base + write_off:base + write_off + write_len] == report

    record = dict(spec)
    record.update({
        "backend": backend.BACKEND_NAME, "driver": driver, "arg": arg, "status": status,
        "user_fault_offset": None if uf is None else _position_offset(uf["at"], region_len),
        "ret": ret, "outcome": _outcome_name(ret),
        "leaked": counters["outstanding"] - counters["resident"], "locks_held": counters["locks_held"],
        "fail_nth_fired": fired, "trace": [list(t) for t in trace],
        "init_trace": [list(t) for t in kernel.init_trace()], "user_changed": changed,
        "changed": runs, "foreign_bytes": foreign, "tdreport_complete": complete,
    })
    return record


def summarize(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The campaign's summary: the report ioctl's case counts per outcome class and the invariants'
    totals; "cases" counts every case, "quote" summarises the quote path's (campaign_quote.summarize)."""
    quote = [r for r in records if is_quote_case(r)]
    measurement = [r for r in records if is_measurement_case(r)]
    summary = _summarize_report([r for r in records if is_report_case(r)])
    summary["report_cases"] = summary["cases"]
    summary["cases"] = len(records)
    if measurement:
        summary["measurement"] = campaign_measurement.summarize(measurement)
    configfs = [r for r in quote if r["path"] == campaign_quote.PATH]
    ioctl = [r for r in quote if r["path"] == campaign_quote_ioctl.PATH]
    if configfs:
        summary["quote"] = campaign_quote.summarize(configfs)
    if ioctl:
        summary["quote_ioctl"] = campaign_quote_ioctl.summarize(ioctl)
    return summary


def _summarize_report(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    outcomes: Dict[str, int] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {
        "cases": len(records),
        "outcomes": dict(sorted(outcomes.items())),
        "leaking_cases": sum(1 for r in records if r["leaked"]),
        "lock_imbalanced_cases": sum(1 for r in records if r["locks_held"]),
        "foreign_bytes": sum(r["foreign_bytes"] for r in records),
        "user_changed_cases": sum(1 for r in records if r["user_changed"]),
    }


def run(driver: str, backend_name: Optional[str] = None,
        progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
    """run(driver: str, backend_name: str | None = None, progress=None) -> dict

    Every case of ``driver``: {"driver", "backend", "cases": [record...], "summary": {...}}.
    ``progress(done, total)`` is called after each case."""
    specs = cases(driver)
    backend = _backend.load(backend_name)
    records = []
    for i, spec in enumerate(specs, 1):
        records.append(run_case(backend.BACKEND_NAME, driver, spec))
        if progress is not None:
            progress(i, len(specs))
    return {"driver": driver, "backend": backend.BACKEND_NAME, "cases": records,
            "summary": summarize(records)}


def stderr_progress(min_seconds: float = 0.5) -> Callable[[int, int], None]:
    """A progress callback that reports to stderr once the run has taken ``min_seconds``."""
    start = time.monotonic()
    tty = sys.stderr.isatty()
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - start < min_seconds or (done < total and now - last[0] < 0.25):
            return
        last[0] = now
        end = "\n" if (done == total or not tty) else ""
        print(f"\rcampaign: {done}/{total} cases", end=end, file=sys.stderr, flush=True)

    return report


__all__ = ["cases", "report_cases", "is_quote_case", "is_measurement_case", "is_report_case", "run_case", "run", "summarize", "POSITIONS",
           "TDCALL_OUTCOMES"]
