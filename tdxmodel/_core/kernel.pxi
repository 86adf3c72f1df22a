# The guest kernel, its processes and fault knobs: a thin wrapper of csrc/tdx_driver.h and
# csrc/guest_kernel.h (layer 2; docs/CONTRACT.md "Kernel", "FaultAttr", "Process").
#
# Arguments are validated here with the same rules and messages as the reference backend. An emulated
# syscall (ioctl / pread / pwrite) runs with the GIL held: it costs well under a microsecond, less than
# the GIL hand-off two threads taking turns would pay (benchmarks/RESULTS.md "GIL strategy"); where it
# waits (6.16's contended mr_lock) csrc/gk_sched.h releases the GIL for the wait only.
# A Process keeps its Kernel alive, and a Kernel its Module, so C pointers never dangle.

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, INT64_MAX
from libc.stdlib cimport malloc, free
from libc.string cimport strlen as _strlen
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

cimport cython

from tdxmodel._core.guest_kernel cimport *
from tdxmodel._core.gk_sched cimport gk_set_caller_lock_hooks, gk_caller_holds_lock
from tdxmodel._core.tdx_driver cimport *
from tdxmodel._core.tdx_abi cimport TDXM_NUM_PROFILES, KERNEL_FIRST_PAGE, TDXM_PROFILES

import os as _os


cdef extern from "Python.h":
    ctypedef struct PyThreadState:
        pass
    PyThreadState *PyEval_SaveThread() nogil
    void PyEval_RestoreThread(PyThreadState *state) nogil


cdef void *_release_gil() noexcept nogil:
    # Called by gk_block_begin in a thread that holds the GIL (gk_caller_holds_lock(1)).
    return <void *>PyEval_SaveThread()


cdef void _acquire_gil(void *state) noexcept nogil:
    PyEval_RestoreThread(<PyThreadState *>state)


gk_set_caller_lock_hooks(_release_gil, _acquire_gil)

from tdxmodel import profiles as _profiles

cdef int _profile_id(object prof) except -1:
    """_profile_id(prof: Profile) -> int: the profile's row in the compiled TDXM_PROFILES[], checked
    against tdxmodel.profiles so a build older than the table fails loudly instead of misbehaving."""
    cdef int i = prof.id
    if i >= TDXM_NUM_PROFILES or TDXM_PROFILES[i].name.decode() != prof.name \
            or TDXM_PROFILES[i].cmds[0].cmd != prof.report.value \
            or TDXM_PROFILES[i].npoints != len(prof.points):
        raise RuntimeError(f"the compiled core's profile table does not match tdxmodel.profiles for "
                           f"{prof.name}: rebuild (python setup.py build_ext --inplace)")
    return i


_CAPABILITY_IDS = {"failslab": GK_FAILSLAB, "fail_page_alloc": GK_FAIL_PAGE_ALLOC,
                   "fail_usercopy": GK_FAIL_USERCOPY}
_MISALIGN_TARGETS = {None: TD_MISALIGN_NONE, "tdreport": TD_MISALIGN_TDREPORT,
                     "reportdata": TD_MISALIGN_REPORTDATA}
_PROT_BITS = {"": GK_PROT_NONE, "r": GK_PROT_READ, "w": GK_PROT_WRITE, "rw": GK_PROT_READ | GK_PROT_WRITE}
_I31 = (1 << 31) - 1
_I32 = (1 << 32) - 1
_PAGE = _abi.TDX_PAGE_SIZE
#: Internal-construction token: FaultAttr is made by Kernel.fault only (Kernel.process also uses it).
cdef object _INTERNAL = object()


cdef object _int_arg(str name, object value, object lo, object hi):
    """_int_arg(name: str, value: int, lo: int | None, hi: int | None) -> int

    The reference backend's argument rule: an int that is not a bool (TypeError), within [lo, hi]
    (ValueError naming the argument)."""
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")
    return value


cdef bint _bool_arg(str name, object value) except -1:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


cdef inline uint64_t _u64_arg(str name, object value) except? 0xFFFFFFFFFFFFFFFF:
    """_u64_arg(name: str, value: int) -> uint64_t: the syscall fast path for an unsigned argument."""
    if type(value) is int:
        try:
            return value  # OverflowError for a negative value or one of 2**64 and above
        except OverflowError:
            pass
    return _int_arg(name, value, 0, _U64_MAX)


_TASK_HUNG = ("mutex_lock(quote_lock) never returns: a TDX_CMD_GEN_QUOTE returned to user space "
              "holding it (v4 3/3's early returns, ref §2.2)")


