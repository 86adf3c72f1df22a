"""The TDX module model in plain Python: the reference the Cython core must equal (docs/CONTRACT.md).

Written for clarity, not speed: every report recomputes both hashes and the MAC with hashlib/hmac, as
TDX 1.0 does (ref §4.5). The check order of each leaf is one numbered block per row of the reference
tables (ref §4.3 TDG.MR.REPORT, §4.6 TDG.MR.RTMR.EXTEND, §4.7 TDG.MR.VERIFYREPORT).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from typing import Dict, Optional, Tuple

import numpy as np

from tdxmodel import abi, errors
from tdxmodel.config import ATTRIBUTES_SEPT_VE_DISABLE, ModuleConfig

PAGE = abi.TDX_PAGE_SIZE
U64_MAX = (1 << 64) - 1
#: Guest memory limits: at least the host scratch pages, at most 1 GiB (a bytearray in this model).
MIN_MEMORY_PAGES = 1
MAX_MEMORY_PAGES = 1 << 18

PAGE_STATES = ("unmapped", "private", "shared", "pending")
_UNMAPPED, _PRIVATE, _SHARED, _PENDING = range(4)

OPERAND_INVALID_RAX = abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RAX
OPERAND_INVALID_RCX = abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX
OPERAND_INVALID_RDX = abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX
OPERAND_INVALID_R8 = abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8
OPERAND_BUSY_RTMR = abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR

MR_LEAVES = (abi.TDG_MR_REPORT, abi.TDG_MR_RTMR_EXTEND, abi.TDG_MR_VERIFYREPORT)


def _u64(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{name} must be a 64-bit unsigned value, got {value}")
    return value


def _bytes(name: str, value) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return bytes(value)


class _TdExitSignal(Exception):
    """Internal: the leaf stopped at a page walk; turned into a tdxmodel.errors.TdExit."""

    def __init__(self, exc: errors.TdExit) -> None:
        self.exc = exc


class _RtmrLock:
    """The module's RTMR lock (ref §4.8): REPORT shared, EXTEND exclusive, nobody waits.

    ``holders`` is 0 when free, n > 0 for n shared holders, -1 when held exclusively.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        # A host-side waiter (set_rtmr, set_tee_tcb_info) holds new shared takers back until it has had
        # its turn, as the core's readers wait while its writer word says TRYING: without that, GIL
        # switches that land inside a Python report keep the lock shared and the waiter starves.
        self._turn = threading.Condition(self._guard)
        self._host_waiting = 0
        self.holders = 0
        self.counts = {"rtmr_shared_acquired": 0, "rtmr_shared_released": 0,
                       "rtmr_exclusive_acquired": 0, "rtmr_exclusive_released": 0, "rtmr_busy": 0}

    def try_acquire(self, exclusive: bool) -> int:
        with self._guard:
            if exclusive:
                if self.holders != 0:
                    self.counts["rtmr_busy"] += 1
                    return OPERAND_BUSY_RTMR
                self.holders = -1
                self.counts["rtmr_exclusive_acquired"] += 1
            else:
                while self._host_waiting and self.holders >= 0:
                    self._turn.wait()
                if self.holders < 0:
                    self.counts["rtmr_busy"] += 1
                    return OPERAND_BUSY_RTMR
                self.holders += 1
                self.counts["rtmr_shared_acquired"] += 1
            return abi.TDX_SUCCESS

    def wait_exclusive(self) -> None:
        """A host-side waiter (set_rtmr): blocks until the lock is free, then holds it exclusively.
        Not a TDX answer, so never counted busy."""
        with self._guard:
            self._host_waiting += 1
            try:
                while self.holders != 0:
                    self._turn.wait()
            finally:
                self._host_waiting -= 1
            self.holders = -1
            self.counts["rtmr_exclusive_acquired"] += 1

    def release(self, exclusive: bool) -> None:
        with self._guard:
            if exclusive:
                if self.holders != -1:
                    raise ValueError("the RTMR lock is not held exclusively")
                self.holders = 0
                self.counts["rtmr_exclusive_released"] += 1
                self._turn.notify_all()
            else:
                if self.holders <= 0:
                    raise ValueError("the RTMR lock is not held shared")
                self.holders -= 1
                self.counts["rtmr_shared_released"] += 1
                if self.holders == 0 and self._host_waiting:
                    self._turn.notify_all()


