"""Symbolic execution vocabulary shared by the driver encodings (layer 5, proofs only).

A driver path is written as straight-line Python that mirrors the C code statement by statement
(style.md lesson 10): ``p.kmalloc(...)``, ``p.return_if(...)``, ``p.goto_if(...)``, ``p.label()``,
``p.copy_from_user(...)``, ``p.copy_to_user(...)``, ``p.kfree(...)``. Each statement is guarded by
"this point is still executing" (neither returned nor jumped to a label), so one run of the Python
builds z3 terms for every path at once.

Memory is tracked by *provenance*: every byte of a kernel buffer and of the caller's buffer is a
``Prov(kind, index)`` saying where its value came from (the caller's own byte, the module's TDREPORT,
uninitialised slab memory, ...). Theorems about disclosure and silent loss are statements about
provenance at a free offset ``i``, which keeps every check quantifier-free (QF_BV).

Fault inputs come from an ``Injection``: one z3 variable per decision the environment makes
(an allocation returns NULL, a user copy is failed by fail_usercopy or meets a genuinely
inaccessible byte, the TDCALL status, a signal while waiting for a lock). A concrete campaign case
pins those variables (``Injection.pin``) and the same encoding then yields one outcome.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import z3

from proofs import abi as zabi
from proofs.abi import CMD_BITS, OFF_BITS, REG_BITS

KIND_BITS = 8


class Kind(enum.IntEnum):
    """Where a byte's value came from."""

    ORIGINAL = 0        # the caller's byte at this very offset, as it was before the call
    CALLER_INPUT = 1    # a byte the kernel read from the caller's buffer (index: its offset there)
    TDREPORT = 2        # a byte of the TDREPORT the module built in this call (index: offset in it)
    TDCALL_STATUS = 3   # a byte of the status word v4 copies back (ref §2.2 step 4)
    UNINITIALISED = 4   # kmalloc memory never written: slab poison (ref §2.2 step 1, §2.4 step 1)
    ZEROED = 5          # kzalloc / get_zeroed_page memory never written, or copy_from_user's zero fill (ref §7)
    STALE_REPORT = 6    # 6.16's cached buffer still holding an earlier call's report (ref §2.5)


#: Kinds a byte written to user memory may have without disclosing anything (theorem no_disclosure).
NON_DISCLOSING = (Kind.TDREPORT, Kind.CALLER_INPUT, Kind.TDCALL_STATUS)


@dataclass(frozen=True)
class Prov:
    """The provenance of one byte: ``kind`` (KIND_BITS wide) and ``index`` (an offset)."""

    kind: z3.BitVecRef
    index: z3.BitVecRef

    @staticmethod
    def of(kind: Kind, index: z3.BitVecRef) -> "Prov":
        return Prov(z3.BitVecVal(int(kind), KIND_BITS), index)

    def is_kind(self, kind: Kind) -> z3.BoolRef:
        return self.kind == int(kind)

    def __eq__(self, other: object) -> z3.BoolRef:  # type: ignore[override]
        assert isinstance(other, Prov)
        return z3.And(self.kind == other.kind, self.index == other.index)

    __hash__ = None  # type: ignore[assignment]


def ite(cond: z3.BoolRef, then: Prov, other: Prov) -> Prov:
    return Prov(z3.If(cond, then.kind, other.kind), z3.If(cond, then.index, other.index))


Content = Callable[[z3.BitVecRef], Prov]


def in_range(i: z3.BitVecRef, start: int, length) -> z3.BoolRef:
    """start <= i < start + length, unsigned and without wrap-around."""
    return z3.And(z3.UGE(i, start), z3.ULT(i - start, length))