cdef class FaultAttr:
    """One fault capability's knobs with the kernel's defaults (ref §7; docs/CONTRACT.md "FaultAttr").

    ``probability`` (0..100), ``interval`` (>= 1), ``times`` (-1 or >= 0), ``space`` (>= 0), ``verbose``
    (0..2), ``task_filter`` (bool). ``ignore_gfp_wait`` exists for failslab and fail_page_alloc (default
    True) and ``min_order`` for fail_page_alloc (default 1); on the other capabilities they read as
    False / 0 and setting them raises ValueError. Not constructible from Python: use ``Kernel.fault``.
    """

    cdef Kernel _kernel
    cdef int _cap

    def __init__(self, *args, **kwargs):
        if len(args) != 3 or args[0] is not _INTERNAL:
            raise TypeError("FaultAttr is not constructible; use Kernel.fault(capability)")
        self._kernel = args[1]
        self._cap = args[2]

    cdef gk_fault_attr _get(self) except *:
        cdef gk_fault_attr a
        gk_fault_attr_get(self._kernel._gk(), self._cap, &a)
        return a

    cdef int _set(self, int knob, object value) except -1:
        """Write one knob and nothing else (a debugfs write), so `times` and `space` that calls use up
        meanwhile stay used up (ref §7)."""
        gk_fault_attr_set_knob(self._kernel._gk(), self._cap, knob, <uint64_t>(value & _U64_MAX))
        return 0

    @property
    def capability(self):
        return gk_capability_name(self._cap).decode()

    @property
    def probability(self):
        return self._get().probability

    @probability.setter
    def probability(self, value):
        self._set(GK_KNOB_PROBABILITY, _int_arg("probability", value, 0, 100))

    @property
    def interval(self):
        return self._get().interval

    @interval.setter
    def interval(self, value):
        self._set(GK_KNOB_INTERVAL, _int_arg("interval", value, 1, _U64_MAX))

    @property
    def times(self):
        return self._get().times

    @times.setter
    def times(self, value):
        self._set(GK_KNOB_TIMES, _int_arg("times", value, -1, _I31))

    @property
    def space(self):
        return self._get().space

    @space.setter
    def space(self, value):
        self._set(GK_KNOB_SPACE, _int_arg("space", value, 0, _I31))

    @property
    def verbose(self):
        return self._get().verbose

    @verbose.setter
    def verbose(self, value):
        self._set(GK_KNOB_VERBOSE, _int_arg("verbose", value, 0, 2))

    @property
    def task_filter(self):
        return bool(self._get().task_filter)

    @task_filter.setter
    def task_filter(self, value):
        self._set(GK_KNOB_TASK_FILTER, int(_bool_arg("task_filter", value)))

    @property
    def ignore_gfp_wait(self):
        return bool(self._get().ignore_gfp_wait)

    @ignore_gfp_wait.setter
    def ignore_gfp_wait(self, value):
        if self._cap == GK_FAIL_USERCOPY:
            raise ValueError(f"ignore_gfp_wait: {self.capability} has no such knob (ref §7)")
        self._set(GK_KNOB_IGNORE_GFP_WAIT, int(_bool_arg("ignore_gfp_wait", value)))

    @property
    def min_order(self):
        return self._get().min_order

    @min_order.setter
    def min_order(self, value):
        if self._cap != GK_FAIL_PAGE_ALLOC:
            raise ValueError(f"min_order: {self.capability} has no such knob (only fail_page_alloc, ref §7)")
        self._set(GK_KNOB_MIN_ORDER, _int_arg("min_order", value, 0, 10))

    def __repr__(self):
        a = self._get()
        return (f"FaultAttr({self.capability}: probability={a.probability} interval={a.interval} "
                f"times={a.times} space={a.space} ignore_gfp_wait={bool(a.ignore_gfp_wait)} "
                f"min_order={a.min_order} task_filter={bool(a.task_filter)})")


def _completion_arg(prof, spec):
    """The Kernel's quote_completion: the profile's default when None; ValueError without a quote path."""
    if prof.quote is None:
        if spec is not None:
            raise ValueError(f"quote_completion: {prof.name} has no configfs-tsm quote path")
        return None
    return prof.quote.completion if spec is None else _profiles.quote_completion(spec)