class Module:
    """Module(config: ModuleConfig, memory_pages: int = 1024)

    The TDX module with its one TD and guest physical memory (docs/CONTRACT.md).
    """

    def __init__(self, config: ModuleConfig, memory_pages: int = 1024) -> None:
        if not isinstance(config, ModuleConfig):
            raise TypeError("config must be a tdxmodel.config.ModuleConfig")
        memory_pages = _u64("memory_pages", memory_pages)
        if not MIN_MEMORY_PAGES <= memory_pages <= MAX_MEMORY_PAGES:
            raise ValueError(f"memory_pages must be in [{MIN_MEMORY_PAGES}, {MAX_MEMORY_PAGES}]")
        self._version_minor = config.version_minor
        self._cpusvn = bytes(config.cpusvn)
        self._tee_tcb_info = config.tee_tcb_info()
        self._tdinfo = bytearray(config.tdinfo())
        self._mac_key = config.resolved_mac_key()
        self._report_version = 1 if config.servtd_bound else 0
        self._sept_ve_disable = bool(config.attributes & ATTRIBUTES_SEPT_VE_DISABLE)
        self._memory_pages = memory_pages
        self._memory = bytearray(memory_pages * PAGE)
        self._page_states = bytearray(memory_pages)  # all _UNMAPPED
        self._lock = _RtmrLock()
        self._state_guard = threading.Lock()  # consistent snapshots of TDINFO for inspection
        self._stats_guard = threading.Lock()
        self._stats = {"reports": 0, "extends": 0, "verifies": 0, "report_interrupts": 0}
        self._pending_interrupts = 0
        self._step_hook = None
        self._step_hook_error = None
        self._vmm = None  # the Host behind TDG.VP.VMCALL (tdxmodel._reference.host)

    # ------------------------------------------------------------------ properties
    @property
    def version(self) -> str:
        return f"1.{self._version_minor}"

    @property
    def memory_pages(self) -> int:
        return self._memory_pages

    @property
    def mac_key(self) -> bytes:
        return self._mac_key

    # ------------------------------------------------------------------ guest memory (host side)
    def _host_range(self, gpa: int, n: int) -> int:
        gpa = _u64("gpa", gpa) & ~abi.TDX_GPA_SHARED_BIT
        if n < 0 or gpa + n > len(self._memory):
            raise ValueError(f"GPA range 0x{gpa:x}+{n} is outside guest memory "
                             f"({self._memory_pages} pages)")
        return gpa

    def set_page_state(self, gpa: int, npages: int, state: str) -> None:
        if state not in PAGE_STATES:
            raise ValueError(f"state must be one of {', '.join(PAGE_STATES)}, not {state!r}")
        npages = _u64("npages", npages)
        base = self._host_range(gpa, npages * PAGE)
        if base % PAGE:
            raise ValueError(f"gpa 0x{gpa:x} is not page-aligned")
        first = base // PAGE
        self._page_states[first:first + npages] = bytes([PAGE_STATES.index(state)]) * npages

    def page_state(self, gpa: int) -> str:
        base = self._host_range(gpa, 1)
        return PAGE_STATES[self._page_states[base // PAGE]]

    def write_memory(self, gpa: int, data) -> None:
        data = _bytes("data", data)
        base = self._host_range(gpa, len(data))
        self._memory[base:base + len(data)] = data

    def read_memory(self, gpa: int, n: int) -> bytes:
        n = _u64("n", n)
        base = self._host_range(gpa, n)
        return bytes(self._memory[base:base + n])

    # ------------------------------------------------------------------ GPA checks (ref §4.3)
    @staticmethod
    def _gpa_invalid(gpa: int) -> bool:
        """Bits above MAX_PA other than the shared bit (GPAW 48: bits 63:48)."""
        return bool(gpa & abi.TDX_GPA_INVALID_MASK)

    def _walk(self, gpa: int) -> int:
        """The EPT walk for an access at ``gpa``: the host offset, or a TD exit (ref §4.3 step 3b)."""
        shared = bool(gpa & abi.TDX_GPA_SHARED_BIT)
        base = gpa & ~abi.TDX_GPA_SHARED_BIT
        page = base // PAGE
        if page >= self._memory_pages:
            raise _TdExitSignal(errors.EptViolation(gpa))
        state = self._page_states[page]
        if shared:
            if state != _SHARED:  # not mapped in the shared EPT
                raise _TdExitSignal(errors.EptViolation(gpa))
        elif state == _PENDING:
            # A pending private page: #VE, unless the TD opted out with SEPT_VE_DISABLE.
            exc = errors.EptViolation(gpa) if self._sept_ve_disable else errors.VirtualizationException(gpa)
            raise _TdExitSignal(exc)
        elif state != _PRIVATE:
            raise _TdExitSignal(errors.EptViolation(gpa))
        return base

    # ------------------------------------------------------------------ report construction
    def _build_report(self, reportdata: bytes, snapshot: Tuple[bytes, bytes]) -> bytes:
        """The 1024-byte TDREPORT (ref §4.4) for a (TDINFO, TEE_TCB_INFO) snapshot, built in a zeroed
        buffer as the module does."""
        tdinfo, tee_tcb_info = snapshot
        r = bytearray(abi.TDX_REPORT_LEN)
        r[0:4] = bytes([abi.TDX_REPORTTYPE_TYPE, abi.TDX_REPORTTYPE_SUBTYPE, self._report_version, 0])
        r[abi.TDR_OFF_CPUSVN:abi.TDR_OFF_CPUSVN + 16] = self._cpusvn
        r[abi.TDR_OFF_TEE_TCB_INFO_HASH:abi.TDR_OFF_TEE_TCB_INFO_HASH + 48] = hashlib.sha384(tee_tcb_info).digest()
        r[abi.TDR_OFF_TEE_INFO_HASH:abi.TDR_OFF_TEE_INFO_HASH + 48] = hashlib.sha384(tdinfo).digest()
        r[abi.TDR_OFF_REPORTDATA:abi.TDR_OFF_REPORTDATA + 64] = reportdata
        r[abi.TDR_OFF_MAC:abi.TDR_OFF_MAC + 32] = self._mac(bytes(r[:abi.TDX_MAC_COVERED_LEN]))
        r[abi.TDR_OFF_TEE_TCB_INFO:abi.TDR_OFF_TEE_TCB_INFO + abi.TDX_TEE_TCB_INFO_LEN] = tee_tcb_info
        r[abi.TDR_OFF_TDINFO:] = tdinfo
        return bytes(r[:abi.TDX_REPORT_LEN])

    _INTERRUPTED = object()

    def _report_steps_5_7(self, reportdata: bytes):
        """Rows 5-7 of ref §4.3 with the RTMR lock window of the module's version ("Lock window"):
        1.5.01 holds the lock shared only for its snapshot of TDINFO and TEE_INFO_HASH, then checks
        for an interrupt (row 6); 1.0 holds it until the report is built (row 7). Neither holds it
        for the copy-out. Returns (status, report), or (_INTERRUPTED, None): the TDCALL left without
        writing RAX, so the guest executes it again."""
        status = self._lock.try_acquire(exclusive=False)         # row 5
        if status:
            return status, None
        if self._version_minor != 0:
            with self._state_guard:
                snap = bytes(self._tdinfo), self._tee_tcb_info  # the snapshot
            self._lock.release(exclusive=False)
            self._step("snapshot")
            if self._take_interrupt():                           # row 6 (1.5)
                return self._INTERRUPTED, None
            report = self._build_report(reportdata, snap)        # row 7
        else:
            try:
                with self._state_guard:
                    snap = bytes(self._tdinfo), self._tee_tcb_info
                self._step("snapshot")
                report = self._build_report(reportdata, snap)  # row 7
            finally:
                self._lock.release(exclusive=False)
        self._step("built")
        return abi.TDX_SUCCESS, report

    def _take_interrupt(self) -> bool:
        with self._stats_guard:
            if self._pending_interrupts == 0:
                return False
            self._pending_interrupts -= 1
            self._stats["report_interrupts"] += 1
            return True

    def _step(self, point: str) -> None:
        hook = self._step_hook
        if hook is not None:
            try:
                hook(point)
            except BaseException as exc:  # noqa: BLE001 - the sink; raised once the leaf returned
                if self._step_hook_error is None:
                    self._step_hook_error = exc

    def _raise_hook_error(self) -> None:
        exc, self._step_hook_error = self._step_hook_error, None
        if exc is not None:
            raise exc

    def _mac(self, covered: bytes) -> bytes:
        """HMAC-SHA-256 with the platform key over REPORTMACSTRUCT bytes 0..223 (ref §4.5 design choice)."""
        return hmac.new(self._mac_key, covered, hashlib.sha256).digest()

    def _count(self, name: str) -> None:
        with self._stats_guard:
            self._stats[name] += 1

    # ------------------------------------------------------------------ leaves on GPAs
    def tdcall(self, rax: int, rcx: int = 0, rdx: int = 0, r8: int = 0) -> int:
        """tdcall(rax, rcx=0, rdx=0, r8=0) -> int: dispatch on RAX (ref §4.1).

        Leaf 0 is TDG.VP.VMCALL with every R register 0 (use tdvmcall() to pass them); the MR leaves
        are modelled; any other leaf answers as an unknown leaf (TDX_OPERAND_INVALID, operand RAX)."""
        rax, rcx, rdx, r8 = _u64("rax", rax), _u64("rcx", rcx), _u64("rdx", rdx), _u64("r8", r8)
        if self._version_minor == 0:
            leaf = rax  # 1.0 switches on all 64 bits
        else:
            if rax >> 24 or (rax >> 16) & 0xFF:  # reserved bits, or a leaf version we do not accept
                return OPERAND_INVALID_RAX
            leaf = rax & 0xFFFF
        if leaf == abi.TDG_VP_VMCALL:
            self._vp_vmcall([0, 0, 0, 0, 0, 0])  # this entry carries no R10..R15: sub-function 0
            return abi.TDX_SUCCESS
        if leaf == abi.TDG_MR_REPORT:
            return self.mr_report(rcx, rdx, r8)
        if leaf == abi.TDG_MR_RTMR_EXTEND:
            return self.mr_rtmr_extend(rcx, rdx)
        if leaf == abi.TDG_MR_VERIFYREPORT:
            return self.mr_verifyreport(rcx)
        return OPERAND_INVALID_RAX

    # ------------------------------------------------------------------ TDG.VP.VMCALL (quote.md §3)
    def _set_vmm(self, vmm) -> bool:
        """Attach (vmm) or detach (None) the VMM; False when another one is attached."""
        with self._stats_guard:
            if vmm is not None and self._vmm is not None:
                return False
            self._vmm = vmm
            return True

    def _vp_vmcall(self, regs: list) -> None:
        """Hand the exposed registers to the VMM; no VMM: SUBFUNC_UNSUPPORTED, KVM's default.
        RCX's register-exposure mask is not modelled: every register is exposed."""
        vmm = self._vmm
        if vmm is None:
            regs[0] = abi.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
        else:
            vmm._vmcall(regs)

    def tdvmcall(self, r11: int, r12: int = 0, r13: int = 0, r14: int = 0, r15: int = 0, *,
                 r10: int = 0) -> Tuple[int, int]:
        """tdvmcall(r11, r12=0, r13=0, r14=0, r15=0, *, r10=0) -> (R10 status, R11 output).

        TDG.VP.VMCALL (TDCALL leaf 0): the TDCALL itself always succeeds."""
        regs = [_u64("r10", r10), _u64("r11", r11), _u64("r12", r12), _u64("r13", r13),
                _u64("r14", r14), _u64("r15", r15)]
        self._vp_vmcall(regs)
        return regs[0], regs[1]

    def mr_report(self, rcx: int, rdx: int, r8: int = 0) -> int:
        """mr_report(rcx, rdx, r8=0) -> int: TDG.MR.REPORT on GPAs (ref §4.3)."""
        rcx, rdx, r8 = _u64("rcx", rcx), _u64("rdx", rdx), _u64("r8", r8)
        self._count("reports")
        try:
            return self._mr_report(rcx, rdx, r8)
        finally:
            self._raise_hook_error()

    def _mr_report(self, rcx: int, rdx: int, r8: int) -> int:
        while True:
            status = self._mr_report_once(rcx, rdx, r8)
            if status is not self._INTERRUPTED:
                return status                                    # else the guest executes it again

    def _mr_report_once(self, rcx: int, rdx: int, r8: int):
        try:
            if rcx % abi.TDX_REPORT_ALIGN:                       # row 1
                return OPERAND_INVALID_RCX
            if rdx % abi.TDX_REPORTDATA_ALIGN:                   # row 2
                return OPERAND_INVALID_RDX
            if self._gpa_invalid(rdx):                           # row 3
                return OPERAND_INVALID_RDX
            rd_off = self._walk(rdx)                             # row 3b
            if r8 != 0:                                          # row 4
                return OPERAND_INVALID_R8
            status, report = self._report_steps_5_7(bytes(self._memory[rd_off:rd_off + 64]))  # rows 5-7
            if status:                                           # BUSY, or interrupted
                return status
            if self._gpa_invalid(rcx):                           # row 8
                return OPERAND_INVALID_RCX
            out_off = self._walk(rcx)
            self._memory[out_off:out_off + abi.TDX_REPORT_LEN] = report  # row 9
            return abi.TDX_SUCCESS
        except _TdExitSignal as sig:
            raise sig.exc from None

    def mr_rtmr_extend(self, rcx: int, rdx: int) -> int:
        """mr_rtmr_extend(rcx, rdx) -> int: TDG.MR.RTMR.EXTEND on a GPA (ref §4.6)."""
        rcx, rdx = _u64("rcx", rcx), _u64("rdx", rdx)
        self._count("extends")
        try:
            if rcx % abi.TDX_EXTEND_ALIGN:                                       # row 1
                return OPERAND_INVALID_RCX
            if self._gpa_invalid(rcx) or rcx & abi.TDX_GPA_SHARED_BIT:           # row 2
                return OPERAND_INVALID_RCX
            off = self._walk(rcx)
            data = bytes(self._memory[off:off + abi.TDX_EXTEND_DATA_LEN])
        except _TdExitSignal as sig:
            raise sig.exc from None
        return self._extend(rdx, data)

    def mr_verifyreport(self, rcx: int) -> int:
        """mr_verifyreport(rcx) -> int: TDG.MR.VERIFYREPORT on a GPA (ref §4.7; 1.5 only)."""
        rcx = _u64("rcx", rcx)
        if self._version_minor == 0:  # TDX 1.0 has no leaf 22
            return OPERAND_INVALID_RAX
        self._count("verifies")
        if rcx % abi.TDX_VERIFY_ALIGN or self._gpa_invalid(rcx) or rcx & abi.TDX_GPA_SHARED_BIT:
            return OPERAND_INVALID_RCX
        try:
            off = self._walk(rcx)
        except _TdExitSignal as sig:
            raise sig.exc from None
        return self._verify_struct(bytes(self._memory[off:off + abi.TDX_REPORTMACSTRUCT_LEN]))

    # ------------------------------------------------------------------ the leaves' shared tails
    def _extend(self, index: int, data: bytes) -> int:
        if index >= abi.TDX_NUM_RTMRS:                                 # row 3 (full 64-bit compare)
            return OPERAND_INVALID_RDX
        status = self._lock.try_acquire(exclusive=True)                # row 4
        if status:
            return status
        try:                                                           # row 5
            off = abi.TDR_OFF_RTMR0 - abi.TDR_OFF_TDINFO + abi.TDX_SHA384_LEN * index
            with self._state_guard:
                old = bytes(self._tdinfo[off:off + 48])
                self._tdinfo[off:off + 48] = hashlib.sha384(old + data).digest()
            return abi.TDX_SUCCESS
        finally:
            self._lock.release(exclusive=True)

    def _verify_struct(self, macstruct: bytes) -> int:
        """The CPU's part of VERIFYREPORT. The order of its two checks is not public (ref §4.7);
        tdxmodel checks the MAC first, then CPUSVN."""
        covered = macstruct[:abi.TDX_MAC_COVERED_LEN]
        tag = macstruct[abi.TDR_OFF_MAC:abi.TDR_OFF_MAC + abi.TDX_MAC_LEN]
        if not hmac.compare_digest(self._mac(covered), tag):
            return abi.TDX_INVALID_REPORTMACSTRUCT
        cpusvn = macstruct[abi.TDR_OFF_CPUSVN:abi.TDR_OFF_CPUSVN + abi.TDX_CPUSVN_LEN]
        # "Newer than the platform's": some SVN component above the platform's.
        if any(a > b for a, b in zip(cpusvn, self._cpusvn)):
            return abi.TDX_INVALID_CPUSVN
        return abi.TDX_SUCCESS

    # ------------------------------------------------------------------ leaves on host buffers
    def _report_direct(self, reportdata: bytes, subtype: int) -> Tuple[int, Optional[bytes]]:
        self._count("reports")
        if subtype != 0:
            return OPERAND_INVALID_R8, None
        while True:                                              # rows 5-7, executed again if interrupted
            status, report = self._report_steps_5_7(reportdata)
            if status is not self._INTERRUPTED:
                return status, report

    def report(self, reportdata=b"", subtype: int = 0) -> bytes:
        """report(reportdata: bytes = b"", subtype: int = 0) -> bytes: TDG.MR.REPORT on a host buffer."""
        reportdata = _bytes("reportdata", reportdata)
        if len(reportdata) > abi.TDX_REPORTDATA_LEN:
            raise ValueError(f"reportdata is {len(reportdata)} bytes; at most {abi.TDX_REPORTDATA_LEN}")
        subtype = _u64("subtype", subtype)
        status, report = self._report_direct(reportdata.ljust(abi.TDX_REPORTDATA_LEN, b"\0"), subtype)
        self._raise_hook_error()
        errors.check_status(status, leaf="TDG.MR.REPORT")
        assert report is not None
        return report

    def extend(self, index: int, data) -> None:
        """extend(index: int, data: bytes) -> None: TDG.MR.RTMR.EXTEND on a host buffer."""
        index = _u64("index", index)
        data = _bytes("data", data)
        if len(data) != abi.TDX_EXTEND_DATA_LEN:
            raise ValueError(f"data is {len(data)} bytes; RTMR extend takes exactly {abi.TDX_EXTEND_DATA_LEN}")
        self._count("extends")
        errors.check_status(self._extend(index, data), leaf="TDG.MR.RTMR.EXTEND")

    def verify(self, report) -> int:
        """verify(report: bytes) -> int: TDG.MR.VERIFYREPORT on the first 256 bytes; the status."""
        report = _bytes("report", report)
        if len(report) < abi.TDX_REPORTMACSTRUCT_LEN:
            raise ValueError(f"report is {len(report)} bytes; VERIFYREPORT reads {abi.TDX_REPORTMACSTRUCT_LEN}")
        if self._version_minor == 0:
            return OPERAND_INVALID_RAX
        self._count("verifies")
        return self._verify_struct(report[:abi.TDX_REPORTMACSTRUCT_LEN])

    def report_batch(self, reportdata) -> Tuple[np.ndarray, np.ndarray]:
        """report_batch(reportdata: uint8[N, 64]) -> (uint8[N, 1024], uint64[N])"""
        arr = _check_batch(reportdata)
        n = arr.shape[0]
        out = np.zeros((n, abi.TDX_REPORT_LEN), dtype=np.uint8)
        statuses = np.zeros(n, dtype=np.uint64)
        for i in range(n):
            status, report = self._report_direct(arr[i].tobytes(), 0)
            statuses[i] = status
            if report is not None:
                out[i] = np.frombuffer(report, dtype=np.uint8)
        self._raise_hook_error()
        return out, statuses

    def extend_batch(self, indices, data) -> np.ndarray:
        """extend_batch(indices: uint64[N], data: uint8[N, 48]) -> uint64[N]: N extends in order."""
        _check_extend_batch(indices, data)
        statuses = np.zeros(indices.shape[0], dtype=np.uint64)
        for i in range(indices.shape[0]):
            self._count("extends")
            statuses[i] = self._extend(int(indices[i]), data[i].tobytes())
        return statuses

    # ------------------------------------------------------------------ state
    def rtmr(self, index: int) -> bytes:
        index = _u64("index", index)
        if index >= abi.TDX_NUM_RTMRS:
            raise ValueError(f"RTMR index must be 0..3, got {index}")
        off = abi.TDR_OFF_RTMR0 - abi.TDR_OFF_TDINFO + 48 * index
        with self._state_guard:
            return bytes(self._tdinfo[off:off + 48])

    def tdinfo(self) -> bytes:
        with self._state_guard:
            return bytes(self._tdinfo)

    def tee_tcb_info(self) -> bytes:
        with self._state_guard:
            return self._tee_tcb_info

    def set_tee_tcb_info(self, value) -> None:
        """set_tee_tcb_info(value: bytes) -> None: host-side state sync (the platform's TCB position
        moved): TEE_TCB_INFO (239 bytes) of every later TDREPORT; waits for the RTMR lock."""
        value = _bytes("value", value)
        if len(value) != abi.TDX_TEE_TCB_INFO_LEN:
            raise ValueError(f"value must be {abi.TDX_TEE_TCB_INFO_LEN} bytes, got {len(value)}")
        self._lock.wait_exclusive()
        try:
            with self._state_guard:
                self._tee_tcb_info = value
        finally:
            self._lock.release(exclusive=True)

    def set_rtmr(self, index: int, value) -> None:
        """set_rtmr(index, value: bytes) -> None: host-side state sync; waits for the RTMR lock."""
        index = _u64("index", index)
        if index >= abi.TDX_NUM_RTMRS:
            raise ValueError(f"RTMR index must be 0..3, got {index}")
        value = _bytes("value", value)
        if len(value) != abi.TDX_SHA384_LEN:
            raise ValueError(f"an RTMR value is {abi.TDX_SHA384_LEN} bytes, got {len(value)}")
        self._lock.wait_exclusive()
        try:
            off = abi.TDR_OFF_RTMR0 - abi.TDR_OFF_TDINFO + 48 * index
            with self._state_guard:
                self._tdinfo[off:off + 48] = value
        finally:
            self._lock.release(exclusive=True)

    def rtmr_lock_try(self, exclusive: bool) -> int:
        return self._lock.try_acquire(bool(exclusive))

    def rtmr_unlock(self, exclusive: bool) -> None:
        self._lock.release(bool(exclusive))

    # ------------------------------------------------------------------ interrupts (ref §4.3 row 6)
    def inject_interrupts(self, n: int) -> None:
        """inject_interrupts(n: int) -> None: n interrupts pending for the TD (replacing any count);
        each 1.5 REPORT passing row 5 consumes one and is executed again; 1.0 never checks."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if not 0 <= n <= 0xFFFFFFFF:
            raise ValueError(f"n must be in [0, {0xFFFFFFFF}], got {n}")
        with self._stats_guard:
            self._pending_interrupts = n

    @property
    def pending_interrupts(self) -> int:
        with self._stats_guard:
            return self._pending_interrupts

    def _set_step_hook(self, hook) -> None:
        """Tests only: call ``hook("snapshot")`` and ``hook("built")`` inside every REPORT."""
        if hook is not None and not callable(hook):
            raise TypeError(f"hook must be callable or None, not {type(hook).__name__}")
        self._step_hook = hook
        self._raise_hook_error()

    def counters(self) -> Dict[str, int]:
        with self._lock._guard, self._stats_guard:
            return {**self._lock.counts, **self._stats}

    def __repr__(self) -> str:
        return f"<tdxmodel reference Module TDX {self.version}, {self._memory_pages} pages>"


def _check_extend_batch(indices, data) -> None:
    for name, arr in (("indices", indices), ("data", data)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, not {type(arr).__name__}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (numpy.ascontiguousarray)")
    if indices.dtype != np.uint64 or indices.ndim != 1:
        raise ValueError(f"indices must be uint64 of shape (N,), got {indices.dtype} {indices.shape}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != abi.TDX_EXTEND_DATA_LEN \
            or data.shape[0] != indices.shape[0]:
        raise ValueError(f"data must be uint8 of shape ({indices.shape[0]}, {abi.TDX_EXTEND_DATA_LEN}), "
                         f"got {data.dtype} {data.shape}")


def _check_batch(reportdata) -> np.ndarray:
    if not isinstance(reportdata, np.ndarray):
        raise TypeError("reportdata must be a numpy array of shape (N, 64) and dtype uint8")
    if reportdata.dtype != np.uint8 or reportdata.ndim != 2 or reportdata.shape[1] != abi.TDX_REPORTDATA_LEN:
        raise ValueError(f"reportdata must have shape (N, 64) and dtype uint8, got {reportdata.shape} "
                         f"{reportdata.dtype}")
    if not reportdata.flags.c_contiguous:
        raise ValueError("reportdata must be C-contiguous (np.ascontiguousarray makes it so)")
    return reportdata