class Injection:
    """The free inputs of one ioctl call, one named z3 variable per environment decision."""

    def __init__(self, off_bits: int = OFF_BITS, reg_bits: int = REG_BITS, prefix: str = "") -> None:
        self.off_bits = off_bits
        self.reg_bits = reg_bits
        self.prefix = prefix    # z3 names are global: a second call in one formula needs its own prefix
        self.cmd = z3.BitVec(f"{prefix}cmd", CMD_BITS)
        self.tdcall_status = z3.BitVec(f"{prefix}tdcall_status", reg_bits)
        self.lock_interrupted = z3.Bool(f"{prefix}mr_lock_interrupted")
        self._fails: Dict[str, z3.BoolRef] = {}
        self._limits: Dict[str, z3.BitVecRef] = {}

    def fails(self, point: str) -> z3.BoolRef:
        """Injected failure of ``point`` (failslab / fail_page_alloc NULL, fail_usercopy copying nothing)."""
        if point not in self._fails:
            self._fails[point] = z3.Bool(f"{self.prefix}fail[{point}]")
        return self._fails[point]

    def limit(self, point: str) -> z3.BitVecRef:
        """For a user copy: offset (from the copy's start) of the first byte the caller's mapping does
        not allow; at or past the copy's length means no genuine fault (ref §7, partial copies)."""
        if point not in self._limits:
            self._limits[point] = z3.BitVec(f"{self.prefix}limit[{point}]", self.off_bits)
        return self._limits[point]

    def variables(self) -> Dict[str, z3.ExprRef]:
        pre = self.prefix
        out: Dict[str, z3.ExprRef] = {f"{pre}cmd": self.cmd, f"{pre}tdcall_status": self.tdcall_status,
                                      f"{pre}mr_lock_interrupted": self.lock_interrupted}
        out.update({f"{pre}fail[{k}]": v for k, v in self._fails.items()})
        out.update({f"{pre}limit[{k}]": v for k, v in self._limits.items()})
        return out

    def pin(self, concrete: "ConcreteInjection") -> List[z3.BoolRef]:
        """Constraints fixing every variable to a concrete case (variables the path never created
        are simply absent)."""
        cons = [self.cmd == concrete.cmd, self.tdcall_status == concrete.tdcall_status,
                self.lock_interrupted == concrete.lock_interrupted]
        for point, var in self._fails.items():
            cons.append(var == (point == concrete.failed_point))
        for point, var in self._limits.items():
            limit = concrete.limits.get(point, (1 << self.off_bits) - 1)
            cons.append(var == limit)
        return cons


@dataclass
class ConcreteInjection:
    """One concrete case: what a campaign case or a replay injects."""

    cmd: int
    tdcall_status: int = 0
    failed_point: Optional[str] = None       # the one point fail-nth / fail_* makes fail
    limits: Dict[str, int] = field(default_factory=dict)  # point -> first inaccessible byte offset
    lock_interrupted: bool = False


@dataclass
class KBuf:
    """A kernel buffer: its allocation guard, its free guard and its current byte provenance."""

    name: str
    size: int
    ok: z3.BoolRef                # the allocator returned non-NULL
    allocated: z3.BoolRef         # the allocation ran and succeeded
    content: Content
    resident: bool = False        # kept beyond the call by design (6.16's report buffer, ref §2.5)
    freed: z3.BoolRef = field(default_factory=lambda: z3.BoolVal(False))
    double_freed: z3.BoolRef = field(default_factory=lambda: z3.BoolVal(False))


@dataclass
class UserWrite:
    """Bytes ``[start, start + count)`` of the caller's buffer get ``source(k)`` for k < count."""

    what: str
    guard: z3.BoolRef
    start: int
    count: z3.BitVecRef
    length: int                   # what the statement tried to write
    source: Content


@dataclass
class PointVisit:
    """An injectable point (ref §7) the path passes: reached when ``reached``; ``failed`` when fault
    injection fails it (a genuine user-memory fault is not an injection, as in ``last_trace``)."""

    name: str
    capability: str
    reached: z3.BoolRef
    failed: z3.BoolRef
    length: int = 0               # bytes a user copy moves (0: not a user copy)


@dataclass
class Lock:
    name: str
    taken: z3.BoolRef
    released: z3.BoolRef = field(default_factory=lambda: z3.BoolVal(False))


