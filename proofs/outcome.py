"""One concrete case, twice: solved in the z3 encoding, and run on the emulator by the one campaign
runner, ``tdxmodel.campaign.run_case``.

``predict(spec, injection)`` pins the encoding's environment variables to a ``ConcreteInjection`` and
solves for the outcome: the return value, whether anything leaked, the injectable points passed (in
order, with the one that failed), and the provenance of every byte of the caller's buffer.
``materialise`` turns that provenance into bytes, given the caller's original buffer and the
module's TDREPORT. A campaign case specification and a concrete injection translate both ways
(``injection_of``, ``spec_of``); ``expected_record`` states what ``run_case`` must record for a case
and ``differences`` lists every disagreement: the conformance tests and ``python -m proofs --replay``
require none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import z3

from proofs.drivers import DRIVERS
from proofs.engine import SolverUnknown
from proofs.spec import DriverSpec
from proofs.symbolic import ConcreteInjection, Injection, Kind, Path
from tdxmodel import _backend, abi, campaign
from tdxmodel.config import ModuleConfig

_U64 = (1 << 64) - 1
_SOLVER_TIMEOUT_MS = 10_000


@dataclass
class Predicted:
    ret: int
    leaked: bool
    points: List[Tuple[str, str, bool]]          # (point, capability, failed), in order
    provenance: List[Tuple[int, int]]            # per caller byte: (Kind, index)


def signed(value: int, bits: int = 64) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def predict(spec: DriverSpec, injection: ConcreteInjection) -> Predicted:
    """predict(spec, injection) -> Predicted: the encoding's outcome for one concrete case."""
    inj = Injection()
    p: Path = spec.ioctl(inj)
    s = z3.SolverFor("QF_BV")
    s.set("timeout", _SOLVER_TIMEOUT_MS)
    s.add(*inj.pin(injection))
    s.add(*p.assumptions)
    r = s.check()
    if r == z3.unknown:
        raise SolverUnknown(s.reason_unknown())
    if r == z3.unsat:
        raise ValueError(f"{spec.name}: case {injection} is outside the encoding's assumptions "
                         "(e.g. a TDCALL status TDG.MR.REPORT cannot return)")
    m = s.model()

    def ev(e):
        return m.eval(e, model_completion=True)

    ret = signed(ev(p.ret).as_long(), inj.reg_bits)
    leaked = z3.is_true(ev(z3.Or(p.leaked(), p.locks_unbalanced())))
    points = [(v.name, v.capability, z3.is_true(ev(v.failed))) for v in p.points if z3.is_true(ev(v.reached))]
    provenance: List[Tuple[int, int]] = [(int(Kind.ORIGINAL), i) for i in range(spec.user_len)]
    for w in p.user_writes:   # in program order, later writes over earlier ones
        if not z3.is_true(ev(w.guard)):
            continue
        count = ev(w.count).as_long()
        k = z3.BitVec("outcome.k", inj.off_bits)
        src = w.source(k)
        # Evaluate everything but the offset k once, then run the small remaining term per byte.
        kind_at = _compile(z3.simplify(m.eval(src.kind, model_completion=False)), k)
        index_at = _compile(z3.simplify(m.eval(src.index, model_completion=False)), k)
        for off in range(count):
            provenance[w.start + off] = (kind_at(off), index_at(off))
    return Predicted(ret, leaked, points, provenance)


def _compile(term: z3.ExprRef, k: z3.BitVecRef) -> Callable[[int], int]:
    """A Python function of k for a model-evaluated term whose only free constant is ``k``: the
    per-byte evaluation of a 1024-byte copy without 1024 z3 substitutions."""
    def build(t):
        if z3.is_bv_value(t):
            v = t.as_long()
            return lambda x: v
        if z3.is_true(t):
            return lambda x: True
        if z3.is_false(t):
            return lambda x: False
        if z3.eq(t, k):
            return lambda x: x
        op = t.decl().kind()
        args = [build(a) for a in t.children()]
        width = t.size() if z3.is_bv(t) else 0
        mask = (1 << width) - 1
        if op == z3.Z3_OP_ITE:
            c, a, b = args
            return lambda x: a(x) if c(x) else b(x)
        if op == z3.Z3_OP_EQ:
            a, b = args
            return lambda x: a(x) == b(x)
        if op == z3.Z3_OP_ULEQ:
            a, b = args
            return lambda x: a(x) <= b(x)
        if op == z3.Z3_OP_ULT:
            a, b = args
            return lambda x: a(x) < b(x)
        if op == z3.Z3_OP_UGEQ:
            a, b = args
            return lambda x: a(x) >= b(x)
        if op == z3.Z3_OP_UGT:
            a, b = args
            return lambda x: a(x) > b(x)
        if op == z3.Z3_OP_NOT:
            (a,) = args
            return lambda x: not a(x)
        if op == z3.Z3_OP_AND:
            return lambda x: all(a(x) for a in args)
        if op == z3.Z3_OP_OR:
            return lambda x: any(a(x) for a in args)
        if op == z3.Z3_OP_BADD:
            return lambda x: sum(a(x) for a in args) & mask
        if op == z3.Z3_OP_BSUB:
            a, b = args
            return lambda x: (a(x) - b(x)) & mask
        if op == z3.Z3_OP_BMUL:
            def mul(x):
                r = 1
                for a in args:
                    r = (r * a(x)) & mask
                return r
            return mul
        if op == z3.Z3_OP_EXTRACT:
            hi, lo = t.params()
            (a,) = args
            return lambda x: (a(x) >> lo) & ((1 << (hi - lo + 1)) - 1)
        if op == z3.Z3_OP_CONCAT:
            widths = [c.size() for c in t.children()]

            def concat(x):
                r = 0
                for a, wd in zip(args, widths):
                    r = (r << wd) | a(x)
                return r
            return concat
        if op == z3.Z3_OP_ZERO_EXT:
            (a,) = args
            return a
        # Anything else: let z3 evaluate it (slow but exact).
        return lambda x: z3.simplify(z3.substitute(t, (k, z3.BitVecVal(x, k.size())))).as_long()
    f = build(term)
    return lambda x: int(f(x))