# no_gc_clear: Kernel <-> FaultAttr is a cycle; the collector must not drop _module before __dealloc__
# destroys the C kernel, whose allocator state lives in the module's guest memory.
@cython.no_gc_clear
cdef class Kernel:
    """Kernel(module: Module, driver: str, *, seed: int | None = 0, fail_nth: int = 0,
    misaligned_report_buf: bool = False)

    The guest kernel with one driver generation loaded, in C (csrc/guest_kernel.c and its gk_*.c parts,
    csrc/tdx_driver.c); docs/CONTRACT.md "Kernel". ``fail_nth`` arms fail-nth for init, which runs with
    the documented sweep settings (ignore-gfp-wait N, min-order 0, ref §7); the knobs are at their
    defaults afterwards.
    """

    cdef td_kernel *tk
    cdef Module _module
    cdef str _driver
    cdef int _driver_id
    cdef object _profile
    cdef dict _faults
    cdef object _completion

    def __cinit__(self, *args, **kwargs):
        self.tk = NULL

    def __init__(self, module, driver, *, seed=0, fail_nth=0, misaligned_report_buf=False,
                 fail_decrypt=False, quote_completion=None):
        cdef int err = 0
        cdef uint64_t init_status = 0
        cdef uint64_t leaked = 0
        cdef int c_fail_decrypt
        cdef bytes tsm_dir = _profiles.TSM_REPORT_DIR.encode()
        cdef const char *c_tsm_dir = tsm_dir
        cdef bytes tsm_provider = _profiles.TSM_PROVIDER_NAME.encode()
        cdef const char *c_tsm_provider = tsm_provider
        cdef td_node *nodes = NULL
        cdef uint64_t c_seed
        cdef unsigned c_fail_nth
        cdef int c_misaligned
        cdef int c_driver
        cdef tdxm_module *m
        cdef int c_mode, c_sleep
        cdef uint32_t c_interval, c_cap, c_hz
        if self.tk != NULL:
            raise RuntimeError("Kernel is already initialised")
        if not isinstance(module, Module):
            raise TypeError(f"module must be a core-backend Module, not {type(module).__name__}")
        prof = _profiles.get(driver)
        if seed is not None:
            _int_arg("seed", seed, 0, _U64_MAX)
        c_fail_nth = _int_arg("fail_nth", fail_nth, 0, _I31)
        c_misaligned = _bool_arg("misaligned_report_buf", misaligned_report_buf)
        c_fail_decrypt = _bool_arg("fail_decrypt", fail_decrypt)
        if c_fail_decrypt and prof.quote is None:
            raise ValueError(f"fail_decrypt: {driver} has no quote buffer (no configfs-tsm quote path)")
        if c_misaligned and not prof.cached_report_buf:
            raise ValueError(f"misaligned_report_buf: {driver} allocates no report buffer at init "
                             "(only the generations with a cached report buffer, ref §2.5)")
        completion = _completion_arg(prof, quote_completion)
        pages = module.memory_pages
        if pages <= KERNEL_FIRST_PAGE:
            raise ValueError(f"module has {pages} pages; the kernel needs more than {KERNEL_FIRST_PAGE}")
        c_seed = int.from_bytes(_os.urandom(8), "little") if seed is None else seed
        c_driver = _profile_id(prof)

        # The files this driver exposes, from its profile (the C core spells no path or offset).
        table = [(prof.device_path.encode(), TD_NODE_DEVICE, 0, 0)]
        for directory in prof.measurement_dirs:
            for mr in prof.measurements:
                table.append((f"{directory}/{mr.name}".encode(), TD_NODE_MEASUREMENT, mr.tdr_offset,
                              1 if mr.writable else 0))
        cdef size_t nnodes = len(table)
        nodes = <td_node *>malloc(nnodes * sizeof(td_node))
        if nodes == NULL:
            raise MemoryError()
        try:
            for i, (path, kind, offset, writable) in enumerate(table):
                nodes[i].path = PyBytes_AS_STRING(path)
                nodes[i].kind = kind
                nodes[i].tdr_offset = offset
                nodes[i].writable = writable
            m = (<Module>module)._live()
            with nogil:
                self.tk = td_kernel_create(m, c_driver, c_seed, nodes, nnodes, c_fail_nth,
                                           c_misaligned, &err, &init_status, c_tsm_dir, c_tsm_provider,
                                           c_fail_decrypt, &leaked)
        finally:
            free(nodes)
        if self.tk == NULL:
            if err == -_abi.ENOMEM:
                exc = _errors.errno_exception(_abi.ENOMEM, "tdx_guest init: report or quote buffer")
                exc.leaked_pages = leaked
                raise exc
            raise _errors.errno_exception(-err, "tdx_guest init: TDG.MR.REPORT",
                                          status=init_status if init_status else None)
        self._module = module
        self._driver = driver
        self._driver_id = c_driver
        self._profile = prof
        self._completion = completion
        if completion is not None:  # init: how P7 waits; the interrupt mode registers its vector now
            c_mode, c_interval, c_cap = completion.mode_id, completion.interval_ms, completion.cap_ms
            c_sleep, c_hz = completion.sleep_id, completion.hz
            with nogil:
                err = tsm_set_completion(td_kernel_tsm(self.tk), c_mode, c_interval, c_cap, c_sleep, c_hz)
            if err != 0:
                raise ValueError(f"quote_completion: {completion!r} refused by the core")
        self._faults = {cap: FaultAttr(_INTERNAL, self, _CAPABILITY_IDS[cap])
                        for cap in _abi.FAULT_CAPABILITIES}

    def __dealloc__(self):
        if self.tk != NULL:
            td_kernel_destroy(self.tk)
            self.tk = NULL

    cdef inline td_kernel *_live(self) except NULL:
        if self.tk == NULL:
            raise RuntimeError("Kernel is not initialised")
        return self.tk

    cdef gk_kernel *_gk(self) except NULL:
        return td_kernel_gk(self._live())

    @property
    def driver(self):
        return self._driver

    @property
    def module(self):
        return self._module

    @property
    def device_path(self):
        return self._profile.device_path

    def fault(self, capability):
        """fault(capability: str) -> FaultAttr: the live knobs of one capability (ref §7)."""
        if not isinstance(capability, str) or capability not in self._faults:
            raise ValueError(f"capability must be one of {', '.join(_abi.FAULT_CAPABILITIES)}, "
                             f"not {capability!r}")
        return self._faults[capability]

    def force_tdcall(self, status, *, leaf=None, count=1):
        """force_tdcall(status: int, *, leaf: int | None = None, count: int = 1) -> None

        The next ``count`` TDCALLs the kernel issues (of ``leaf``, or any) return ``status`` without
        reaching the module (a model-only injection point, ref §7). A new call replaces the old one."""
        cdef uint64_t c_status = _int_arg("status", status, 0, _U64_MAX)
        cdef int c_leaf = -1
        if leaf is not None:
            # a leaf number the kernel never issues simply never matches
            c_leaf = min(_int_arg("leaf", leaf, 0, _U64_MAX), _I31)
        cdef int64_t c_count = _int_arg("count", count, 1, _I31)
        gk_force_tdcall(self._gk(), c_status, c_leaf, c_count)

    def force_misaligned(self, target):
        """force_misaligned(target: str | None) -> None

        While set, the driver's allocations of ``target`` ("tdreport": v4's page / v6.2's kzalloc;
        "reportdata": the kmalloc(64)) come back 8 bytes past their natural alignment, so the module
        answers OPERAND_INVALID with operand RCX resp. RDX (ref §4.3 rows 1-2). v6.16 makes no per-call
        allocation (use ``misaligned_report_buf`` or ``force_tdcall``): ValueError."""
        if target is not None and target not in ("tdreport", "reportdata"):
            raise ValueError(f"target must be 'tdreport', 'reportdata' or None, not {target!r}")
        if target is not None and self._profile.cached_report_buf:
            raise ValueError(f"target: {self._driver} allocates no per-call buffer (ref §2.5); use "
                             "misaligned_report_buf or force_tdcall")
        td_force_misaligned(self._live(), _MISALIGN_TARGETS[target])

    def mr_lock_try(self):
        """mr_lock_try() -> bool: hold 6.16's mr_lock as another task would (no waiting)."""
        self._check_mr_lock()
        return td_mr_lock_try(self._live()) == 1

    def mr_lock_release(self):
        """mr_lock_release() -> None: release a hold taken with mr_lock_try (ValueError if not held)."""
        self._check_mr_lock()
        if td_mr_lock_release(self._live()) != 0:
            raise ValueError("mr_lock is not held by mr_lock_try")

    def set_rtmr(self, index, value):
        """set_rtmr(index: int, value: bytes) -> None: host-side state sync (not a TDX operation):
        Module.set_rtmr, then the 6.16 tsm-mr cache is stale, as after the driver's own extend
        (ref §2.5), so the next read of a measurement file refreshes it."""
        self._module.set_rtmr(index, value)
        td_mr_cache_stale(self._live())

    cdef _check_mr_lock(self):
        if not self._profile.has_lock("mr_lock"):
            raise ValueError(f"driver {self._driver} has no mr_lock (only v6.16, ref §2.5)")

    # ------------------------------------------------------------------ configfs-tsm (quote.md §1.6)
    cdef tsm_state *_tsm(self) except NULL:
        cdef tsm_state *s = td_kernel_tsm(self._live())
        if s == NULL:
            raise ValueError(f"driver {self._driver} has no configfs-tsm quote path")
        return s

    def tsm_unregister(self):
        """tsm_unregister() -> None: the provider leaves configfs-tsm (module unload); items linger."""
        cdef tsm_state *s = self._tsm()
        with nogil:
            tsm_unregister(s)

    def tsm_register(self):
        """tsm_register() -> int: 0, or -EBUSY (already registered; 6.16+: items exist)."""
        cdef tsm_state *s = self._tsm()
        cdef int rc
        with nogil:
            rc = tsm_register(s)
        return rc

    def quote_lock_try(self):
        """quote_lock_try() -> bool: hold the provider's quote_lock (or the ioctl quote path's) as
        another task would (no waiting)."""
        if self._profile.ioctl_quote is not None:
            return td_quote_lock_try(self._live()) == 1
        return bool(tsm_quote_lock_try(self._tsm()))

    def quote_lock_release(self):
        """quote_lock_release() -> None: release a quote_lock_try hold (ValueError if none)."""
        if self._profile.ioctl_quote is not None:
            rc = td_quote_lock_release(self._live())
        else:
            rc = tsm_quote_lock_release(self._tsm())
        if rc != 0:
            raise ValueError("quote_lock is not held by quote_lock_try")

    @property
    def tsm_registered(self):
        return bool(tsm_registered(self._tsm()))

    def _tsm_set_generations(self, name, write_gen, read_gen):
        """Model-only (tests): set an item's write and read generation (the wrap guard)."""
        cdef tsm_state *s = self._tsm()
        cdef bytes raw = _as_name(name)
        cdef uint64_t w = _u64_arg("write_gen", write_gen), r = _u64_arg("read_gen", read_gen)
        if tsm_set_generations(s, raw, w, r) != 0:
            raise ValueError(f"no configfs-tsm item {name!r}")

    @property
    def quote_buf_gpa(self):
        """quote_buf_gpa -> int: the GPA of the shared quote buffer (no shared bit)."""
        return tsm_quote_buf_gpa(self._tsm())

    @property
    def quote_buf_size(self):
        return tsm_quote_buf_size(self._tsm())

    @property
    def getquote_timeout(self):
        """getquote_timeout -> int: the wait loop's poll limit (the kernel's static u32 30, quote.md
        §2.2); model-only, settable so a real-clock test can run a short loop."""
        return tsm_getquote_timeout(self._tsm())

    @getquote_timeout.setter
    def getquote_timeout(self, value):
        tsm_set_getquote_timeout(self._tsm(), <uint32_t>_int_arg("getquote_timeout", value, 0, 0xFFFFFFFF))

    @property
    def quote_completion(self):
        """quote_completion -> profiles.QuoteCompletion: how the provider waits (quote.md §2.4-§2.6)."""
        self._tsm()
        return self._completion

    @property
    def notify_registered(self):
        """notify_registered -> bool: the host took the guest's notify vector (interrupt mode)."""
        return bool(tsm_notify_registered(self._tsm()))

    @property
    def notify_irqs(self):
        """notify_irqs -> int: notify vectors the guest received."""
        return tsm_notify_irqs(self._tsm())

    def counters(self):
        """counters() -> dict: allocs, frees, outstanding, resident, slab_allocs, page_allocs,
        locks_taken, locks_released, locks_held, locks_leaked."""
        cdef gk_counters c
        gk_get_counters(self._gk(), &c)
        return {"allocs": c.allocs, "frees": c.frees, "outstanding": c.outstanding,
                "resident": c.resident, "slab_allocs": c.slab_allocs, "page_allocs": c.page_allocs,
                "locks_taken": c.locks_taken, "locks_released": c.locks_released,
                "locks_held": c.locks_held, "locks_leaked": td_locks_leaked(self._live())}

    def process(self):
        """process() -> Process: a new process with an empty address space."""
        return Process(_INTERNAL, self)

    def injection_points(self):
        """injection_points() -> list[str]: every injectable point of this driver, in driver order."""
        cdef int points[GK_NUM_POINTS]
        cdef int n = td_injection_points(self._driver_id, points)
        return [gk_point_name(points[i]).decode() for i in range(n)]

    def init_trace(self):
        """init_trace() -> list[tuple[str, str, bool]]: the injectable points module init passed, as
        (point, capability, failed) (init that fails raises, so none is failed here)."""
        cdef gk_trace_entry entries[GK_TRACE_MAX]
        cdef unsigned n = td_init_trace(self.tk, entries)
        return [(gk_point_name(entries[i].point).decode(), gk_capability_name(entries[i].capability).decode(),
                 bool(entries[i].failed)) for i in range(n)]

    def __repr__(self):
        if self.tk == NULL:
            return "<core Kernel (uninitialised)>"
        return f"<core Kernel {self._driver} over {self._module.memory_pages} pages>"


