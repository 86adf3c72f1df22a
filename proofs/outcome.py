"""One concrete case, twice: solved in the z3 encoding, and run on the emulator through the Process API.

``predict(spec, injection)`` pins the encoding's environment variables to a ``ConcreteInjection`` and
solves for the outcome: the return value, whether anything leaked, the injectable points passed (in
order, with the one that failed), and the provenance of every byte of the caller's buffer.
``materialise`` turns that provenance into bytes, given the caller's original buffer and the
module's TDREPORT. ``run`` performs the same case on an emulator backend. ``compare`` lists every
difference; the conformance tests and ``python -m proofs --replay`` require none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import z3

from proofs.engine import SolverUnknown
from proofs.spec import DriverSpec
from proofs.symbolic import ConcreteInjection, Injection, Kind, Path
from tdxmodel import abi

PAGE = abi.TDX_PAGE_SIZE
USER_BASE = 0x10000          # where the caller's three-page window is mapped
_U64 = (1 << 64) - 1
_SOLVER_TIMEOUT_MS = 10_000


@dataclass
class Predicted:
    ret: int
    leaked: bool
    points: List[Tuple[str, str, bool]]          # (point, capability, failed), in order
    provenance: List[Tuple[int, int]]            # per caller byte: (Kind, index)


@dataclass
class Observed:
    ret: int
    leaked: bool
    points: List[Tuple[str, str, bool]]
    before: bytes
    after: bytes
    report: bytes = b""                          # the module's TDREPORT for this call's REPORTDATA


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


def _pattern(n: int) -> bytes:
    # Distinct, nonzero, not the slab poison: any byte the call changes is visible.
    return bytes(((i * 37 + 11) % 251) + 1 for i in range(n))


KernelFactory = Callable[[str], object]


def run(backend, spec: DriverSpec, injection: ConcreteInjection, make_kernel: KernelFactory,
        concurrent_extend: bool = False) -> Observed:
    """run(backend, spec, injection, make_kernel) -> Observed: the case on the emulator (Process API).

    Realisation of each injection kind (ref §7): an allocation or user-copy point failing -> fail-nth
    with the documented sweep settings (ignore-gfp-wait N, min-order 0); a read limit -> the caller's
    buffer placed so that its byte sits at a page boundary before an unmapped page; a write limit ->
    ``fault_user_copy("partial_to_user", at)``; put_user's limit -> the first page read-only; a TDCALL
    status -> ``force_tdcall``; mr_lock interrupted -> the lock held elsewhere and a signal pending.
    ``concurrent_extend``: another vCPU's TDG.MR.RTMR.EXTEND is in flight during the call (the module's
    RTMR lock held exclusively, ref §4.8), instead of a forced status."""
    kernel = make_kernel(spec.name)
    proc = kernel.process()
    read_limit = injection.limits.get("reportdata:copy_from_user")
    read_off = spec.p.report.field("reportdata").offset
    proc.mmap(USER_BASE, 3 * PAGE, "rw")
    if read_limit is not None and read_limit < abi.TDX_REPORTDATA_LEN:
        arg = USER_BASE + 2 * PAGE - (read_off + read_limit)
        proc.mprotect(USER_BASE + 2 * PAGE, PAGE, "")   # mapped (peek/poke work) but inaccessible
    else:
        arg = USER_BASE + PAGE
    before = _pattern(spec.user_len)
    proc.poke(arg, before)
    put_limit = injection.limits.get("status:put_user")
    if put_limit is not None and put_limit < 8:
        # put_user is one 8-byte store, all or nothing: a read-only buffer makes it fault.
        proc.mprotect(USER_BASE, 3 * PAGE, "r")
    write_limit = injection.limits.get("tdreport:copy_to_user")
    if write_limit is not None and write_limit < abi.TDX_REPORT_LEN:
        proc.fault_user_copy("partial_to_user", at=write_limit)
    if injection.tdcall_status != abi.TDX_SUCCESS and not concurrent_extend:
        kernel.force_tdcall(injection.tdcall_status, leaf=abi.TDG_MR_REPORT)
    fd = proc.open(kernel.device_path)
    if fd < 0:
        raise RuntimeError(f"open({kernel.device_path}) returned {fd}")
    held = extending = False
    if concurrent_extend:
        extending = kernel.module.rtmr_lock_try(True) == abi.TDX_SUCCESS
        if not extending:
            raise RuntimeError("could not take the module's RTMR lock for the concurrent extend")
    if injection.lock_interrupted:
        held = kernel.mr_lock_try()
        proc.signal_pending = True
    if injection.failed_point is not None:
        for cap in ("failslab", "fail_page_alloc"):
            kernel.fault(cap).ignore_gfp_wait = False
        kernel.fault("fail_page_alloc").min_order = 0
        proc.fail_nth = _nth(spec, injection)
    try:
        ret = proc.ioctl(fd, injection.cmd, arg)
    finally:
        proc.fail_nth = 0
        proc.signal_pending = False
        if held:
            kernel.mr_lock_release()
        if extending:
            kernel.module.rtmr_unlock(True)
    trace = [tuple(t) for t in proc.last_trace()]
    c = kernel.counters()
    leaked = c["outstanding"] != c["resident"] or c["locks_held"] != 0
    after = proc.peek(arg, spec.user_len)
    report = b""
    if injection.tdcall_status == abi.TDX_SUCCESS:
        report = kernel.module.report(before[read_off:read_off + abi.TDX_REPORTDATA_LEN])
    proc.close(fd)
    return Observed(ret, leaked, trace, before, after, report)


def _nth(spec: DriverSpec, injection: ConcreteInjection) -> int:
    """fail-nth's N for the failing point: its position among the points this case passes."""
    passed = predict(spec, ConcreteInjection(injection.cmd, injection.tdcall_status, None,
                                             injection.limits, injection.lock_interrupted)).points
    names = [name for name, _cap, _failed in passed]
    if injection.failed_point not in names:
        raise ValueError(f"{injection.failed_point} is not reached in this case")
    return names.index(injection.failed_point) + 1


def compare(pred: Predicted, obs: Observed, status: int) -> List[str]:
    """Every difference between the encoding's outcome and the emulator's (empty: they agree)."""
    diffs = []
    if pred.ret != obs.ret:
        diffs.append(f"ret: z3 {pred.ret}, emulator {obs.ret}")
    if pred.leaked != obs.leaked:
        diffs.append(f"leaked: z3 {pred.leaked}, emulator {obs.leaked}")
    if pred.points != obs.points:
        diffs.append(f"points passed: z3 {pred.points}, emulator {obs.points}")
    values = materialise(pred.provenance, obs.before, obs.report, status)
    bad = [i for i, v in enumerate(values) if v is None or v != obs.after[i]]
    if bad:
        i = bad[0]
        diffs.append(f"user bytes differ at {len(bad)} offsets, first {i}: z3 {Kind(pred.provenance[i][0]).name}"
                     f"[{pred.provenance[i][1]}] = {values[i]}, emulator {obs.after[i]}")
    return diffs


def changed_offsets(obs: Observed) -> List[int]:
    return [i for i in range(len(obs.before)) if obs.before[i] != obs.after[i]]


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