def materialise(provenance: List[Tuple[int, int]], before: bytes, report: bytes,
                status: int) -> List[Optional[int]]:
    """The byte values a provenance list stands for (None: a kind that names no knowable value)."""
    status_word = (status & abi.LINUX_V4_STATUS_MASK).to_bytes(8, "little")
    out: List[Optional[int]] = []
    for kind, index in provenance:
        if kind in (Kind.ORIGINAL, Kind.CALLER_INPUT):
            out.append(before[index])
        elif kind == Kind.TDREPORT:
            out.append(report[index] if index < len(report) else None)
        elif kind == Kind.TDCALL_STATUS:
            out.append(status_word[index])
        elif kind == Kind.ZEROED:
            out.append(0)
        elif kind == Kind.UNINITIALISED:
            out.append(abi.SLAB_POISON_INUSE)
        else:
            out.append(None)
    return out


# ---- the campaign's cases in the encoding (tdxmodel.campaign.run_case is the one runner) --------------

_STATUS = {("success", None): abi.TDX_SUCCESS,
           ("operand_invalid", "RCX"): abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX,
           ("operand_invalid", "RDX"): abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX,
           ("operand_invalid", "R8"): abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8,
           ("busy", None): abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR}


def _regions(driver: str):
    """(read region, write region) of the request as the campaign schema defines them: the REPORTDATA
    copy-in and the TDREPORT copy-out, each (offset from arg, length), from the profile."""
    req = DRIVERS[driver].p.report
    rd, tr = req.field("reportdata"), req.field("tdreport")
    return (rd.offset, rd.size), (tr.offset, tr.size)


def _position(at, length: int) -> int:
    """The campaign schema's POSITION names (or an offset): region offset of the first faulting byte."""
    if isinstance(at, int):
        return at
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


def injection_of(driver: str, spec: Dict[str, Any], encoding: Optional[DriverSpec] = None) -> ConcreteInjection:
    """injection_of(driver, spec) -> ConcreteInjection: a campaign case specification
    (schema: tdxmodel.campaign) as the encoding's concrete injection."""
    td = spec["tdcall"]
    status = td["status"] if td["outcome"] == "forced" else _STATUS[(td["outcome"], td["operand"])]
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
        passed = predict(encoding or DRIVERS[driver], concrete).points
        if spec["fail_nth"] <= len(passed):   # beyond the last point the fault never fires (ref §7)
            concrete.failed_point = passed[spec["fail_nth"] - 1][0]
    return concrete


