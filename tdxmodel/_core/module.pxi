# The TDX module model: a thin wrapper of csrc/tdx_module.h (layer 2; docs/CONTRACT.md "Module").
#
# A single leaf keeps the GIL: it never waits (contention answers BUSY, ref §4.8) and costs 0.2-1.5 us,
# less than what releasing and re-taking the GIL costs two threads that take turns (they convoy on it:
# benchmarks/RESULTS.md "GIL strategy"). Calls that run long or wait release it around the C call
# only: report_batch and set_rtmr. Arguments are validated before, results translated after
# (tdxmodel.errors is the one translator). The C object lives as long as the
# Python one; the Kernel (kernel.pxi) keeps a reference to its Module and uses Module.ptr.

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize

from tdxmodel._core.tdx_module cimport *

import numpy as _np

from tdxmodel import abi as _abi
from tdxmodel import errors as _errors
from tdxmodel.config import ModuleConfig as _ModuleConfig

#: Extend batches shorter than this keep the GIL: 16 extends take ~20 us, about what two threads pay
#: to hand the GIL over (benchmarks/RESULTS.md "GIL strategy").
_GIL_RELEASE_ROWS = 16
#: Page-state names, indexed by the C enum tdxm_page_state.
_PAGE_STATES = ("unmapped", "private", "shared", "pending")
_U64_MAX = (1 << 64) - 1
#: Guest memory size limit, the same as the reference model's (1 GiB; far below the SHARED bit).
_MAX_MEMORY_PAGES = 1 << 18


cdef uint64_t _u64(object value, str name) except *:
    """_u64(value: int, name: str) -> uint64_t: a 64-bit register value, or TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0 or value > _U64_MAX:
        raise ValueError(f"{name} must be in [0, 2**64-1], got {value}")
    return value


cdef object _count(object value, str name, object maximum):
    """_count(value: int, name: str, maximum: int) -> int in [0, maximum], or TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0 or value > maximum:
        raise ValueError(f"{name} must be in [0, {maximum}], got {value}")
    return value


