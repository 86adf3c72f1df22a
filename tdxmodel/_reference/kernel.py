"""The guest kernel model in plain Python (layer 2, reference backend). docs/CONTRACT.md is the interface.

What lives here, and the rules both backends follow (the Cython core mirrors them exactly):

* **Allocators** over guest physical memory. The kernel owns guest pages ``16..memory_pages-1`` of its
  Module, set ``"private"`` at init; a kernel pointer *is* the GPA (pa(ptr) == ptr), so the module's
  REPORT writes straight into kernel buffers. The page allocator hands out order-n blocks aligned to
  their size (first fit from the lowest page). ``kmalloc`` rounds up to the Linux size classes
  ``SLAB_CLASSES`` and carves one-page slabs, so power-of-two objects are naturally aligned.
  ``kmalloc`` objects are filled with ``abi.SLAB_POISON_INUSE`` (so a disclosure of uninitialised memory
  is visible); ``kzalloc`` and ``get_zeroed_page`` zero. ``kfree`` leaves the bytes as they are.
  Counters count the allocator calls drivers make (a slab's backing page is not a page allocation).
* **Fault injection** in the kernel's vocabulary (ref §7): the capability filters (ignore-gfp-wait for
  failslab and fail_page_alloc, min-order for fail_page_alloc) run first and hide a point from
  ``should_fail`` entirely, fail-nth included; then ``should_fail``'s order: per-task fail-nth,
  probability 0, task filter, times 0, space budget, interval, random draw. Each failure decrements
  ``times`` unless it is -1 (fail-nth failures too, as the kernel does). Every point a syscall passes is
  recorded in ``Process.last_trace()`` as ``(point, capability, failed)``, filtered or not.
* **User memory**: page-granular mappings with permissions; ``copy_from_user`` / ``copy_to_user`` return
  the number of bytes not copied, copy byte-exactly up to the first faulting byte, and
  ``copy_from_user`` zero-fills the uncopied tail of the kernel buffer. An injected ``fail_usercopy``
  copies nothing (ref §7 "User-copy side effects"). ``put_user`` of 8 bytes is all or nothing.
* **TDCALLs** go to the Module unless ``Kernel.force_tdcall`` queued a status for them.
* **mr_lock** (6.16) is a real ``threading.Lock``: an uncontended take never fails; a contended take
  returns -EINTR while the task has a signal pending and otherwise waits, re-checking the signal.

The three driver generations are in ``tdxmodel._reference.drivers``, one class each.
"""

from __future__ import annotations

import os
import threading
from typing import Dict, List, Optional, Tuple

from tdxmodel import abi, profiles
from tdxmodel._reference import drivers as _drivers

PAGE_SIZE = abi.TDX_PAGE_SIZE
#: CONTRACT: pages 0..3 are the host's; the kernel's allocator owns 16..memory_pages-1.
KERNEL_FIRST_PAGE = abi.KERNEL_FIRST_PAGE
#: Linux's kmalloc caches (kmalloc-8 ... kmalloc-4096, plus kmalloc-96 and kmalloc-192).
SLAB_CLASSES = abi.SLAB_CLASSES
#: force_misaligned / misaligned_report_buf: the allocation is returned this far past its alignment.
MISALIGN_OFFSET = 8
_U64 = (1 << 64) - 1
_PROTS = ("", "r", "w", "rw")
_O_ACCMODE = os.O_ACCMODE


