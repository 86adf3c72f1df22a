"""The fault campaign's cases (``tdxmodel.campaign``, docs/CONTRACT.md "Campaign") in the z3 encoding.

``injection_of(driver, spec)`` reads a campaign case specification as the encoding's concrete
injection; ``expected_record(driver, spec, report)`` solves it and states what ``run_case`` must
record (return value, leak, lock balance, the points passed, and the exact changed runs of the
caller's memory); ``differences(expected, record)`` lists any disagreement.
"""

from __future__ import annotations

from typing import Any, Dict, List

from proofs.drivers import DRIVERS
from proofs.outcome import materialise, predict
from proofs.symbolic import ConcreteInjection
from tdxmodel import abi, campaign

_STATUS = {("success", None): abi.TDX_SUCCESS,
           ("operand_invalid", "RCX"): abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX,
           ("operand_invalid", "RDX"): abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX,
           ("operand_invalid", "R8"): abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8,
           ("busy", None): abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR}


def _regions(driver: str):
    """(read region, write region) of the request as the campaign schema defines them: the REPORTDATA
    copy-in and the TDREPORT copy-out, each (offset from arg, length) (ref §2.2, §2.4)."""
    req = DRIVERS[driver].p.report
    rd, tr = req.field("reportdata"), req.field("tdreport")
    return (rd.offset, rd.size), (tr.offset, tr.size)


def _position(at: str, length: int) -> int:
    """The campaign schema's POSITION names: region offset of the first faulting byte."""
    return {"first_byte": 0, "middle": length // 2, "last_byte": length - 1, "page_boundary": length}[at]


def _copies(driver: str):
    """The user accesses of the ioctl: point -> (offset from arg, length, permission)."""
    (read_off, read_len), (write_off, write_len) = _regions(driver)
    out = {"reportdata:copy_from_user": (read_off, read_len, "read"),
           "tdreport:copy_to_user": (write_off, write_len, "write")}
    wb = DRIVERS[driver].p.status_writeback
    if wb is not None:
        out["status:put_user"] = (wb.offset, wb.size, "write")   # ref §2.2 row 4
    return out


def injection_of(driver: str, spec: Dict[str, Any]) -> ConcreteInjection:
    """injection_of(driver: str, spec: dict) -> ConcreteInjection (schema: tdxmodel.campaign)."""
    status = _STATUS[(spec["tdcall"]["outcome"], spec["tdcall"]["operand"])]
    limits: Dict[str, int] = {}
    uf = spec["user_fault"]
    if uf is not None:
        read_region, write_region = _regions(driver)
        region_off, region_len = read_region if uf["access"] == "read" else write_region
        first_bad = region_off + _position(uf["at"], region_len)  # from arg; later pages lose it too
        for point, (start, length, access) in _copies(driver).items():
            if access == uf["access"] and start + length > first_bad:
                limits[point] = max(0, first_bad - start)
    if spec["partial_to_user"] is not None:
        point = "tdreport:copy_to_user"
        limits[point] = min(limits.get(point, spec["partial_to_user"]), spec["partial_to_user"])
    concrete = ConcreteInjection(cmd=spec["cmd"], tdcall_status=status, limits=limits,
                                 lock_interrupted=bool(spec["mr_lock_held"]))
    if spec["fail_nth"]:
        passed = predict(DRIVERS[driver], concrete).points
        if spec["fail_nth"] <= len(passed):   # beyond the last point the fault never fires (ref §7)
            concrete.failed_point = passed[spec["fail_nth"] - 1][0]
    return concrete


def _runs(after: List[int], before: bytes) -> List[Dict[str, Any]]:
    runs, start = [], None
    for i, (old, new) in enumerate(zip(before, after)):
        if old != new and start is None:
            start = i
        elif old == new and start is not None:
            runs.append({"offset": start, "hex": bytes(after[start:i]).hex()})
            start = None
    if start is not None:
        runs.append({"offset": start, "hex": bytes(after[start:]).hex()})
    return runs


def caller_buffer(driver: str) -> bytes:
    """The request as run_case fills it: the selftest's REPORTDATA 0..63 (ref §3), FILLER elsewhere."""
    (read_off, read_len), _write = _regions(driver)
    buf = bytearray([campaign.FILLER]) * DRIVERS[driver].user_len
    buf[read_off:read_off + read_len] = bytes(range(read_len))
    return bytes(buf)


def expected_record(driver: str, spec: Dict[str, Any], report: bytes) -> Dict[str, Any]:
    """What run_case must record for ``spec``, solved in the encoding; ``report`` is the module's
    TDREPORT for the case's REPORTDATA (the only value z3 does not compute)."""
    concrete = injection_of(driver, spec)
    pred = predict(DRIVERS[driver], concrete)
    before = caller_buffer(driver)
    values = materialise(pred.provenance, before, report, concrete.tdcall_status)
    if any(v is None for v in values):
        raise ValueError(f"{spec['id']}: the encoding writes bytes of no knowable value")
    after = [int(v) for v in values]
    runs = _runs(after, before)
    return {"ret": pred.ret, "leaked": pred.leaked,
            "trace": [list(p) for p in pred.points],
            "user_changed": sum(len(r["hex"]) // 2 for r in runs), "changed": runs,
            "fail_nth_fired": (concrete.failed_point is not None) if spec["fail_nth"] else None}


def differences(expected: Dict[str, Any], record: Dict[str, Any]) -> List[str]:
    out = []
    leaked = bool(record["leaked"]) or bool(record["locks_held"])
    checks = [("ret", expected["ret"], record["ret"]), ("leaked", expected["leaked"], leaked),
              ("trace", expected["trace"], record["trace"]),
              ("fail_nth_fired", expected["fail_nth_fired"], record["fail_nth_fired"]),
              ("user_changed", expected["user_changed"], record["user_changed"]),
              ("changed", expected["changed"], record["changed"])]
    for name, want, got in checks:
        if want != got:
            out.append(f"{name}: z3 {want!r}, run_case {got!r}")
    return out