cdef bytes _as_bytes(object data, str name):
    """_as_bytes(data: bytes-like, name: str) -> bytes, or TypeError naming the argument."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{name} must be bytes-like, not {type(data).__name__}")


cdef object _rtmr_index(object index):
    return _count(index, "index", _abi.TDX_NUM_RTMRS - 1)


cdef object _leaf_result(tdxm_result r):
    """_leaf_result(r: tdxm_result) -> int: the status, or raise the TD exit that replaced it."""
    if r.exit == TDXM_EXIT_NONE:
        return r.rax
    if r.exit == TDXM_EXIT_VE:
        raise _errors.VirtualizationException(r.exit_gpa)
    raise _errors.EptViolation(r.exit_gpa)


#: Names of the REPORT points a step hook sees (csrc/tdx_module.h enum tdxm_step).
_STEP_NAMES = {TDXM_STEP_REPORT_SNAPSHOT: "snapshot", TDXM_STEP_REPORT_BUILT: "built"}


cdef void _step_trampoline(void *ctx, int point) noexcept with gil:
    # Called from C in the reporting thread (GIL released or not); errors go to the module's sink
    # and are raised by the leaf wrapper once the leaf has returned.
    cdef Module module = <Module>ctx
    try:
        module._step_hook(_STEP_NAMES.get(point, point))
    except BaseException as exc:  # noqa: B036 - an error sink, re-raised after the leaf returns
        if module._step_hook_error is None:
            module._step_hook_error = exc


def _check_extend_batch(indices, data):
    for name, arr in (("indices", indices), ("data", data)):
        if not isinstance(arr, _np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, not {type(arr).__name__}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (numpy.ascontiguousarray)")
    if indices.dtype != _np.uint64 or indices.ndim != 1:
        raise ValueError(f"indices must be uint64 of shape (N,), got {indices.dtype} {indices.shape}")
    if data.dtype != _np.uint8 or data.ndim != 2 or data.shape[1] != _abi.TDX_EXTEND_DATA_LEN \
            or data.shape[0] != indices.shape[0]:
        raise ValueError(f"data must be uint8 of shape ({indices.shape[0]}, {_abi.TDX_EXTEND_DATA_LEN}), "
                         f"got {data.dtype} {data.shape}")


cdef class Module:
    """Module(config: ModuleConfig, memory_pages: int = 1024)

    The TDX module with its one TD and guest physical memory (``memory_pages`` 4 KiB pages from GPA 0),
    in C (csrc/tdx_module.c). See docs/CONTRACT.md; leaves follow ref §4.3, §4.6, §4.7 step by step.
    tdxmodel models only the MR leaves: any other TDCALL answers TDX_OPERAND_INVALID (operand RAX).
    """

    cdef tdxm_module *ptr   # used by kernel.pxi through _live()
    cdef object _step_hook        # tests: callable(point: str), see _set_step_hook
    cdef object _step_hook_error  # the first exception the hook raised, until re-raised

    def __cinit__(self, *args, **kwargs):
        self.ptr = NULL
        self._step_hook = None
        self._step_hook_error = None

    def __init__(self, config, memory_pages=1024):
        cdef tdxm_config cfg
        cdef bytes field
        if self.ptr != NULL:
            raise RuntimeError("Module is already initialised")
        if not isinstance(config, _ModuleConfig):
            raise TypeError(f"config must be a tdxmodel.config.ModuleConfig, not {type(config).__name__}")
        pages = _count(memory_pages, "memory_pages", _MAX_MEMORY_PAGES)
        if pages == 0:
            raise ValueError("memory_pages must be at least 1")
        memset(&cfg, 0, sizeof(cfg))
        cfg.version_minor = config.version_minor
        cfg.servtd_bound = 1 if config.servtd_bound else 0
        cfg.memory_pages = pages
        # ModuleConfig validated the sizes; check anyway, since C copies sizeof(field) bytes.
        for name, value, size in (("cpusvn", config.cpusvn, <Py_ssize_t>sizeof(cfg.cpusvn)),
                                  ("tee_tcb_info", config.tee_tcb_info(), <Py_ssize_t>sizeof(cfg.tee_tcb_info)),
                                  ("tdinfo", config.tdinfo(), <Py_ssize_t>sizeof(cfg.tdinfo)),
                                  ("mac_key", config.resolved_mac_key(), <Py_ssize_t>sizeof(cfg.mac_key))):
            if len(value) != size:
                raise ValueError(f"config {name} must be {size} bytes, got {len(value)}")
        field = config.cpusvn
        memcpy(cfg.cpusvn, <const char *>field, sizeof(cfg.cpusvn))
        field = config.tee_tcb_info()
        memcpy(cfg.tee_tcb_info, <const char *>field, sizeof(cfg.tee_tcb_info))
        field = config.tdinfo()
        memcpy(cfg.tdinfo, <const char *>field, sizeof(cfg.tdinfo))
        field = config.resolved_mac_key()
        memcpy(cfg.mac_key, <const char *>field, sizeof(cfg.mac_key))
        self.ptr = tdxm_create(&cfg)
        memset(cfg.mac_key, 0, sizeof(cfg.mac_key))
        if self.ptr == NULL:
            raise MemoryError(f"cannot allocate {pages} pages of guest memory")

    def __dealloc__(self):
        if self.ptr != NULL:
            tdxm_set_step_hook(self.ptr, NULL, NULL)
            tdxm_destroy(self.ptr)
            self.ptr = NULL

    cdef inline tdxm_module *_live(self) except NULL:
        if self.ptr == NULL:
            raise RuntimeError("Module is not initialised (construct it with Module(config))")
        return self.ptr

    def __repr__(self):
        if self.ptr == NULL:
            return "<Module (uninitialised)>"
        return f"<Module TDX {self.version}, {self.memory_pages} pages, core>"

    # ------------------------------------------------------------------ platform facts
    @property
    def version(self):
        """version -> str: "1.0" or "1.5"."""
        return "1.0" if tdxm_version_minor(self._live()) == 0 else "1.5"

    @property
    def memory_pages(self):
        """memory_pages -> int."""
        return tdxm_memory_pages(self._live())

    @property
    def mac_key(self):
        """mac_key -> bytes: the 32-byte platform MAC key (ref §4.5 design choice)."""
        cdef uint8_t key[SIZEOF_MAC_KEY]
        tdxm_read_mac_key(self._live(), key)
        try:
            return PyBytes_FromStringAndSize(<char *>key, sizeof(key))
        finally:
            memset(key, 0, sizeof(key))

    # ------------------------------------------------------------------ guest memory (host side)
    def set_page_state(self, gpa, npages, state):
        """set_page_state(gpa: int, npages: int, state: str) -> None

        ``state`` in "unmapped", "private", "shared", "pending"; ``gpa`` page-aligned (the SHARED bit
        is ignored). ValueError when the range leaves guest memory.
        """
        cdef tdxm_module *m = self._live()
        cdef uint64_t addr = _u64(gpa, "gpa")
        n = _count(npages, "npages", _MAX_MEMORY_PAGES)
        if state not in _PAGE_STATES:
            raise ValueError(f"state must be one of {', '.join(_PAGE_STATES)}, not {state!r}")
        if tdxm_set_page_state(m, addr, n, _PAGE_STATES.index(state)) != 0:
            raise ValueError(f"gpa 0x{addr:x} + {n} pages: not page-aligned or outside guest memory "
                             f"({tdxm_memory_pages(m)} pages)")

    def page_state(self, gpa):
        """page_state(gpa: int) -> str."""
        cdef tdxm_module *m = self._live()
        cdef int state = tdxm_page_state(m, _u64(gpa, "gpa"))
        if state < 0:
            raise ValueError(f"gpa 0x{gpa:x} is outside guest memory ({tdxm_memory_pages(m)} pages)")
        return _PAGE_STATES[state]

    def write_memory(self, gpa, data):
        """write_memory(gpa: int, data: bytes) -> None: host view (ignores page state and SHARED)."""
        cdef tdxm_module *m = self._live()
        cdef bytes payload = _as_bytes(data, "data")
        cdef uint64_t addr = _u64(gpa, "gpa")
        cdef uint8_t *host = tdxm_host_ptr(m, addr, len(payload))
        if host == NULL:
            raise ValueError(f"gpa 0x{addr:x} + {len(payload)} bytes is outside guest memory")
        memcpy(host, <const char *>payload, len(payload))

    def read_memory(self, gpa, n):
        """read_memory(gpa: int, n: int) -> bytes: host view (ignores page state and SHARED)."""
        cdef tdxm_module *m = self._live()
        cdef uint64_t addr = _u64(gpa, "gpa")
        count = _count(n, "n", _U64_MAX)
        cdef uint8_t *host = tdxm_host_ptr(m, addr, count)
        if host == NULL:
            raise ValueError(f"gpa 0x{addr:x} + {count} bytes is outside guest memory")
        return PyBytes_FromStringAndSize(<char *>host, count)

    # ------------------------------------------------------------------ the leaves on GPAs
    def tdcall(self, rax, rcx=0, rdx=0, r8=0):
        """tdcall(rax: int, rcx: int = 0, rdx: int = 0, r8: int = 0) -> int

        Dispatch on RAX (ref §4.1) and return the 64-bit status; a TD exit raises EptViolation(gpa)
        or VirtualizationException(gpa) instead.
        """
        cdef tdxm_module *m = self._live()
        cdef uint64_t a = _u64(rax, "rax"), c = _u64(rcx, "rcx"), d = _u64(rdx, "rdx"), e = _u64(r8, "r8")
        cdef tdxm_result r
        r = tdxm_tdcall(m, a, c, d, e)  # GIL kept: see the header
        self._raise_hook_error()
        return _leaf_result(r)

    def tdvmcall(self, r11, r12=0, r13=0, r14=0, r15=0, *, r10=0):
        """tdvmcall(r11: int, r12=0, r13=0, r14=0, r15=0, *, r10=0) -> (int, int)

        TDG.VP.VMCALL (TDCALL leaf 0, quote.md §3): R11 selects the sub-function; returns the VMM's
        (R10 status, R11 output). The TDCALL itself always succeeds; with no Host attached every
        sub-function answers SUBFUNC_UNSUPPORTED.
        """
        cdef tdxm_module *m = self._live()
        cdef tdxm_vmcall_regs regs
        regs.r10 = _u64(r10, "r10")
        regs.r11 = _u64(r11, "r11")
        regs.r12 = _u64(r12, "r12")
        regs.r13 = _u64(r13, "r13")
        regs.r14 = _u64(r14, "r14")
        regs.r15 = _u64(r15, "r15")
        with nogil:
            tdxm_vp_vmcall(m, &regs)
        return regs.r10, regs.r11

    def mr_report(self, rcx, rdx, r8=0):
        """mr_report(rcx: int, rdx: int, r8: int = 0) -> int: TDG.MR.REPORT (ref §4.3)."""
        cdef tdxm_module *m = self._live()
        cdef uint64_t c = _u64(rcx, "rcx"), d = _u64(rdx, "rdx"), e = _u64(r8, "r8")
        cdef tdxm_result r
        r = tdxm_mr_report(m, c, d, e)  # GIL kept: see the header
        self._raise_hook_error()
        return _leaf_result(r)

    def mr_rtmr_extend(self, rcx, rdx):
        """mr_rtmr_extend(rcx: int, rdx: int) -> int: TDG.MR.RTMR.EXTEND (ref §4.6)."""
        cdef tdxm_module *m = self._live()
        cdef uint64_t c = _u64(rcx, "rcx"), d = _u64(rdx, "rdx")
        cdef tdxm_result r
        r = tdxm_mr_rtmr_extend(m, c, d)  # GIL kept: see the header
        return _leaf_result(r)

    def mr_verifyreport(self, rcx):
        """mr_verifyreport(rcx: int) -> int: TDG.MR.VERIFYREPORT (ref §4.7; 1.0: OPERAND_INVALID(RAX))."""
        cdef tdxm_module *m = self._live()
        cdef uint64_t c = _u64(rcx, "rcx")
        cdef tdxm_result r
        r = tdxm_mr_verifyreport(m, c)  # GIL kept: see the header
        return _leaf_result(r)

    # ------------------------------------------------------------------ the leaves on host buffers
    def report(self, reportdata=b"", subtype=0):
        """report(reportdata: bytes = b"", subtype: int = 0) -> bytes

        TDG.MR.REPORT on host buffers (no address checks): the 1024-byte TDREPORT. REPORTDATA is
        zero-padded to 64 bytes (ValueError if longer); a status raises its tdxmodel.errors exception.
        """
        cdef tdxm_module *m = self._live()
        cdef bytes rd = _as_bytes(reportdata, "reportdata")
        cdef uint64_t sub
        cdef uint8_t rdbuf[SIZEOF_REPORTDATA]
        cdef uint8_t out[SIZEOF_REPORT]
        cdef uint64_t status
        if len(rd) > _abi.TDX_REPORTDATA_LEN:
            raise ValueError(f"reportdata must be at most {_abi.TDX_REPORTDATA_LEN} bytes, got {len(rd)}")
        sub = _u64(subtype, "subtype")
        memset(rdbuf, 0, sizeof(rdbuf))
        memcpy(rdbuf, <const char *>rd, len(rd))
        status = tdxm_report_direct(m, out, rdbuf, sub)  # GIL kept: see the header
        self._raise_hook_error()
        _errors.check_status(status, leaf="TDG.MR.REPORT")
        return PyBytes_FromStringAndSize(<char *>out, sizeof(out))

    def extend(self, index, data):
        """extend(index: int, data: bytes) -> None

        TDG.MR.RTMR.EXTEND on a host buffer: RTMR[index] = SHA-384(RTMR[index] || data) (ref §4.5).
        ``data`` must be 48 bytes (ValueError); index >= 4 raises OperandInvalid (operand RDX).
        """
        cdef tdxm_module *m = self._live()
        cdef uint64_t idx = _u64(index, "index")
        cdef bytes payload = _as_bytes(data, "data")
        cdef const uint8_t *p
        cdef uint64_t status
        if len(payload) != _abi.TDX_EXTEND_DATA_LEN:
            raise ValueError(f"data must be {_abi.TDX_EXTEND_DATA_LEN} bytes, got {len(payload)}")
        p = <const uint8_t *><const char *>payload
        status = tdxm_extend_direct(m, idx, p)  # GIL kept: see the header
        _errors.check_status(status, leaf="TDG.MR.RTMR.EXTEND")

    def verify(self, report):
        """verify(report: bytes) -> int

        TDG.MR.VERIFYREPORT on the first 256 bytes (REPORTMACSTRUCT) of a host buffer; returns the
        status without raising for it. tdxmodel checks the MAC first, then CPUSVN (ref §4.7).
        """
        cdef tdxm_module *m = self._live()
        cdef bytes rep = _as_bytes(report, "report")
        cdef const uint8_t *p
        cdef uint64_t status
        if len(rep) < _abi.TDX_REPORTMACSTRUCT_LEN:
            raise ValueError(f"report must be at least {_abi.TDX_REPORTMACSTRUCT_LEN} bytes, got {len(rep)}")
        p = <const uint8_t *><const char *>rep
        status = tdxm_verify_direct(m, p)  # GIL kept: see the header
        return status

    # ------------------------------------------------------------------ state
    def tdinfo(self):
        """tdinfo() -> bytes: the current 512-byte TDINFO_STRUCT (RTMRs included)."""
        cdef uint8_t out[SIZEOF_TDINFO]
        tdxm_read_tdinfo(self._live(), out)
        return PyBytes_FromStringAndSize(<char *>out, sizeof(out))

    def tee_tcb_info(self):
        """tee_tcb_info() -> bytes: the 239-byte TEE_TCB_INFO."""
        cdef uint8_t out[SIZEOF_TEE_TCB_INFO]
        tdxm_read_tee_tcb_info(self._live(), out)
        return PyBytes_FromStringAndSize(<char *>out, sizeof(out))

    def rtmr(self, index):
        """rtmr(index: int) -> bytes: the current RTMR[index] (48 bytes)."""
        i = _rtmr_index(index)
        off = _abi.TDR_OFF_RTMR0 - _abi.TDR_OFF_TDINFO + i * _abi.TDX_SHA384_LEN
        return self.tdinfo()[off:off + _abi.TDX_SHA384_LEN]

    def set_rtmr(self, index, value):
        """set_rtmr(index: int, value: bytes) -> None

        Host-side state sync, not a TDX operation: RTMR[index] = value (48 bytes) under the exclusive
        RTMR lock, waiting for it (with the GIL released), every cache refreshed.
        """
        cdef tdxm_module *m = self._live()
        cdef unsigned idx = _rtmr_index(index)
        cdef bytes payload = _as_bytes(value, "value")
        cdef const uint8_t *p
        if len(payload) != _abi.TDX_SHA384_LEN:
            raise ValueError(f"value must be {_abi.TDX_SHA384_LEN} bytes, got {len(payload)}")
        p = <const uint8_t *><const char *>payload
        with nogil:
            tdxm_set_rtmr(m, idx, p)

    def set_tee_tcb_info(self, value):
        """set_tee_tcb_info(value: bytes) -> None

        Host-side state sync, not a TDX operation: the platform's TCB position moved, so
        TEE_TCB_INFO becomes value (239 bytes; TEE_TCB_INFO_HASH of every later TDREPORT with it),
        published under the exclusive RTMR lock as set_rtmr does (waiting with the GIL released).
        """
        cdef tdxm_module *m = self._live()
        cdef bytes payload = _as_bytes(value, "value")
        cdef const uint8_t *p
        if len(payload) != _abi.TDX_TEE_TCB_INFO_LEN:
            raise ValueError(f"value must be {_abi.TDX_TEE_TCB_INFO_LEN} bytes, got {len(payload)}")
        p = <const uint8_t *><const char *>payload
        with nogil:
            tdxm_set_tee_tcb_info(m, p)

    # ------------------------------------------------------------------ the RTMR lock (ref §4.8)
    def rtmr_lock_try(self, exclusive):
        """rtmr_lock_try(exclusive: bool) -> int: 0, or TDX_OPERAND_BUSY | 0xA8 without waiting."""
        return tdxm_rtmr_lock_try(self._live(), 1 if exclusive else 0)

    def rtmr_unlock(self, exclusive):
        """rtmr_unlock(exclusive: bool) -> None; ValueError when the lock is not held that way."""
        if tdxm_rtmr_unlock_checked(self._live(), 1 if exclusive else 0) != 0:
            mode = "exclusive" if exclusive else "shared"
            raise ValueError(f"rtmr_unlock: the RTMR lock is not held {mode}")

    # ------------------------------------------------------------------ batch
    def report_batch(self, reportdata):
        """report_batch(reportdata: numpy.ndarray[uint8, (N, 64)]) -> (ndarray[uint8, (N, 1024)], ndarray[uint64, (N,)])

        N reports on host buffers, one shared RTMR lock acquisition each, with the GIL released for
        the whole loop. ``reportdata`` must be C-contiguous uint8 of shape (N, 64). A report whose
        status is nonzero leaves its row zero.
        """
        cdef tdxm_module *m = self._live()
        cdef const uint8_t[:, ::1] rd_view
        cdef uint8_t[:, ::1] out_view
        cdef uint64_t[::1] status_view
        cdef size_t n
        if not isinstance(reportdata, _np.ndarray):
            raise TypeError(f"reportdata must be a numpy.ndarray, not {type(reportdata).__name__}")
        if reportdata.dtype != _np.uint8 or reportdata.ndim != 2 or \
                reportdata.shape[1] != _abi.TDX_REPORTDATA_LEN:
            raise ValueError(f"reportdata must be uint8 of shape (N, {_abi.TDX_REPORTDATA_LEN}), got "
                             f"{reportdata.dtype} {reportdata.shape}")
        if not reportdata.flags.c_contiguous:
            raise ValueError("reportdata must be C-contiguous (numpy.ascontiguousarray)")
        n = reportdata.shape[0]
        reports = _np.empty((n, _abi.TDX_REPORT_LEN), dtype=_np.uint8)  # every row is written below
        statuses = _np.zeros(n, dtype=_np.uint64)
        if n == 0:
            return reports, statuses
        rd_view = reportdata
        out_view = reports
        status_view = statuses
        with nogil:
            tdxm_report_batch(m, &rd_view[0, 0], &out_view[0, 0], &status_view[0], n)
        self._raise_hook_error()
        return reports, statuses

    def extend_batch(self, indices, data):
        """extend_batch(indices: numpy.ndarray[uint64, (N,)], data: numpy.ndarray[uint8, (N, 48)]) -> ndarray[uint64, (N,)]

        N RTMR extends in order on host buffers, with the GIL released for the whole loop: the status of
        each (0, OPERAND_INVALID|RDX for an index >= 4, BUSY|RTMR when the lock was held; a failed row
        changed nothing). Both arrays C-contiguous.
        """
        cdef tdxm_module *m = self._live()
        cdef const uint64_t[::1] idx_view
        cdef const uint8_t[:, ::1] data_view
        cdef uint64_t[::1] status_view
        cdef size_t n
        _check_extend_batch(indices, data)
        n = indices.shape[0]
        statuses = _np.zeros(n, dtype=_np.uint64)
        if n == 0:
            return statuses
        idx_view = indices
        data_view = data
        status_view = statuses
        if n < _GIL_RELEASE_ROWS:  # a few microseconds: cheaper than a GIL hand-off (see the header)
            tdxm_extend_batch(m, &idx_view[0], &data_view[0, 0], &status_view[0], n)
        else:
            with nogil:
                tdxm_extend_batch(m, &idx_view[0], &data_view[0, 0], &status_view[0], n)
        return statuses

    # ------------------------------------------------------------------ debug counters
    def counters(self):
        """counters() -> dict: RTMR lock acquisitions/releases, BUSY answers, successful leaves."""
        cdef tdxm_counters c
        tdxm_get_counters(self._live(), &c)
        return {
            "rtmr_shared_acquired": c.rtmr_shared_acquired,
            "rtmr_shared_released": c.rtmr_shared_released,
            "rtmr_exclusive_acquired": c.rtmr_exclusive_acquired,
            "rtmr_exclusive_released": c.rtmr_exclusive_released,
            "rtmr_busy": c.rtmr_busy,
            "reports": c.reports,
            "extends": c.extends,
            "verifies": c.verifies,
            "report_interrupts": c.report_interrupts,
        }

    # ------------------------------------------------------------------ interrupts (ref §4.3 step 6)
    def inject_interrupts(self, n):
        """inject_interrupts(n: int) -> None: n interrupts pending for the TD (replacing any count).

        On TDX 1.5 each REPORT that passes step 5 consumes one and is executed again from step 1, as
        the guest re-executes a TDCALL the module left without writing RAX; 1.0 never checks.
        """
        tdxm_inject_interrupts(self._live(), <uint32_t>_count(n, "n", 0xFFFFFFFF))

    @property
    def pending_interrupts(self):
        """pending_interrupts -> int: interrupts not yet consumed by a REPORT."""
        return tdxm_pending_interrupts(self._live())

    # ------------------------------------------------------------------ test hook
    def _set_step_hook(self, hook):
        """_set_step_hook(hook: callable(point: str) | None) -> None

        Tests only: call ``hook("snapshot")`` and ``hook("built")`` inside every REPORT (csrc/tdx_module.h
        enum tdxm_step), in the reporting thread, to interleave work at exact points. An exception the
        hook raises is raised by the leaf call once the leaf has returned.
        """
        cdef tdxm_module *m = self._live()
        if hook is not None and not callable(hook):
            raise TypeError(f"hook must be callable or None, not {type(hook).__name__}")
        tdxm_set_step_hook(m, NULL, NULL)
        self._step_hook = hook
        if hook is not None:
            tdxm_set_step_hook(m, _step_trampoline, <void *>self)
        self._raise_hook_error()

    cdef _raise_hook_error(self):
        if self._step_hook_error is not None:
            exc, self._step_hook_error = self._step_hook_error, None
            raise exc


def _floor_hmac224(key, n):
    """_floor_hmac224(key: bytes, n: int) -> bytes

    Benchmark floor (benchmarks/RESULTS.md): n chained HMAC-SHA-256 over 224 bytes with a precomputed key state, the
    GIL released; returns the last MAC. Each message starts with the previous MAC.
    """
    cdef bytes k = _as_bytes(key, "key")
    cdef size_t rounds = _count(n, "n", _U64_MAX)
    cdef uint8_t out[SIZEOF_MAC]
    cdef const uint8_t *kp
    if len(k) != _abi.TDX_MAC_KEY_LEN:
        raise ValueError(f"key must be {_abi.TDX_MAC_KEY_LEN} bytes, got {len(k)}")
    kp = <const uint8_t *><const char *>k
    with nogil:
        tdxm_floor_hmac224(kp, rounds, out)
    return PyBytes_FromStringAndSize(<char *>out, sizeof(out))


def _floor_sha384_512(n):
    """_floor_sha384_512(n: int) -> bytes

    Benchmark floor (benchmarks/RESULTS.md): n chained SHA-384 over 512 bytes (a TDINFO), the GIL released; returns
    the last digest. Each message starts with the previous digest.
    """
    cdef size_t rounds = _count(n, "n", _U64_MAX)
    cdef uint8_t out[SIZEOF_SHA384]
    with nogil:
        tdxm_floor_sha384_512(rounds, out)
    return PyBytes_FromStringAndSize(<char *>out, sizeof(out))