@cython.no_gc_clear
cdef class Process:
    """A process with its own user address space and file table (docs/CONTRACT.md "Process").

    One task per Process: fail-nth, the signal flag and the trace belong to it; give each thread its
    own Process to inject faults concurrently. ``Process(kernel)`` is the same as ``kernel.process()``."""

    cdef td_process *p
    cdef Kernel _kernel

    def __cinit__(self, *args, **kwargs):
        self.p = NULL

    def __init__(self, *args):
        if len(args) == 2 and args[0] is _INTERNAL:
            args = args[1:]
        if len(args) != 1 or not isinstance(args[0], Kernel):
            raise TypeError("Process(kernel) needs a core-backend Kernel (or use Kernel.process())")
        if self.p != NULL:
            raise RuntimeError("Process is already initialised")
        kernel = <Kernel>args[0]
        self.p = td_process_create(kernel._live())
        if self.p == NULL:
            raise MemoryError()
        self._kernel = kernel

    def __dealloc__(self):
        if self.p != NULL:
            td_process_destroy(self.p)
            self.p = NULL

    cdef inline td_process *_live(self) except NULL:
        if self.p == NULL:
            raise RuntimeError("Process is not initialised (use Kernel.process())")
        return self.p

    def __repr__(self):
        return f"<core Process of {self._kernel!r}>"

    # -- task knobs -----------------------------------------------------------------------------
    @property
    def fail_nth(self):
        return gk_task_get_fail_nth(td_process_task(self._live()))

    @fail_nth.setter
    def fail_nth(self, value):
        gk_task_set_fail_nth(td_process_task(self._live()), _int_arg("fail_nth", value, 0, _I31))

    @property
    def make_it_fail(self):
        return bool(gk_task_get_make_it_fail(td_process_task(self._live())))

    @make_it_fail.setter
    def make_it_fail(self, value):
        gk_task_set_make_it_fail(td_process_task(self._live()), _bool_arg("make_it_fail", value))

    @property
    def signal_pending(self):
        return bool(gk_task_get_signal(td_process_task(self._live())))

    @signal_pending.setter
    def signal_pending(self, value):
        gk_task_set_signal(td_process_task(self._live()), _bool_arg("signal_pending", value))

    @property
    def signal_at_ns(self):
        """signal_at_ns -> int | None: a signal due at this platform-clock time; an interruptible
        sleep (the quote wait loop) that reaches it is cut short there and the signal becomes pending."""
        cdef uint64_t at = gk_task_get_signal_at(td_process_task(self._live()))
        return None if at == 0 else at - 1

    @signal_at_ns.setter
    def signal_at_ns(self, value):
        cdef uint64_t at = 0
        if value is not None:
            at = <uint64_t>_int_arg("signal_at_ns", value, 0, _U64_MAX - 1) + 1
        gk_task_set_signal_at(td_process_task(self._live()), at)

    def last_trace(self):
        """last_trace() -> list[tuple[str, str, bool]]: the injectable points the last syscall passed,
        as (point, capability, failed)."""
        cdef gk_trace_entry entries[GK_TRACE_MAX]
        cdef unsigned n = td_last_trace(self._live(), entries)
        return [(gk_point_name(entries[i].point).decode(), gk_capability_name(entries[i].capability).decode(),
                 bool(entries[i].failed)) for i in range(n)]

    def fault_user_copy(self, kind, at=0):
        """fault_user_copy(kind: str | None, at: int = 0) -> None

        ``"partial_to_user"``: the next copy_to_user faults after ``at`` bytes, leaving that prefix
        in user memory (ref §7: a genuine mid-copy fault); None cancels."""
        if kind is None:
            td_fault_user_copy(self._live(), 0, 0)
            return
        if kind != "partial_to_user":
            raise ValueError(f"kind must be 'partial_to_user' or None, not {kind!r}")
        td_fault_user_copy(self._live(), 1, _int_arg("at", at, 0, _U64_MAX))

    # -- address space ----------------------------------------------------------------------------
    cdef tuple _range(self, addr, length):
        _int_arg("addr", addr, 0, _U64_MAX)
        _int_arg("length", length, 1, _U64_MAX)
        if addr % _PAGE:
            raise ValueError(f"addr 0x{addr:x} is not page-aligned")
        if addr + length > _U64_MAX + 1:
            raise ValueError("addr + length is beyond the 64-bit address space")
        return addr, length

    @staticmethod
    def _prot_bits(prot):
        if not isinstance(prot, str) or prot not in _PROT_BITS:
            raise ValueError(f"prot must be one of '', 'r', 'w', 'rw', not {prot!r}")
        return _PROT_BITS[prot]

    def mmap(self, addr, length, prot):
        """mmap(addr: int, length: int, prot: str) -> None: map zero-filled pages (no overlap)."""
        self._range(addr, length)
        bits = Process._prot_bits(prot)
        if (length + _PAGE - 1) // _PAGE > GK_MAX_MAP_PAGES:
            raise ValueError(f"length {length} exceeds the model's largest mapping "
                             f"({GK_MAX_MAP_PAGES} pages)")
        rc = gk_mm_map(td_process_mm(self._live()), addr, length, bits)
        if rc == -_abi.ENOMEM:
            raise MemoryError("mmap: host out of memory")
        if rc:
            raise ValueError(f"mmap: [0x{addr:x}, +{length}) overlaps an existing mapping")

    def mprotect(self, addr, length, prot):
        """mprotect(addr: int, length: int, prot: str) -> None: every page must be mapped."""
        self._range(addr, length)
        bits = Process._prot_bits(prot)
        if gk_mm_protect(td_process_mm(self._live()), addr, length, bits):
            raise ValueError(f"mprotect: [0x{addr:x}, +{length}) is not wholly mapped")

    def munmap(self, addr, length):
        """munmap(addr: int, length: int) -> None: unmapped pages in the range are ignored."""
        self._range(addr, length)
        if gk_mm_unmap(td_process_mm(self._live()), addr, length):
            raise MemoryError("munmap: host out of memory")

    cdef _host_range_check(self, addr, n):
        _int_arg("addr", addr, 0, _U64_MAX)
        _int_arg("n", n, 0, _U64_MAX)
        if addr + n > _U64_MAX + 1:
            raise ValueError("addr + n is beyond the 64-bit address space")
        if n and not gk_mm_mapped(td_process_mm(self._live()), addr, n):
            raise ValueError(f"addr: [0x{addr:x}, +{n}) is not wholly mapped")

    def poke(self, addr, data):
        """poke(addr: int, data: bytes) -> None: host-side write ignoring protection."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        cdef bytes raw = bytes(data)
        self._host_range_check(addr, len(raw))
        if gk_mm_poke(td_process_mm(self._live()), addr, PyBytes_AS_STRING(raw), len(raw)):
            raise ValueError(f"addr: [0x{addr:x}, +{len(raw)}) is not wholly mapped")

    def peek(self, addr, n):
        """peek(addr: int, n: int) -> bytes: host-side read ignoring protection."""
        self._host_range_check(addr, n)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        if gk_mm_peek(td_process_mm(self._live()), addr, PyBytes_AS_STRING(out), n):
            raise ValueError(f"addr: [0x{addr:x}, +{n}) is not wholly mapped")
        return out

    # -- syscalls ---------------------------------------------------------------------------------
    def open(self, path, flags=_os.O_RDWR):
        """open(path: str, flags: int = os.O_RDWR) -> int: fd >= 3, -ENOENT, or -EACCES (writing a
        0444 measurement file)."""
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        _int_arg("flags", flags, 0, _I31)
        cdef td_process *p = self._live()
        if "\0" in path:
            path = ""  # no node has a NUL in its name
        cdef bytes raw = path.encode("utf-8", "surrogateescape")
        return td_open(p, raw, flags & _os.O_ACCMODE)

    def close(self, fd):
        """close(fd: int) -> int: 0 or -EBADF (a configfs inblob commits here; its result is ignored)."""
        _int_arg("fd", fd, None, None)
        cdef td_process *p = self._live()
        cdef int c_fd = fd if -_I31 <= fd <= _I31 else -1
        cdef int rc
        with nogil:
            rc = td_close(p, c_fd)
        return rc

    cdef long _check_ret(self, long ret) except? -9999:
        if ret == TD_RET_TD_EXIT:
            self._exit()
        if ret == TSM_RET_OOPS:
            raise _errors.KernelOops("NULL pointer dereference: configfs-tsm provider_show after the "
                                     "provider unregistered (quote.md §1.7)")
        return ret

    def read(self, fd, addr, count):
        """read(fd: int, addr: int, count: int) -> int: bytes read at the file position, or -errno
        (configfs files; the device node and measurement files: -EINVAL, use pread)."""
        cdef td_process *p = self._live()
        _int_arg("fd", fd, None, None)
        cdef uint64_t c_addr = _int_arg("addr", addr, 0, _U64_MAX)
        _int_arg("count", count, None, None)
        cdef int c_fd = fd if -_I31 <= fd <= _I31 else -1
        cdef int64_t c_count = -1 if count < 0 else min(count, INT64_MAX)
        cdef long ret
        with nogil:
            ret = td_read(p, c_fd, c_addr, c_count)
        return self._check_ret(ret)

    def write(self, fd, addr, count):
        """write(fd: int, addr: int, count: int) -> int: bytes written at the file position, or -errno."""
        cdef td_process *p = self._live()
        _int_arg("fd", fd, None, None)
        cdef uint64_t c_addr = _int_arg("addr", addr, 0, _U64_MAX)
        _int_arg("count", count, None, None)
        cdef int c_fd = fd if -_I31 <= fd <= _I31 else -1
        cdef int64_t c_count = -1 if count < 0 else min(count, INT64_MAX)
        cdef long ret
        with nogil:
            ret = td_write(p, c_fd, c_addr, c_count)
        return self._check_ret(ret)

    def mkdir(self, path, mode=0o755):
        """mkdir(path: str, mode: int = 0o755) -> int: 0 or -errno (configfs ignores the mode)."""
        _int_arg("mode", mode, 0, 0o7777)
        cdef bytes raw = _as_path(path)
        cdef const char *c_path = raw
        cdef td_process *p = self._live()
        cdef int rc
        with nogil:
            rc = td_mkdir(p, c_path)
        return rc

    def rmdir(self, path):
        """rmdir(path: str) -> int: 0 or -errno."""
        cdef bytes raw = _as_path(path)
        cdef const char *c_path = raw
        cdef td_process *p = self._live()
        cdef int rc
        with nogil:
            rc = td_rmdir(p, c_path)
        return rc

    def stat(self, path):
        """stat(path: str) -> dict {"type": "dir" | "file", "mode": int} or -errno."""
        cdef bytes raw = _as_path(path)
        cdef const char *c_path = raw
        cdef td_process *p = self._live()
        cdef int kind = 0, mode = 0
        cdef int rc
        with nogil:
            rc = td_stat(p, c_path, &kind, &mode)
        if rc != 0:
            return rc
        return {"type": "dir" if kind == TSM_STAT_DIR else "file", "mode": mode}

    def readdir(self, path):
        """readdir(path: str) -> list[str] (sorted, without . and ..) or -errno."""
        cdef bytes raw = _as_path(path)
        cdef const char *c_path = raw
        cdef td_process *p = self._live()
        cdef size_t cap = 1 << 16
        cdef char *buf = <char *>malloc(cap)
        cdef long n
        cdef size_t pos = 0, length, i
        if buf == NULL:
            raise MemoryError()
        try:
            with nogil:
                n = td_readdir(p, c_path, buf, cap)
            if n < 0:
                return n
            names = []
            for i in range(<size_t>n):
                length = _strlen(buf + pos)
                names.append(PyBytes_FromStringAndSize(buf + pos, length).decode("utf-8", "surrogateescape"))
                pos += length + 1
            return names
        finally:
            free(buf)

    cdef object _exit(self):
        cdef uint64_t gpa = 0
        kind = td_last_exit(self.p, &gpa)
        if kind == TDXM_EXIT_VE:
            raise _errors.VirtualizationException(gpa)
        raise _errors.EptViolation(gpa)

    def ioctl(self, fd, cmd, arg):
        """ioctl(fd: int, cmd: int, arg: int) -> int: 0 or -errno, as the driver's step table says.

        ``cmd`` is an unsigned 32-bit number and ``arg`` an unsigned 64-bit address (ValueError
        outside those ranges). The GIL is kept (a sub-microsecond call loses more to the handoff than
        it gains); it is released only while the call waits (gk_sched.h)."""
        cdef td_process *p = self._live()
        cdef int c_fd = -1
        if type(fd) is int:
            try:
                c_fd = fd
            except OverflowError:
                pass  # beyond int: no such descriptor, -EBADF
        else:
            _int_arg("fd", fd, None, None)
        cdef uint64_t c_cmd64 = _u64_arg("cmd", cmd)
        if c_cmd64 > 0xFFFFFFFF:
            _int_arg("cmd", cmd, 0, _I32)
        cdef uint32_t c_cmd = <uint32_t>c_cmd64
        cdef uint64_t c_arg = _u64_arg("arg", arg)
        cdef long ret
        gk_caller_holds_lock(1)  # GIL kept; released only if the call waits (gk_sched.h)
        ret = td_ioctl(p, c_fd, c_cmd, c_arg)
        gk_caller_holds_lock(0)
        if ret == TD_RET_TD_EXIT:
            self._exit()
        if ret == TD_RET_HUNG:
            raise _errors.TaskHung(_TASK_HUNG)
        return ret

    cdef object _rw(self, fd, addr, count, offset, bint write):
        cdef td_process *p = self._live()
        _int_arg("fd", fd, None, None)
        cdef uint64_t c_addr = _int_arg("addr", addr, 0, _U64_MAX)
        _int_arg("count", count, None, None)
        _int_arg("offset", offset, None, None)
        cdef int c_fd = fd if -_I31 <= fd <= _I31 else -1
        # negative -> -EINVAL in C; beyond int64 clamps (reads clip to 48, writes need exactly 48)
        cdef int64_t c_count = -1 if count < 0 else min(count, INT64_MAX)
        cdef int64_t c_offset = -1 if offset < 0 else min(offset, INT64_MAX)
        cdef long ret
        gk_caller_holds_lock(1)  # GIL kept; released only if the call waits (gk_sched.h)
        if write:
            ret = td_pwrite(p, c_fd, c_addr, c_count, c_offset)
        else:
            ret = td_pread(p, c_fd, c_addr, c_count, c_offset)
        gk_caller_holds_lock(0)
        return self._check_ret(ret)  # a TD exit, or the <= 6.15 provider oops (pread on configfs too)

    def pread(self, fd, addr, count, offset):
        """pread(fd: int, addr: int, count: int, offset: int) -> int: bytes read or -errno
        (-EINVAL for a negative count or offset, and on the device node)."""
        return self._rw(fd, addr, count, offset, False)

    def pwrite(self, fd, addr, count, offset):
        """pwrite(fd: int, addr: int, count: int, offset: int) -> int: bytes written or -errno."""
        return self._rw(fd, addr, count, offset, True)


cdef bytes _as_path(object path):
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if "\0" in path:
        path = "/\0"  # no path has a NUL: not found
    return path.encode("utf-8", "surrogateescape")


cdef bytes _as_name(object name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    return name.encode("utf-8", "surrogateescape")
