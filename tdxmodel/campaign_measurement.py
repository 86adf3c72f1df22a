"""The fault campaign over a generation's sysfs measurement files (layer 3; ``tdxmodel.campaign`` runs
it). Only generations with measurement files (``profiles.Profile.measurements``, 6.16+) have cases.

Each case is one read or write of ``rtmr2:sha384`` as a client makes it (ref §2.5 "Read" / "Write":
kernfs' bounce buffer, sysfs, tsm-mr, the driver), with fail-nth armed at the N-th injectable point
under the documented sweep's settings (ref §7), from 1 to one past the points the call passes.

Case specification (a dict; every key always present)::

    id           str   "measurement:read:fail_nth:N" / "measurement:write:fail_nth:N"
    file         str   the measurement file's name (profiles.Measurement.name)
    op           str   "read" | "write"
    count, offset int  of the pread/pwrite (48 and 0: the whole register)
    fail_nth     int   Process.fail_nth for the call
    description  str

Case record (the spec's keys plus)::

    backend, driver  str
    ret              int   bytes read/written or -errno
    outcome          str   "48", "0" or "-E..."
    trace            [[point, capability, failed], ...]
    fail_nth_fired   bool
    leaked           int   allocations outstanding after the call beyond the resident ones
    locks_held       int
    rtmr_changed     bool  the register was extended
"""

from __future__ import annotations

import errno as _errno
from typing import Any, Dict, List, Optional

from tdxmodel import _backend, abi, profiles
from tdxmodel.config import ModuleConfig

FILE = "rtmr2:sha384"
BUF = 0x10000
_POINTS: Dict[tuple, int] = {}


def is_measurement_case(spec: Dict[str, Any]) -> bool:
    return isinstance(spec, dict) and "file" in spec


def _spec(op: str, n: int) -> Dict[str, Any]:
    return {"id": f"measurement:{op}:fail_nth:{n}", "file": FILE, "op": op, "count": abi.MEASUREMENT_LEN,
            "offset": 0, "fail_nth": n, "description": f"{op} {FILE}, fail-nth {n}"}


def cases(driver: str) -> List[Dict[str, Any]]:
    prof = profiles.get(driver)
    if prof.measurement(FILE) is None:
        return []
    out = []
    for op in ("read", "write"):
        for n in range(1, _count_points(driver, op) + 2):
            out.append(_spec(op, n))
    return out


def _count_points(driver: str, op: str) -> int:
    """Injectable points the call passes (one dry run on the reference model, cached)."""
    if (driver, op) not in _POINTS:
        spec = dict(_spec(op, 0))
        _POINTS[driver, op] = len(run_case("reference", driver, spec)["trace"])
    return _POINTS[driver, op]


def _outcome(ret: int) -> str:
    return str(ret) if ret >= 0 else f"-{_errno.errorcode.get(-ret, str(-ret))}"


def run_case(backend_name: Optional[str], driver: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    prof = profiles.get(driver)
    mr = prof.measurement(spec["file"])
    if mr is None or spec["op"] not in ("read", "write") or (spec["op"] == "write" and not mr.writable):
        raise ValueError(f"{driver}: no {spec['op']} of measurement file {spec['file']!r}")
    backend = _backend.load(backend_name)
    module = backend.Module(ModuleConfig(seed=1), memory_pages=96)
    kernel = backend.Kernel(module, driver, seed=0)
    for cap in ("failslab", "fail_page_alloc"):  # the documented sweep's settings (ref §7)
        kernel.fault(cap).ignore_gfp_wait = False
    kernel.fault("fail_page_alloc").min_order = 0
    proc = kernel.process()
    proc.mmap(BUF, abi.TDX_PAGE_SIZE, "rw")
    proc.poke(BUF, bytes(range(abi.MEASUREMENT_LEN)))
    index = (mr.tdr_offset - abi.TDR_OFF_RTMR0) // abi.TDX_SHA384_LEN
    before = module.rtmr(index)
    fd = proc.open(f"{prof.measurement_dirs[0]}/{mr.name}", 2 if mr.writable else 0)
    proc.fail_nth = spec["fail_nth"]
    call = proc.pwrite if spec["op"] == "write" else proc.pread
    ret = call(fd, BUF, spec["count"], spec["offset"])
    trace = proc.last_trace()
    fired = proc.fail_nth == 0 if spec["fail_nth"] else None
    proc.fail_nth = 0
    proc.close(fd)
    c = kernel.counters()
    record = dict(spec)
    record.update({"backend": backend.BACKEND_NAME, "driver": driver, "ret": ret, "outcome": _outcome(ret),
                   "trace": [list(t) for t in trace], "fail_nth_fired": fired,
                   "leaked": c["outstanding"] - c["resident"], "locks_held": c["locks_held"],
                   "rtmr_changed": module.rtmr(index) != before})
    return record


def summarize(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    outcomes: Dict[str, int] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {"cases": len(records), "outcomes": dict(sorted(outcomes.items())),
            "leaking_cases": sum(1 for r in records if r["leaked"]),
            "lock_imbalanced_cases": sum(1 for r in records if r["locks_held"])}