def spec_of(driver: str, concrete: ConcreteInjection, label: str = "concrete case",
            concurrent_extend: bool = False) -> Dict[str, Any]:
    """spec_of(driver, concrete, label) -> dict: the campaign case that realises a concrete injection
    (the inverse of ``injection_of``), for ``tdxmodel.campaign.run_case``.

    A failing point -> fail-nth N, its position among the points the case passes (with the documented
    sweep settings, ref §7); a copy-in limit -> a genuine fault at that byte of the REPORTDATA; a
    copy-out limit -> ``partial_to_user``; put_user's limit -> the status word's page read-only; a
    TDCALL status -> forced (``Kernel.force_tdcall``); ``concurrent_extend`` -> another vCPU's EXTEND
    in flight (the module's RTMR lock held, ref §4.8); mr_lock interrupted -> held elsewhere with a
    signal pending."""
    (read_off, read_len), (write_off, write_len) = _regions(driver)
    user_fault = None
    read_limit = concrete.limits.get("reportdata:copy_from_user")
    if read_limit is not None and read_limit < read_len:
        user_fault = {"access": "read", "at": read_limit}
    put_limit = concrete.limits.get("status:put_user")
    wb = DRIVERS[driver].p.status_writeback
    if put_limit is not None and wb is not None and put_limit < wb.size:
        if user_fault is not None:
            raise ValueError("a case cannot fault both the copy-in and put_user")
        user_fault = {"access": "write", "at": wb.offset - write_off}   # put_user is one store
    write_limit = concrete.limits.get("tdreport:copy_to_user")
    partial = write_limit if write_limit is not None and write_limit < write_len else None
    if concurrent_extend:
        tdcall = {"outcome": "busy", "operand": None}
    elif concrete.tdcall_status == abi.TDX_SUCCESS:
        tdcall = {"outcome": "success", "operand": None}
    else:
        tdcall = {"outcome": "forced", "operand": None, "status": concrete.tdcall_status}
    fail_nth = _nth(DRIVERS[driver], concrete) if concrete.failed_point is not None else 0
    return {"id": label, "cmd": concrete.cmd, "fail_nth": fail_nth, "user_fault": user_fault,
            "partial_to_user": partial, "tdcall": tdcall, "mr_lock_held": concrete.lock_interrupted,
            "description": label}


def _nth(spec: DriverSpec, injection: ConcreteInjection) -> int:
    """fail-nth's N for the failing point: its position among the points this case passes."""
    passed = predict(spec, ConcreteInjection(injection.cmd, injection.tdcall_status, None,
                                             injection.limits, injection.lock_interrupted)).points
    names = [name for name, _cap, _failed in passed]
    if injection.failed_point not in names:
        raise ValueError(f"{injection.failed_point} is not reached in this case")
    return names.index(injection.failed_point) + 1


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


def module_report(backend_name: str) -> bytes:
    """The TDREPORT run_case's module produces for the selftest REPORTDATA (ref §3): the one value the
    encoding does not compute (hashes and MAC). Same config and memory as run_case."""
    be = _backend.load(backend_name)
    return be.Module(ModuleConfig(seed=1), memory_pages=campaign.MODULE_PAGES).report(
        bytes(range(abi.TDX_REPORTDATA_LEN)))


def expected_record(driver: str, spec: Dict[str, Any], report: bytes,
                    encoding: Optional[DriverSpec] = None) -> Dict[str, Any]:
    """What run_case must record for ``spec``, solved in the encoding (``encoding``: another than the
    driver's own, e.g. a mutant); ``report`` is the module's TDREPORT for the case's REPORTDATA."""
    enc = encoding or DRIVERS[driver]
    concrete = injection_of(driver, spec, enc)
    pred = predict(enc, concrete)
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
    """Every disagreement between the encoding's expected record and run_case's (empty: they agree)."""
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


def case_space(spec: DriverSpec) -> List[Tuple[str, ConcreteInjection]]:
    """The conformance cases for one driver, by the campaign's classes (ref §7): the report command
    and the other generation's command; each injectable point the ioctl passes failed by injection;
    each user copy faulting genuinely at its first, second, middle and last byte; each status
    TDG.MR.REPORT can return; v4's put_user meeting a read-only buffer; 6.16's interrupted mr_lock."""
    from proofs.module_leaves import report_statuses
    cmd = abi.VALUES[spec.report_cmd]
    other_cmd = spec.p.other_report_cmd()
    statuses = [z3.simplify(s).as_long() for s in report_statuses()][1:]
    cases: List[Tuple[str, ConcreteInjection]] = [
        ("success", ConcreteInjection(cmd)),
        (f"unknown cmd 0x{other_cmd:08x}", ConcreteInjection(other_cmd)),
    ]
    for status in statuses:
        cases.append((f"status 0x{status:016x}", ConcreteInjection(cmd, tdcall_status=status)))
    passed = predict(spec, ConcreteInjection(cmd)).points + \
        predict(spec, ConcreteInjection(cmd, tdcall_status=statuses[0])).points
    seen = []
    for name, _cap, _failed in passed:
        if name in seen:
            continue
        seen.append(name)
        status = statuses[0] if name == "status:put_user" else abi.TDX_SUCCESS
        cases.append((f"fail {name}", ConcreteInjection(cmd, tdcall_status=status, failed_point=name)))
    for point, length in (("reportdata:copy_from_user", abi.TDX_REPORTDATA_LEN),
                          ("tdreport:copy_to_user", abi.TDX_REPORT_LEN)):
        for at in (0, 1, length // 2, length - 1):
            cases.append((f"{point} faults at byte {at}", ConcreteInjection(cmd, limits={point: at})))
    if "status:put_user" in seen:
        cases.append(("status:put_user meets a read-only buffer",
                      ConcreteInjection(cmd, tdcall_status=statuses[0], limits={"status:put_user": 0})))
    if spec.has_mr_lock:
        cases.append(("mr_lock interrupted", ConcreteInjection(cmd, lock_interrupted=True)))
    return cases