class Path:
    """One driver entry point under construction; see the module docstring."""

    def __init__(self, inj: Injection, name: str) -> None:
        self.inj = inj
        self.name = name
        self.off_bits = inj.off_bits
        self.returned: z3.BoolRef = z3.BoolVal(False)
        self.jumped: z3.BoolRef = z3.BoolVal(False)
        self._conds: List[z3.BoolRef] = []
        #: Facts about the environment every theorem on this path assumes (e.g. the statuses the
        #: module can return, proved separately by theorem operand_checks).
        self.assumptions: List[z3.BoolRef] = []
        self.ret: z3.BitVecRef = z3.BitVecVal(0, inj.reg_bits)
        self.buffers: List[KBuf] = []
        self.user_writes: List[UserWrite] = []
        self.points: List[PointVisit] = []
        self.locks: List[Lock] = []
        self.user_write_failed: z3.BoolRef = z3.BoolVal(False)
        #: The TDREPORT the module produced in this call, once a TDCALL is encoded.
        self.report: Optional[Content] = None
        self.report_status: Optional[z3.BitVecRef] = None
        self.report_reached: z3.BoolRef = z3.BoolVal(False)

    # ------------------------------------------------------------------ control flow
    @property
    def live(self) -> z3.BoolRef:
        """This statement executes: no earlier ``return`` and no pending ``goto``."""
        return z3.And([z3.Not(self.returned), z3.Not(self.jumped)] + self._conds)

    @contextlib.contextmanager
    def when(self, cond: z3.BoolRef):
        """``if (cond) { ... }``: statements inside run only when ``cond`` holds."""
        self._conds.append(cond)
        try:
            yield
        finally:
            self._conds.pop()

    def assign_ret(self, value: z3.BitVecRef) -> None:
        """``ret = value;``"""
        self.ret = z3.If(self.live, value, self.ret)

    def return_if(self, cond: z3.BoolRef, value: Optional[z3.BitVecRef] = None) -> None:
        """``if (cond) return value;`` (``value`` None: return the current ``ret``)."""
        taken = z3.And(self.live, cond)
        if value is not None:
            self.ret = z3.If(taken, value, self.ret)
        self.returned = z3.Or(self.returned, taken)

    def goto_if(self, cond: z3.BoolRef, value: Optional[z3.BitVecRef] = None) -> None:
        """``if (cond) { ret = value; goto out; }``"""
        taken = z3.And(self.live, cond)
        if value is not None:
            self.ret = z3.If(taken, value, self.ret)
        self.jumped = z3.Or(self.jumped, taken)

    def label(self) -> None:
        """``out:``: jumped paths rejoin here."""
        assert not self._conds, "a label inside an if block"
        self.jumped = z3.BoolVal(False)

    def finish(self) -> None:
        """The closing ``return ret;``."""
        self.returned = z3.BoolVal(True)

    # ------------------------------------------------------------------ points and allocation
    def _point(self, name: str, capability: str, failed: z3.BoolRef, length: int = 0) -> z3.BoolRef:
        reached = self.live
        self.points.append(PointVisit(name, capability, reached, z3.And(reached, failed), length))
        return reached

    def alloc(self, name: str, size: int, *, point: str, capability: str, zeroed: bool,
              resident: bool = False) -> KBuf:
        """``buf = kmalloc(size)`` / ``kzalloc`` / ``get_zeroed_page``: NULL when the point fails."""
        failed = self.inj.fails(point)
        reached = self._point(point, capability, failed)
        kind = Kind.ZEROED if zeroed else Kind.UNINITIALISED
        buf = KBuf(name, size, ok=z3.Not(failed), allocated=z3.And(reached, z3.Not(failed)),
                   content=lambda j, kind=kind: Prov.of(kind, j), resident=resident)
        self.buffers.append(buf)
        return buf

    def kfree(self, buf: KBuf) -> None:
        """``kfree(buf)``: a no-op for NULL (the allocation failed or never ran)."""
        frees = z3.And(self.live, buf.allocated)
        buf.double_freed = z3.Or(buf.double_freed, z3.And(frees, buf.freed))
        buf.freed = z3.Or(buf.freed, frees)

    # ------------------------------------------------------------------ locks
    def mutex_lock_interruptible(self, name: str) -> z3.BoolRef:
        """``mutex_lock_interruptible(&name)``: nonzero (True) when a signal interrupts the wait."""
        interrupted = self.inj.lock_interrupted
        self.locks.append(Lock(name, taken=z3.And(self.live, z3.Not(interrupted))))
        return interrupted

    def mutex_unlock(self, name: str) -> None:
        lock = next(l for l in self.locks if l.name == name)
        lock.released = z3.Or(lock.released, z3.And(self.live, lock.taken))

    # ------------------------------------------------------------------ user copies (ref §7)
    def _copied(self, point: str, n: int) -> z3.BitVecRef:
        failed = self.inj.fails(point)        # fail_usercopy: copies nothing
        limit = self.inj.limit(point)         # genuine fault after `limit` bytes
        return z3.If(failed, z3.BitVecVal(0, self.off_bits), z3.If(z3.ULT(limit, n), limit, n))

    def copy_from_user(self, dst: KBuf, dst_off: int, user_off: int, n: int, *, point: str) -> z3.BitVecRef:
        """``copy_from_user(dst + dst_off, arg + user_off, n)``: bytes not copied. The uncopied tail
        of the destination is zero-filled (ref §7)."""
        copied = self._copied(point, n)
        reached = self._point(point, "fail_usercopy", self.inj.fails(point), n)
        old = dst.content

        def content(j, old=old, reached=reached, copied=copied):
            k = j - dst_off
            fresh = ite(z3.ULT(k, copied), Prov.of(Kind.CALLER_INPUT, k + user_off), Prov.of(Kind.ZEROED, j))
            return ite(z3.And(reached, in_range(j, dst_off, n)), fresh, old(j))

        dst.content = content
        return n - copied

    def copy_to_user(self, user_off: int, src: KBuf, src_off: int, n: int, *, point: str) -> z3.BitVecRef:
        """``copy_to_user(arg + user_off, src + src_off, n)``: bytes not copied; a genuine fault leaves
        the prefix before the faulting byte written (ref §7)."""
        copied = self._copied(point, n)
        reached = self._point(point, "fail_usercopy", self.inj.fails(point), n)
        snapshot = src.content
        self.user_writes.append(UserWrite(f"{src.name}:copy_to_user", reached, user_off, copied, n,
                                          lambda k, s=snapshot: s(k + src_off)))
        self.user_write_failed = z3.Or(self.user_write_failed, z3.And(reached, copied != n))
        return n - copied

    def put_user_status(self, user_off: int, size: int, *, point: str) -> z3.BoolRef:
        """``put_user(status, (long __user *)(arg + user_off))``: all or nothing; True on a fault."""
        faulted = z3.Or(self.inj.fails(point), z3.ULT(self.inj.limit(point), size))
        reached = self._point(point, "fail_usercopy", self.inj.fails(point), size)
        count = z3.If(faulted, z3.BitVecVal(0, self.off_bits), z3.BitVecVal(size, self.off_bits))
        self.user_writes.append(UserWrite("status:put_user", reached, user_off, count, size,
                                          lambda k: Prov.of(Kind.TDCALL_STATUS, k)))
        self.user_write_failed = z3.Or(self.user_write_failed, z3.And(reached, faulted))
        return faulted

    # ------------------------------------------------------------------ the module
    def tdcall_mr_report(self, tdreport: KBuf, tdreport_off: int, reportdata: KBuf, reportdata_off: int,
                         statuses: List[z3.BitVecRef]) -> z3.BitVecRef:
        """TDG.MR.REPORT with RCX = pa(tdreport + tdreport_off), RDX = pa(reportdata + reportdata_off),
        R8 = 0: returns the 64-bit status. The status is the injection's, restricted to ``statuses``
        (what the leaf can return, ref §4.3); on SUCCESS the module writes the 1024-B TDREPORT, whose
        REPORTDATA field (128..191) is read from RDX; on any error it writes nothing (ref §4.3)."""
        status = self.inj.tdcall_status
        reached = self.live
        self.assumptions.append(z3.Implies(reached, z3.Or([status == s for s in statuses])))
        rd_content = reportdata.content
        report_len = zabi._abi.TDX_REPORT_LEN
        rd_field = zabi._abi.TDR_OFF_REPORTDATA
        rd_len = zabi._abi.TDX_REPORTDATA_LEN

        def report(j, rd_content=rd_content):
            return ite(in_range(j, rd_field, rd_len), rd_content(j - rd_field + reportdata_off),
                       Prov.of(Kind.TDREPORT, j))

        old = tdreport.content
        wrote = z3.And(reached, status == 0)

        def content(j, old=old):
            k = j - tdreport_off
            return ite(z3.And(wrote, in_range(j, tdreport_off, report_len)), report(k), old(j))

        tdreport.content = content
        self.report = report
        self.report_status = status
        self.report_reached = reached
        return status

    # ------------------------------------------------------------------ observation
    def user_after(self, i: z3.BitVecRef) -> Prov:
        """The provenance of caller byte ``arg + i`` after the call."""
        result = Prov.of(Kind.ORIGINAL, i)
        for w in self.user_writes:
            result = ite(z3.And(w.guard, in_range(i, w.start, w.count)), w.source(i - w.start), result)
        return result

    def leaked(self) -> z3.BoolRef:
        """Some non-resident buffer allocated on this path is not freed, or one is freed twice."""
        return z3.Or([z3.And(b.allocated, z3.Not(b.freed)) for b in self.buffers if not b.resident]
                     + [b.double_freed for b in self.buffers] + [z3.BoolVal(False)])

    def locks_unbalanced(self) -> z3.BoolRef:
        return z3.Or([l.taken != l.released for l in self.locks] + [z3.BoolVal(False)])