def _check_int(name: str, value, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------- faults
class _SplitMix64:
    """The fault draw's generator, specified so both backends draw the same numbers: SplitMix64
    (state += 0x9E3779B97F4A7C15, then the two xor-shift-multiply rounds), one state per capability,
    starting at ``(seed + capability_index) mod 2**64``; a draw is ``next() % 100``."""

    __slots__ = ("state",)

    def __init__(self, state: int) -> None:
        self.state = state & _U64

    def below_100(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _U64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
        return (z ^ (z >> 31)) % 100


class FaultAttr:
    """One fault capability's debugfs knobs (ref §7) with the kernel's defaults.

    ``probability`` (0..100), ``interval`` (>= 1), ``times`` (-1 or >= 0), ``space`` (>= 0), ``verbose``
    (0..2), ``task_filter`` (bool). ``ignore_gfp_wait`` exists for failslab and fail_page_alloc (default
    True) and ``min_order`` for fail_page_alloc (default 1); on the other capabilities they read as
    False / 0 and setting them raises ValueError. Not constructible from Python: use ``Kernel.fault``.
    """

    def __init__(self, _capability: str, _seed: int, _lock: threading.Lock) -> None:
        if _capability not in abi.FAULT_CAPABILITIES:
            raise ValueError(f"capability must be one of {', '.join(abi.FAULT_CAPABILITIES)}")
        self._capability = _capability
        self._lock = _lock
        self._probability = abi.FAULT_DEFAULTS["probability"]
        self._interval = abi.FAULT_DEFAULTS["interval"]
        self._times = abi.FAULT_DEFAULTS["times"]
        self._space = abi.FAULT_DEFAULTS["space"]
        self._verbose = abi.FAULT_DEFAULTS["verbose"]
        self._task_filter = False
        self._ignore_gfp_wait = abi.FAULT_IGNORE_GFP_WAIT_DEFAULT.get(_capability, False)
        self._min_order = abi.FAULT_PAGE_MIN_ORDER_DEFAULT if _capability == "fail_page_alloc" else 0
        self._count = 0  # calls seen by the interval check
        self._rng = _SplitMix64(_seed + abi.FAULT_CAPABILITIES.index(_capability))

    def __repr__(self) -> str:
        return (f"FaultAttr({self._capability}: probability={self._probability} interval={self._interval} "
                f"times={self._times} space={self._space} ignore_gfp_wait={self._ignore_gfp_wait} "
                f"min_order={self._min_order} task_filter={self._task_filter})")

    @property
    def capability(self) -> str:
        return self._capability

    @property
    def probability(self) -> int:
        return self._probability

    @probability.setter
    def probability(self, value: int) -> None:
        self._probability = _check_int("probability", value, 0, 100)

    @property
    def interval(self) -> int:
        return self._interval

    @interval.setter
    def interval(self, value: int) -> None:
        self._interval = _check_int("interval", value, 1, _U64)

    @property
    def times(self) -> int:
        return self._times

    @times.setter
    def times(self, value: int) -> None:
        self._times = _check_int("times", value, -1, (1 << 31) - 1)

    @property
    def space(self) -> int:
        return self._space

    @space.setter
    def space(self, value: int) -> None:
        self._space = _check_int("space", value, 0, (1 << 31) - 1)

    @property
    def verbose(self) -> int:
        return self._verbose

    @verbose.setter
    def verbose(self, value: int) -> None:
        self._verbose = _check_int("verbose", value, 0, 2)

    @property
    def task_filter(self) -> bool:
        return self._task_filter

    @task_filter.setter
    def task_filter(self, value: bool) -> None:
        self._task_filter = _check_bool("task_filter", value)

    @property
    def ignore_gfp_wait(self) -> bool:
        return self._ignore_gfp_wait

    @ignore_gfp_wait.setter
    def ignore_gfp_wait(self, value: bool) -> None:
        if self._capability not in abi.FAULT_IGNORE_GFP_WAIT_DEFAULT:
            raise ValueError(f"ignore_gfp_wait: {self._capability} has no such knob (ref §7)")
        self._ignore_gfp_wait = _check_bool("ignore_gfp_wait", value)

    @property
    def min_order(self) -> int:
        return self._min_order

    @min_order.setter
    def min_order(self, value: int) -> None:
        if self._capability != "fail_page_alloc":
            raise ValueError(f"min_order: {self._capability} has no such knob (only fail_page_alloc, ref §7)")
        self._min_order = _check_int("min_order", value, 0, 10)

    # -- should_fail (ref §7), called with the kernel's fault lock held -----------------------------
    def _fire(self) -> bool:
        if self._times > 0:  # atomic_dec_not_zero unless -1
            self._times -= 1
        return True

    def _should_fail(self, task: "_Task", size: int) -> bool:
        # 1. per-task fail-nth bypasses everything below
        if task._fail_nth > 0:
            task._fail_nth -= 1
            return self._fire() if task._fail_nth == 0 else False
        # 2. probability 0: nothing fails
        if self._probability == 0:
            return False
        # 3. task filter (make-it-fail)
        if self._task_filter and not task.make_it_fail:
            return False
        # 4. times exhausted
        if self._times == 0:
            return False
        # 5. stack filter: not modelled. 6. space budget
        if self._space > size:
            self._space -= size
            return False
        # 7. interval
        if self._interval > 1:
            self._count += 1
            if self._count % self._interval:
                return False
        # 8. random draw below probability
        if self._probability <= self._rng.below_100():
            return False
        return self._fire()


class _Task:
    """What the kernel knows of the calling task: fail-nth, make-it-fail, signals, the trace."""

    def __init__(self) -> None:
        self._fail_nth = 0
        self.make_it_fail = False
        self.signal_pending = False
        self._trace: List[Tuple[str, str, bool]] = []


# ---------------------------------------------------------------------------------------------- kernel
class Kernel:
    """Kernel(module: Module, driver: str, *, seed: int | None = 0, fail_nth: int = 0,
    misaligned_report_buf: bool = False)

    The guest kernel with one driver generation loaded (docs/CONTRACT.md "Kernel"). ``fail_nth`` arms
    fail-nth for init; init runs with the documented sweep settings (ignore-gfp-wait N, min-order 0,
    ref §7), the knobs are at their defaults afterwards.
    """

    def __init__(self, module, driver: str, *, seed: Optional[int] = 0, fail_nth: int = 0,
                 misaligned_report_buf: bool = False) -> None:
        from tdxmodel._reference.module import Module
        if not isinstance(module, Module):
            raise TypeError(f"module must be a reference-backend Module, not {type(module).__name__}")
        prof = profiles.get(driver)
        if seed is not None:
            _check_int("seed", seed, 0, _U64)
        _check_int("fail_nth", fail_nth, 0, (1 << 31) - 1)
        _check_bool("misaligned_report_buf", misaligned_report_buf)
        if misaligned_report_buf and not prof.cached_report_buf:
            raise ValueError(f"misaligned_report_buf: {driver} allocates no report buffer at init "
                             "(only the generations with a cached report buffer, ref §2.5)")
        pages = module.memory_pages
        if pages <= KERNEL_FIRST_PAGE:
            raise ValueError(f"module has {pages} pages; the kernel needs more than {KERNEL_FIRST_PAGE}")

        self._module = module
        self._driver_name = driver
        self.profile = prof
        self._lock = threading.Lock()          # allocator and counters
        self._fault_lock = threading.Lock()    # fault knobs and their state
        rng_seed = int.from_bytes(os.urandom(8), "little") if seed is None else seed
        self._faults = {cap: FaultAttr(cap, rng_seed, self._fault_lock) for cap in abi.FAULT_CAPABILITIES}
        self._forced: Optional[Tuple[int, Optional[int], int]] = None  # (status, leaf, remaining)
        self._misaligned: Optional[str] = None
        self._mr_outside_holds = False
        self._counters = dict(allocs=0, frees=0, slab_allocs=0, page_allocs=0, locks_taken=0,
                              locks_released=0)
        self._resident = 0
        # page allocator: one byte per kernel page, 1 = in use
        self._first = KERNEL_FIRST_PAGE
        self._page_used = bytearray(pages - KERNEL_FIRST_PAGE)
        # slab: class -> {page gpa: [free offsets]}; live allocations: ptr -> (kind, base, class/order)
        self._slabs: Dict[int, Dict[int, List[int]]] = {c: {} for c in SLAB_CLASSES}
        self._live: Dict[int, Tuple[str, int, int]] = {}
        module.set_page_state(KERNEL_FIRST_PAGE * PAGE_SIZE, pages - KERNEL_FIRST_PAGE, "private")

        init_task = _Task()
        init_task._fail_nth = fail_nth
        saved = self._sweep_settings() if fail_nth else None
        try:
            self._driver = _drivers.DRIVER_CLASSES[prof.ops](self, init_task, misaligned_report_buf)
        finally:
            if saved is not None:
                self._restore_settings(saved)
        self._resident = prof.resident

    def _sweep_settings(self):
        slab, page = self._faults["failslab"], self._faults["fail_page_alloc"]
        saved = (slab._ignore_gfp_wait, page._ignore_gfp_wait, page._min_order)
        slab._ignore_gfp_wait = page._ignore_gfp_wait = False
        page._min_order = 0
        return saved

    def _restore_settings(self, saved) -> None:
        slab, page = self._faults["failslab"], self._faults["fail_page_alloc"]
        slab._ignore_gfp_wait, page._ignore_gfp_wait, page._min_order = saved

    # -- public API ------------------------------------------------------------------------------
    @property
    def driver(self) -> str:
        return self._driver_name

    @property
    def module(self):
        return self._module

    @property
    def device_path(self) -> str:
        return self.profile.device_path

    def fault(self, capability: str) -> FaultAttr:
        """fault(capability: str) -> FaultAttr: the live knobs of one capability (ref §7)."""
        if capability not in self._faults:
            raise ValueError(f"capability must be one of {', '.join(abi.FAULT_CAPABILITIES)}, "
                             f"not {capability!r}")
        return self._faults[capability]

    def force_tdcall(self, status: int, *, leaf: Optional[int] = None, count: int = 1) -> None:
        """force_tdcall(status: int, *, leaf: int | None = None, count: int = 1) -> None

        The next ``count`` TDCALLs the kernel issues (of ``leaf``, or any) return ``status`` without
        reaching the module (a model-only injection point, ref §7). A new call replaces the old one."""
        _check_int("status", status, 0, _U64)
        if leaf is not None:
            _check_int("leaf", leaf, 0, _U64)
        _check_int("count", count, 1, (1 << 31) - 1)
        with self._lock:
            self._forced = (status, leaf, count)

    def force_misaligned(self, target: Optional[str]) -> None:
        """force_misaligned(target: str | None) -> None

        While set, the driver's allocations of ``target`` ("tdreport": v4's page / v6.2's kzalloc;
        "reportdata": the kmalloc(64)) come back 8 bytes past their natural alignment, so the module
        answers OPERAND_INVALID with operand RCX resp. RDX (ref §4.3 rows 1-2). v6.16 makes no per-call
        allocation (use ``misaligned_report_buf`` or ``force_tdcall``): ValueError."""
        if target is not None and target not in ("tdreport", "reportdata"):
            raise ValueError(f"target must be 'tdreport', 'reportdata' or None, not {target!r}")
        if target is not None and self.profile.cached_report_buf:
            raise ValueError(f"target: {self._driver_name} allocates no per-call buffer (ref §2.5); use "
                             "misaligned_report_buf or force_tdcall")
        self._misaligned = target

    def mr_lock_try(self) -> bool:
        """mr_lock_try() -> bool: hold 6.16's mr_lock as another task would (no waiting)."""
        lock = self._mr_lock_or_raise()
        if not lock.acquire(blocking=False):
            return False
        self._count_lock(+1)
        self._mr_outside_holds = True
        return True

    def mr_lock_release(self) -> None:
        """mr_lock_release() -> None: release a hold taken with mr_lock_try (ValueError if not held)."""
        lock = self._mr_lock_or_raise()
        if not self._mr_outside_holds:  # never release a hold a driver call owns
            raise ValueError("mr_lock is not held by mr_lock_try")
        self._mr_outside_holds = False
        self.mutex_unlock(lock)

    def counters(self) -> Dict[str, int]:
        with self._lock:
            c = dict(self._counters)
            c["outstanding"] = c["allocs"] - c["frees"]
            c["resident"] = self._resident
            c["locks_held"] = c["locks_taken"] - c["locks_released"]
        return c

    def process(self) -> "Process":
        return Process(self)

    def injection_points(self) -> List[str]:
        return list(self.profile.points)

    def __repr__(self) -> str:
        return f"<reference Kernel {self._driver_name} over {self._module.memory_pages} pages>"

    # -- fault injection (called by drivers and user copies) --------------------------------------
    def inject(self, task: _Task, point: str, capability: str, size: int, order: int = 0) -> bool:
        """inject(task, point, capability, size, order=0) -> bool: pass one injection point; True
        means fail. All of this driver's allocations are GFP_KERNEL (they may sleep), so
        ignore-gfp-wait hides them (ref §7 "Filters applied first")."""
        attr = self._faults[capability]
        with self._fault_lock:
            eligible = True
            if capability in abi.FAULT_IGNORE_GFP_WAIT_DEFAULT and attr._ignore_gfp_wait:
                eligible = False
            if capability == "fail_page_alloc" and order < attr._min_order:
                eligible = False
            failed = eligible and attr._should_fail(task, size)
        task._trace.append((point, capability, failed))
        return failed

    # -- allocators -------------------------------------------------------------------------------
    def _alloc_pages_locked(self, order: int) -> Optional[int]:
        n = 1 << order
        used = self._page_used
        first = self._first
        start = (-first) % n  # index of the first naturally aligned pfn
        for i in range(start, len(used) - n + 1, n):
            if not any(used[i:i + n]):
                used[i:i + n] = b"\x01" * n
                return (first + i) * PAGE_SIZE
        return None

    def _free_pages_locked(self, gpa: int, order: int) -> None:
        i = gpa // PAGE_SIZE - self._first
        self._page_used[i:i + (1 << order)] = bytes(1 << order)

    def _slab_alloc_locked(self, size_class: int) -> Optional[int]:
        slabs = self._slabs[size_class]
        for page, free in slabs.items():
            if free:
                return page + free.pop(0)
        page = self._alloc_pages_locked(0)
        if page is None:
            return None
        free = list(range(0, PAGE_SIZE - size_class + 1, size_class))
        slabs[page] = free
        return page + free.pop(0)

    def _slab_free_locked(self, base: int, size_class: int) -> None:
        page = base - base % PAGE_SIZE
        free = self._slabs[size_class][page]
        free.append(base - page)
        free.sort()
        if len(free) == PAGE_SIZE // size_class:  # slab empty: give the page back
            del self._slabs[size_class][page]
            self._free_pages_locked(page, 0)

    def _misalign(self, target: Optional[str]) -> bool:
        return target is not None and target == self._misaligned

    def kmalloc(self, task: _Task, size: int, point: str, *, zero: bool = False,
                misaligned: bool = False) -> Optional[int]:
        """kmalloc(task, size, point, *, zero=False, misaligned=False) -> int | None

        A slab object (kzalloc with ``zero``); None when failslab fails it (ref §7)."""
        extra = MISALIGN_OFFSET if misaligned else 0
        size_class = next((c for c in SLAB_CLASSES if c >= size), None)
        if extra and size_class is not None:  # room for the offset, same alignment: a power of two up
            size_class = next((c for c in SLAB_CLASSES if c >= 2 * size_class and c & (c - 1) == 0), None)
        if size_class is None or size <= 0:
            raise ValueError(f"kmalloc: size {size} is outside the slab classes of this model")
        if self.inject(task, point, "failslab", size_class):
            return None
        with self._lock:
            base = self._slab_alloc_locked(size_class)
            if base is None:
                return None
            ptr = base + extra
            self._live[ptr] = ("slab", base, size_class)
            self._counters["allocs"] += 1
            self._counters["slab_allocs"] += 1
        fill = b"\x00" if zero else bytes([abi.SLAB_POISON_INUSE])
        self._module.write_memory(base, fill * size_class)
        return ptr

    def get_zeroed_page(self, task: _Task, point: str, *, misaligned: bool = False) -> Optional[int]:
        """get_zeroed_page(task, point, *, misaligned=False) -> int | None: one zeroed order-0 page."""
        return self.alloc_pages(task, 0, point, zero=True, misaligned=misaligned)

    def alloc_pages(self, task: _Task, order: int, point: str, *, zero: bool = False,
                    misaligned: bool = False) -> Optional[int]:
        """alloc_pages(task, order, point, *, zero=False, misaligned=False) -> int | None

        2**order pages aligned to their size; unzeroed pages hold the slab poison too."""
        if self.inject(task, point, "fail_page_alloc", 1 << order, order):  # space counts pages (mm/fail_page_alloc.c)
            return None
        with self._lock:
            base = self._alloc_pages_locked(order)
            if base is None:
                return None
            ptr = base + (MISALIGN_OFFSET if misaligned else 0)
            self._live[ptr] = ("page", base, order)
            self._counters["allocs"] += 1
            self._counters["page_allocs"] += 1
        fill = b"\x00" if zero else bytes([abi.SLAB_POISON_INUSE])
        self._module.write_memory(base, fill * (PAGE_SIZE << order))
        return ptr

    def kfree(self, ptr: int) -> None:
        """kfree(ptr: int) -> None (also frees pages: one free for both allocators)."""
        with self._lock:
            kind, base, size = self._live.pop(ptr)  # KeyError: a driver bug, never user input
            if kind == "slab":
                self._slab_free_locked(base, size)
            else:
                self._free_pages_locked(base, size)
            self._counters["frees"] += 1

    # -- kernel memory and TDCALL -------------------------------------------------------------------
    def read(self, gpa: int, n: int) -> bytes:
        return self._module.read_memory(gpa, n)

    def write(self, gpa: int, data: bytes) -> None:
        self._module.write_memory(gpa, data)

    def tdcall(self, leaf: int, rcx: int = 0, rdx: int = 0, r8: int = 0) -> int:
        """tdcall(leaf, rcx=0, rdx=0, r8=0) -> int: the 64-bit status; a forced status first."""
        with self._lock:
            forced = self._forced
            if forced is not None and (forced[1] is None or forced[1] == leaf):
                status, want, left = forced
                self._forced = (status, want, left - 1) if left > 1 else None
                return status
        return self._module.tdcall(leaf, rcx, rdx, r8)

    # -- mr_lock (6.16) ---------------------------------------------------------------------------
    def _mr_lock_or_raise(self) -> threading.Lock:
        lock = getattr(self._driver, "mr_lock", None)
        if lock is None:
            raise ValueError(f"driver {self._driver_name} has no mr_lock (only v6.16, ref §2.5)")
        return lock

    def _count_lock(self, delta: int) -> None:
        with self._lock:
            self._counters["locks_taken" if delta > 0 else "locks_released"] += 1

    def mutex_lock_interruptible(self, task: _Task, lock: threading.Lock) -> int:
        """mutex_lock_interruptible(task, lock) -> int: 0, or -EINTR when contended with a signal
        pending (counted in locks_taken)."""
        if not lock.acquire(blocking=False):  # the fast path never looks at signals
            while True:
                if task.signal_pending:
                    return -abi.EINTR
                if lock.acquire(timeout=0.001):
                    break
        self._count_lock(+1)
        return 0

    def mutex_unlock(self, lock: threading.Lock) -> None:
        self._count_lock(-1)
        lock.release()

    # -- user copies (ref §7 "User-copy side effects") ----------------------------------------------
    def copy_from_user(self, task: "Process", point: str, kdst: int, uaddr: int, n: int) -> int:
        """copy_from_user(task, point, kdst, uaddr, n) -> int: bytes not copied; the kernel buffer's
        uncopied tail is zero-filled."""
        data = self.copy_in(task, point, uaddr, n)
        self.write(kdst, data + bytes(n - len(data)))
        return n - len(data)

    def copy_in(self, task: "Process", point: str, uaddr: int, n: int) -> bytes:
        """copy_in(task, point, uaddr, n) -> bytes: the user bytes up to the first faulting one, or
        nothing when fail_usercopy fails the point (a buffer sysfs keeps, or copy_from_user's source)."""
        if self.inject(task, point, "fail_usercopy", 1):
            return b""
        return task._read_user(uaddr, n)

    def copy_to_user(self, task: "Process", point: str, uaddr: int, ksrc: int, n: int) -> int:
        """copy_to_user(task, point, uaddr, ksrc, n) -> int: bytes not copied; the copied prefix stays."""
        if self.inject(task, point, "fail_usercopy", 1):
            return n
        limit = n
        if task._partial_to_user is not None:  # model-only genuine mid-copy fault, one shot
            limit = min(n, task._partial_to_user)
            task._partial_to_user = None
        copied = task._write_user(uaddr, self.read(ksrc, limit))
        return n - copied

    def put_user(self, task: "Process", point: str, value: int, uaddr: int) -> int:
        """put_user(task, point, value, uaddr) -> int: 0 or -EFAULT; one 8-byte store, all or nothing."""
        if self.inject(task, point, "fail_usercopy", 1):
            return -abi.EFAULT
        data = (value & _U64).to_bytes(8, "little")
        if not task._user_accessible(uaddr, 8, "w"):
            return -abi.EFAULT
        task._write_user(uaddr, data)
        return 0


# ---------------------------------------------------------------------------------------------- process
class _OpenFile:
    __slots__ = ("kind", "name", "accmode")

    def __init__(self, kind: str, name: str, accmode: int) -> None:
        self.kind, self.name, self.accmode = kind, name, accmode


class Process(_Task):
    """A process with its own user address space and file table (docs/CONTRACT.md "Process").

    One task per Process: fail-nth, the signal flag and the trace belong to it; give each thread its
    own Process to inject faults concurrently."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__()
        self._kernel = kernel
        self._lock = threading.Lock()
        self._pages: Dict[int, bytearray] = {}
        self._prot: Dict[int, str] = {}
        self._files: Dict[int, _OpenFile] = {}
        self._partial_to_user: Optional[int] = None

    def __repr__(self) -> str:
        return f"<reference Process of {self._kernel!r}: {len(self._pages)} pages, {len(self._files)} fds>"

    # -- task knobs --------------------------------------------------------------------------------
    @property
    def fail_nth(self) -> int:
        return self._fail_nth

    @fail_nth.setter
    def fail_nth(self, value: int) -> None:
        self._fail_nth = _check_int("fail_nth", value, 0, (1 << 31) - 1)

    @property
    def make_it_fail(self) -> bool:
        return self._make_it_fail

    @make_it_fail.setter
    def make_it_fail(self, value: bool) -> None:
        self._make_it_fail = _check_bool("make_it_fail", value)

    @property
    def signal_pending(self) -> bool:
        return self._signal_pending

    @signal_pending.setter
    def signal_pending(self, value: bool) -> None:
        self._signal_pending = _check_bool("signal_pending", value)

    def last_trace(self) -> List[Tuple[str, str, bool]]:
        return list(self._trace)

    def fault_user_copy(self, kind: Optional[str], at: int = 0) -> None:
        """fault_user_copy(kind: str | None, at: int = 0) -> None

        ``"partial_to_user"``: the next copy_to_user faults after ``at`` bytes, leaving that prefix
        in user memory (ref §7: a genuine mid-copy fault); None cancels."""
        if kind is None:
            self._partial_to_user = None
            return
        if kind != "partial_to_user":
            raise ValueError(f"kind must be 'partial_to_user' or None, not {kind!r}")
        self._partial_to_user = _check_int("at", at, 0, _U64)

    # -- address space -----------------------------------------------------------------------------
    @staticmethod
    def _range(addr: int, length: int) -> range:
        _check_int("addr", addr, 0, _U64)
        _check_int("length", length, 1, _U64)
        if addr % PAGE_SIZE:
            raise ValueError(f"addr 0x{addr:x} is not page-aligned")
        if addr + length > _U64 + 1:
            raise ValueError("addr + length is beyond the 64-bit address space")
        return range(addr // PAGE_SIZE, (addr + length + PAGE_SIZE - 1) // PAGE_SIZE)

    @staticmethod
    def _check_prot(prot: str) -> str:
        if prot not in _PROTS:
            raise ValueError(f"prot must be one of '', 'r', 'w', 'rw', not {prot!r}")
        return prot

    def mmap(self, addr: int, length: int, prot: str) -> None:
        """mmap(addr: int, length: int, prot: str) -> None: map zero-filled pages (no overlap)."""
        pages = self._range(addr, length)
        self._check_prot(prot)
        with self._lock:
            if any(p in self._pages for p in pages):
                raise ValueError(f"mmap: [0x{addr:x}, +{length}) overlaps an existing mapping")
            for p in pages:
                self._pages[p] = bytearray(PAGE_SIZE)
                self._prot[p] = prot

    def mprotect(self, addr: int, length: int, prot: str) -> None:
        """mprotect(addr: int, length: int, prot: str) -> None: every page must be mapped."""
        pages = self._range(addr, length)
        self._check_prot(prot)
        with self._lock:
            if any(p not in self._pages for p in pages):
                raise ValueError(f"mprotect: [0x{addr:x}, +{length}) is not wholly mapped")
            for p in pages:
                self._prot[p] = prot

    def munmap(self, addr: int, length: int) -> None:
        """munmap(addr: int, length: int) -> None: unmapped pages in the range are ignored."""
        pages = self._range(addr, length)
        with self._lock:
            for p in pages:
                self._pages.pop(p, None)
                self._prot.pop(p, None)

    def _host_range_check(self, addr: int, n: int) -> None:
        _check_int("addr", addr, 0, _U64)
        _check_int("n", n, 0, _U64)
        if addr + n > _U64 + 1:
            raise ValueError("addr + n is beyond the 64-bit address space")
        for p in range(addr // PAGE_SIZE, (addr + n + PAGE_SIZE - 1) // PAGE_SIZE):
            if p not in self._pages:
                raise ValueError(f"addr: page 0x{p * PAGE_SIZE:x} is not mapped")

    def poke(self, addr: int, data: bytes) -> None:
        """poke(addr: int, data: bytes) -> None: host-side write ignoring protection."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        data = bytes(data)
        self._host_range_check(addr, len(data))
        self._store(addr, data)

    def peek(self, addr: int, n: int) -> bytes:
        """peek(addr: int, n: int) -> bytes: host-side read ignoring protection."""
        self._host_range_check(addr, n)
        return self._load(addr, n)

    def _store(self, addr: int, data: bytes) -> None:
        off = 0
        while off < len(data):
            a = addr + off
            p, o = divmod(a, PAGE_SIZE)
            take = min(PAGE_SIZE - o, len(data) - off)
            self._pages[p][o:o + take] = data[off:off + take]
            off += take

    def _load(self, addr: int, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            p, o = divmod(addr + len(out), PAGE_SIZE)
            take = min(PAGE_SIZE - o, n - len(out))
            out += self._pages[p][o:o + take]
        return bytes(out)

    def _accessible_prefix(self, uaddr: int, n: int, perm: str) -> int:
        """How many bytes from uaddr are accessible with ``perm`` before the first faulting byte."""
        done = 0
        while done < n:
            a = uaddr + done
            if a > _U64:
                break
            p, o = divmod(a, PAGE_SIZE)
            prot = self._prot.get(p)
            if prot is None or perm not in prot:
                break
            done += min(PAGE_SIZE - o, n - done)
        return done

    def _user_accessible(self, uaddr: int, n: int, perm: str) -> bool:
        return self._accessible_prefix(uaddr, n, perm) == n

    def _read_user(self, uaddr: int, n: int) -> bytes:
        return self._load(uaddr, self._accessible_prefix(uaddr, n, "r"))

    def _write_user(self, uaddr: int, data: bytes) -> int:
        k = self._accessible_prefix(uaddr, len(data), "w")
        self._store(uaddr, data[:k])
        return k

    # -- syscalls ----------------------------------------------------------------------------------
    def _begin(self) -> None:
        self._trace = []

    def _lookup_path(self, path: str) -> Optional[Tuple[str, str]]:
        if path == self._kernel.device_path:
            return ("device", path)
        prof = self._kernel.profile
        for d in prof.measurement_dirs:
            prefix = d + "/"
            if path.startswith(prefix) and prof.measurement(path[len(prefix):]) is not None:
                return ("measurement", path[len(prefix):])
        return None

    def open(self, path: str, flags: int = os.O_RDWR) -> int:
        """open(path: str, flags: int = os.O_RDWR) -> int: fd >= 3, -ENOENT, or -EACCES (writing a
        0444 measurement file)."""
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        _check_int("flags", flags, 0, (1 << 31) - 1)
        self._begin()
        found = self._lookup_path(path)
        if found is None:
            return -abi.ENOENT
        kind, name = found
        accmode = flags & _O_ACCMODE
        if kind == "measurement" and accmode != os.O_RDONLY and not self._kernel.profile.measurement(name).writable:
            return -abi.EACCES
        with self._lock:
            fd = 3
            while fd in self._files:
                fd += 1
            self._files[fd] = _OpenFile(kind, name, accmode)
        return fd

    def _file(self, fd: int) -> Optional[_OpenFile]:
        _check_int("fd", fd)
        return self._files.get(fd)

    def close(self, fd: int) -> int:
        """close(fd: int) -> int: 0 or -EBADF."""
        self._begin()
        _check_int("fd", fd)
        with self._lock:
            return 0 if self._files.pop(fd, None) is not None else -abi.EBADF

    def ioctl(self, fd: int, cmd: int, arg: int) -> int:
        """ioctl(fd: int, cmd: int, arg: int) -> int: 0 or -errno, as the driver's step table says.

        ``cmd`` is an unsigned 32-bit number and ``arg`` an unsigned 64-bit address (ValueError
        outside those ranges)."""
        self._begin()
        f = self._file(fd)
        _check_int("cmd", cmd, 0, (1 << 32) - 1)
        _check_int("arg", arg, 0, _U64)
        if f is None:
            return -abi.EBADF
        if f.kind != "device":
            return -abi.ENOTTY
        return self._kernel._driver.ioctl(self, cmd, arg)

    def pread(self, fd: int, addr: int, count: int, offset: int) -> int:
        """pread(fd: int, addr: int, count: int, offset: int) -> int: bytes read or -errno
        (-EINVAL for a negative count or offset, and on the device node)."""
        return self._rw(fd, addr, count, offset, write=False)

    def pwrite(self, fd: int, addr: int, count: int, offset: int) -> int:
        """pwrite(fd: int, addr: int, count: int, offset: int) -> int: bytes written or -errno."""
        return self._rw(fd, addr, count, offset, write=True)

    def _rw(self, fd: int, addr: int, count: int, offset: int, *, write: bool) -> int:
        self._begin()
        f = self._file(fd)
        _check_int("addr", addr, 0, _U64)
        _check_int("count", count)
        _check_int("offset", offset)
        if f is None:
            return -abi.EBADF
        if f.accmode == (os.O_RDONLY if write else os.O_WRONLY):
            return -abi.EBADF
        if count < 0 or offset < 0 or f.kind == "device":
            return -abi.EINVAL
        drv = self._kernel._driver
        if write:
            return drv.write_measurement(self, f.name, addr, count, offset)
        return drv.read_measurement(self, f.name, addr, count, offset)
