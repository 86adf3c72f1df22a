"""The guest kernel object and its processes in plain Python (layer 2, reference backend); paired with
csrc/guest_kernel.c (the kernel) and the syscall entry points of csrc/tdx_driver.c. docs/CONTRACT.md is
the interface.

The kernel's parts live beside it, each paired by name with its C file:

* ``gk_fault`` (csrc/gk_fault.c): fault knobs, the filters and ``should_fail``'s check order (ref §7),
  the per-task trace, forced TDCALL results;
* ``gk_alloc`` (csrc/gk_alloc.c): the page and slab allocators over guest memory;
* ``gk_usermem`` (csrc/gk_usermem.c): user address spaces and the user copies.

Here: the ``Kernel`` (one driver generation loaded, ``tdxmodel._reference.drivers``), the services the
drivers call (allocators, user copies, TDCALL, mr_lock, all as ``Kernel`` methods), and ``Process``
with its file table and syscalls.

* **TDCALLs** go to the Module unless ``Kernel.force_tdcall`` queued a status for them.
* **mr_lock** (6.16) is a real ``threading.Lock``: an uncontended take never fails; a contended take
  returns -EINTR while the task has a signal pending and otherwise waits, re-checking the signal.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Dict, List, Optional, Tuple

from tdxmodel import abi, errors, profiles
from tdxmodel._reference import drivers as _drivers
from tdxmodel._reference import tsm_report as _tsm
from tdxmodel._reference import gk_usermem as _usermem
from tdxmodel._reference._args import I31, U64 as _U64, check_bool as _check_bool, check_int as _check_int
from tdxmodel._reference.gk_alloc import KERNEL_FIRST_PAGE, PAGE_SIZE, Allocator
from tdxmodel._reference.gk_fault import FaultAttr, Faults, _Task
from tdxmodel._reference.gk_usermem import UserMemory

__all__ = ["FaultAttr", "Kernel", "Process"]
_O_ACCMODE = os.O_ACCMODE


def _squeeze(path: str) -> str:
    """The VFS reads a run of slashes as one (path_lookupat): "report//a" is "report/a"."""
    return re.sub("/{2,}", "/", path) if "//" in path else path


# ---------------------------------------------------------------------------------------------- kernel
class Kernel:
    """Kernel(module: Module, driver: str, *, seed: int | None = 0, fail_nth: int = 0,
    misaligned_report_buf: bool = False)

    The guest kernel with one driver generation loaded (docs/CONTRACT.md "Kernel"). ``fail_nth`` arms
    fail-nth for init; init runs with the documented sweep settings (ignore-gfp-wait N, min-order 0,
    ref §7), the knobs are at their defaults afterwards.
    """

    def __init__(self, module, driver: str, *, seed: Optional[int] = 0, fail_nth: int = 0,
                 misaligned_report_buf: bool = False, fail_decrypt: bool = False,
                 quote_completion=None) -> None:
        from tdxmodel._reference.module import Module
        if not isinstance(module, Module):
            raise TypeError(f"module must be a reference-backend Module, not {type(module).__name__}")
        prof = profiles.get(driver)
        if seed is not None:
            _check_int("seed", seed, 0, _U64)
        _check_int("fail_nth", fail_nth, 0, I31)
        _check_bool("misaligned_report_buf", misaligned_report_buf)
        _check_bool("fail_decrypt", fail_decrypt)
        if fail_decrypt and prof.quote is None:
            raise ValueError(f"fail_decrypt: {driver} has no quote buffer (no configfs-tsm quote path)")
        if misaligned_report_buf and not prof.cached_report_buf:
            raise ValueError(f"misaligned_report_buf: {driver} allocates no report buffer at init "
                             "(only the generations with a cached report buffer, ref §2.5)")
        if prof.quote is None:
            if quote_completion is not None:
                raise ValueError(f"quote_completion: {driver} has no configfs-tsm quote path")
            completion = None
        else:
            completion = (prof.quote.completion if quote_completion is None
                          else profiles.quote_completion(quote_completion))
        pages = module.memory_pages
        if pages <= KERNEL_FIRST_PAGE:
            raise ValueError(f"module has {pages} pages; the kernel needs more than {KERNEL_FIRST_PAGE}")

        self._module = module
        self._driver_name = driver
        self.profile = prof
        self._lock = threading.Lock()          # the lock counters
        rng_seed = int.from_bytes(os.urandom(8), "little") if seed is None else seed
        self._faults = Faults(rng_seed)
        self._fs_uuid = profiles.devtmpfs_uuid(rng_seed)  # FS_IOC_GETFSUUID on the device node
        self._alloc = Allocator(module, self._faults, KERNEL_FIRST_PAGE)
        self._misaligned: Optional[str] = None
        self._mr_outside_holds = False
        self._lock_counters = dict(locks_taken=0, locks_released=0)
        self._resident = 0
        module.set_page_state(KERNEL_FIRST_PAGE * PAGE_SIZE, pages - KERNEL_FIRST_PAGE, "private")

        init_task = _Task()
        init_task._fail_nth = fail_nth
        saved = self._faults.sweep_settings() if fail_nth else None
        self.tsm = None
        try:
            self._driver = _drivers.DRIVER_CLASSES[prof.ops](self, init_task, misaligned_report_buf)
            if prof.quote is not None:  # quote.md §2.2: the quote buffer, then tsm_register
                self.tsm = _tsm.TsmReport(self, init_task, fail_decrypt)
                self.tsm.set_completion(completion)  # how P7 waits; interrupt: register the vector
        finally:
            if saved is not None:
                self._faults.restore_settings(saved)
        self._resident = prof.resident
        self._init_trace = list(init_task._trace)

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
        return self._faults.fault(capability)

    def force_tdcall(self, status: int, *, leaf: Optional[int] = None, count: int = 1) -> None:
        """force_tdcall(status: int, *, leaf: int | None = None, count: int = 1) -> None

        The next ``count`` TDCALLs the kernel issues (of ``leaf``, or any) return ``status`` without
        reaching the module (a model-only injection point, ref §7). A new call replaces the old one."""
        self._faults.force_tdcall(status, leaf, count)

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

    def set_rtmr(self, index: int, value) -> None:
        """set_rtmr(index, value: bytes) -> None: host-side state sync (not a TDX operation):
        Module.set_rtmr, then the 6.16 tsm-mr cache is stale, as after the driver's own extend
        (ref §2.5), so the next read of a measurement file refreshes it."""
        self._module.set_rtmr(index, value)
        if hasattr(self._driver, "stale"):
            self._driver.stale = True  # after the RTMR is set: a refresh in between only repeats

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

    # -- configfs-tsm (quote.md §1.6) ----------------------------------------------------------------
    def _tsm_or_raise(self):
        if self.tsm is None:
            raise ValueError(f"driver {self._driver_name} has no configfs-tsm quote path")
        return self.tsm

    def tsm_unregister(self) -> None:
        """tsm_unregister() -> None: the provider leaves configfs-tsm (module unload); items linger."""
        self._tsm_or_raise().unregister()

    def tsm_register(self) -> int:
        """tsm_register() -> int: 0, or -EBUSY (already registered; 6.16+: items exist)."""
        return self._tsm_or_raise().register()

    def quote_lock_try(self) -> bool:
        """quote_lock_try() -> bool: hold the provider's quote_lock (or the ioctl quote path's) as
        another task would (no waiting)."""
        if self.profile.ioctl_quote is not None:
            return self._driver.quote_lock_try()
        t = self._tsm_or_raise()
        if not t.quote_lock.acquire(blocking=False):
            return False
        self._count_lock(+1)
        t.quote_outside_hold = True
        return True

    def quote_lock_release(self) -> None:
        """quote_lock_release() -> None: release a quote_lock_try hold (ValueError if none)."""
        if self.profile.ioctl_quote is not None:
            return self._driver.quote_lock_release()
        t = self._tsm_or_raise()
        if not getattr(t, "quote_outside_hold", False):
            raise ValueError("quote_lock is not held by quote_lock_try")
        t.quote_outside_hold = False
        self.mutex_unlock(t.quote_lock)

    @property
    def tsm_registered(self) -> bool:
        return self._tsm_or_raise().registered

    def _tsm_set_generations(self, name: str, write_gen: int, read_gen: int) -> None:
        """Model-only (tests): set an item's write and read generation (the wrap guard)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        t = self._tsm_or_raise()
        t.set_generations(name, _check_int("write_gen", write_gen, 0, _U64), _check_int("read_gen", read_gen, 0, _U64))

    @property
    def quote_buf_gpa(self) -> int:
        return self._tsm_or_raise().buf

    @property
    def quote_buf_size(self) -> int:
        return self._tsm_or_raise().q.buf_size

    @property
    def getquote_timeout(self) -> int:
        """The wait loop's poll limit (the kernel's static u32 30, quote.md §2.2); model-only,
        settable so a real-clock test can run a short loop."""
        return self._tsm_or_raise().getquote_timeout

    @getquote_timeout.setter
    def getquote_timeout(self, value: int) -> None:
        t = self._tsm_or_raise()
        t.getquote_timeout = _check_int("getquote_timeout", value, 0, 0xFFFFFFFF)

    @property
    def quote_completion(self):
        """quote_completion -> profiles.QuoteCompletion: how the provider waits (quote.md §2.4-§2.6)."""
        return self._tsm_or_raise().completion

    @property
    def notify_registered(self) -> bool:
        """notify_registered -> bool: the host took the guest's notify vector (interrupt mode)."""
        return self._tsm_or_raise().notify_registered

    @property
    def notify_irqs(self) -> int:
        """notify_irqs -> int: notify vectors the guest received."""
        return self._tsm_or_raise().irqs

    def counters(self) -> Dict[str, int]:
        c = self._alloc.snapshot()
        with self._lock:
            c.update(self._lock_counters)
            c["outstanding"] = c["allocs"] - c["frees"]
            c["resident"] = self._resident
            c["locks_held"] = c["locks_taken"] - c["locks_released"]
        c["locks_leaked"] = int(getattr(self._driver, "quote_leaked", False))  # v4's kept quote_lock
        return c

    def process(self) -> "Process":
        return Process(self)

    def injection_points(self) -> List[str]:
        return list(self.profile.points)

    def init_trace(self) -> List[Tuple[str, str, bool]]:
        """init_trace() -> list[tuple[str, str, bool]]: the injectable points module init passed."""
        return list(self._init_trace)

    def __repr__(self) -> str:
        return f"<reference Kernel {self._driver_name} over {self._module.memory_pages} pages>"

    # -- services the drivers call: fault points, allocators (gk_fault, gk_alloc) -----------------------
    def inject(self, task: _Task, point: str, capability: str, size: int, order: int = 0) -> bool:
        """inject(task, point, capability, size, order=0) -> bool: pass one injection point; True
        means fail (gk_fault.Faults.inject)."""
        return self._faults.inject(task, point, capability, size, order)

    def _misalign(self, target: Optional[str]) -> bool:
        return target is not None and target == self._misaligned

    def kmalloc(self, task: _Task, size: int, point: str, *, zero: bool = False,
                misaligned: bool = False, nofail: bool = False) -> Optional[int]:
        """kmalloc(task, size, point, *, zero=False, misaligned=False) -> int | None

        A slab object (kzalloc with ``zero``); None when failslab fails it (ref §7)."""
        return self._alloc.kmalloc(task, size, point, zero=zero, misaligned=misaligned, nofail=nofail)

    def get_zeroed_page(self, task: _Task, point: str, *, misaligned: bool = False) -> Optional[int]:
        """get_zeroed_page(task, point, *, misaligned=False) -> int | None: one zeroed order-0 page."""
        return self._alloc.alloc_pages(task, 0, point, zero=True, misaligned=misaligned)

    def alloc_pages(self, task: _Task, order: int, point: str, *, zero: bool = False,
                    misaligned: bool = False, nofail: bool = False) -> Optional[int]:
        """alloc_pages(task, order, point, *, zero=False, misaligned=False) -> int | None"""
        return self._alloc.alloc_pages(task, order, point, zero=zero, misaligned=misaligned, nofail=nofail)

    def kfree(self, ptr: int) -> None:
        """kfree(ptr: int) -> None (also frees pages: one free for both allocators)."""
        self._alloc.kfree(ptr)

    # -- kernel memory and TDCALL -------------------------------------------------------------------
    def read(self, gpa: int, n: int) -> bytes:
        return self._module.read_memory(gpa, n)

    def write(self, gpa: int, data: bytes) -> None:
        self._module.write_memory(gpa, data)

    def tdcall(self, leaf: int, rcx: int = 0, rdx: int = 0, r8: int = 0) -> int:
        """tdcall(leaf, rcx=0, rdx=0, r8=0) -> int: the 64-bit status; a forced status first."""
        forced = self._faults.take_forced_tdcall(leaf)
        if forced is not None:
            return forced
        return self._module.tdcall(leaf, rcx, rdx, r8)

    # -- mr_lock (6.16) ---------------------------------------------------------------------------
    def _mr_lock_or_raise(self) -> threading.Lock:
        lock = getattr(self._driver, "mr_lock", None)
        if lock is None:
            raise ValueError(f"driver {self._driver_name} has no mr_lock (only v6.16, ref §2.5)")
        return lock

    def _count_lock(self, delta: int) -> None:
        with self._lock:
            self._lock_counters["locks_taken" if delta > 0 else "locks_released"] += 1

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

    # -- user copies (gk_usermem; ref §7 "User-copy side effects") --------------------------------
    def copy_from_user(self, task: "Process", point: str, kdst: int, uaddr: int, n: int) -> int:
        """copy_from_user(task, point, kdst, uaddr, n) -> int: bytes not copied; the kernel buffer's
        uncopied tail is zero-filled."""
        return _usermem.copy_from_user(self._faults, self._module, task, point, kdst, uaddr, n)

    def copy_in(self, task: "Process", point: str, uaddr: int, n: int) -> bytes:
        """copy_in(task, point, uaddr, n) -> bytes: the user bytes up to the first faulting one, or
        nothing when fail_usercopy fails the point."""
        return _usermem.copy_in(self._faults, task, point, uaddr, n)

    def copy_to_user(self, task: "Process", point: str, uaddr: int, ksrc: int, n: int) -> int:
        """copy_to_user(task, point, uaddr, ksrc, n) -> int: bytes not copied; the copied prefix stays."""
        return _usermem.copy_to_user(self._faults, self._module, task, point, uaddr, ksrc, n)

    def copy_out(self, task: "Process", point: str, uaddr: int, data: bytes) -> int:
        """copy_out(task, point, uaddr, data) -> int: copy_to_user of a driver's stack value: bytes
        not copied; the copied prefix stays."""
        return _usermem.copy_out(self._faults, task, point, uaddr, data)

    def put_user(self, task: "Process", point: str, value: int, uaddr: int) -> int:
        """put_user(task, point, value, uaddr) -> int: 0 or -EFAULT; one 8-byte store, all or nothing."""
        return _usermem.put_user(self._faults, task, point, value, uaddr)


# ---------------------------------------------------------------------------------------------- process
class _OpenFile:
    __slots__ = ("kind", "name", "accmode", "cfs")

    def __init__(self, kind: str, name: str, accmode: int, cfs=None) -> None:
        self.kind, self.name, self.accmode = kind, name, accmode
        self.cfs = cfs  # kind "configfs": the tsm_report.TsmFile


class Process(_Task, UserMemory):
    """A process with its own user address space and file table (docs/CONTRACT.md "Process").

    One task per Process: fail-nth, the signal flag and the trace belong to it; give each thread its
    own Process to inject faults concurrently."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__()
        self._kernel = kernel
        self._init_memory()  # also the lock of the file table
        self._files: Dict[int, _OpenFile] = {}
        self._partial_to_user: Optional[int] = None

    def __repr__(self) -> str:
        return f"<reference Process of {self._kernel!r}: {len(self._pages)} pages, {len(self._files)} fds>"

    def __del__(self) -> None:
        # exit closes every fd: a configfs file commits its inblob as at close (as the core does)
        try:
            files = list(self._files.values())
        except AttributeError:
            return
        for f in files:
            if f.kind == "configfs":
                self._kernel.tsm.release(self, f.cfs)
        self._files = {}

    # -- task knobs --------------------------------------------------------------------------------
    @property
    def fail_nth(self) -> int:
        return self._fail_nth

    @fail_nth.setter
    def fail_nth(self, value: int) -> None:
        self._fail_nth = _check_int("fail_nth", value, 0, I31)

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

    @property
    def signal_at_ns(self) -> Optional[int]:
        """A signal due at this platform-clock time: an interruptible sleep (the quote wait loop)
        that reaches it is cut short there and the signal becomes pending."""
        return self._signal_at

    @signal_at_ns.setter
    def signal_at_ns(self, value: Optional[int]) -> None:
        self._signal_at = None if value is None else _check_int("signal_at_ns", value, 0, _U64 - 1)

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
        _check_int("flags", flags, 0, I31)
        self._begin()
        path = _squeeze(path)
        tsm = self._kernel.tsm
        if tsm is not None and tsm.owns(path):
            cfs = tsm.open(path, flags & _O_ACCMODE)
            if isinstance(cfs, int):
                return cfs
            with self._lock:
                fd = 3
                while fd in self._files:
                    fd += 1
                if fd >= abi.FD_LIMIT:
                    tsm.release(self, cfs)
                    return -abi.EMFILE
                self._files[fd] = _OpenFile("configfs", path, flags & _O_ACCMODE, cfs)
            return fd
        found = self._lookup_path(path)
        if found is None:
            return -abi.ENOENT
        kind, name = found
        accmode = flags & _O_ACCMODE
        if kind == "measurement" and accmode != os.O_RDONLY and not self._kernel.profile.measurement(name).writable:
            return -abi.EACCES
        with self._lock:
            fd = 3  # 0-2 are stdio
            while fd in self._files:
                fd += 1
            if fd >= abi.FD_LIMIT:  # RLIMIT_NOFILE (abi.FD_LIMIT)
                return -abi.EMFILE
            self._files[fd] = _OpenFile(kind, name, accmode)
        return fd

    def _file(self, fd: int) -> Optional[_OpenFile]:
        _check_int("fd", fd)
        return self._files.get(fd)

    def close(self, fd: int) -> int:
        """close(fd: int) -> int: 0 or -EBADF."""
        _check_int("fd", fd)
        self._begin()
        with self._lock:
            f = self._files.pop(fd, None)
        if f is None:
            return -abi.EBADF
        if f.kind == "configfs":  # release: commit, its result ignored (quote.md §1.4)
            self._kernel.tsm.release(self, f.cfs)
        return 0

    def ioctl(self, fd: int, cmd: int, arg: int) -> int:
        """ioctl(fd: int, cmd: int, arg: int) -> int: 0 or -errno, as the driver's step table says.

        ``cmd`` is an unsigned 32-bit number and ``arg`` an unsigned 64-bit address (ValueError
        outside those ranges)."""
        _check_int("fd", fd)
        _check_int("cmd", cmd, 0, (1 << 32) - 1)
        _check_int("arg", arg, 0, _U64)
        self._begin()  # a call refused above made no syscall: the last trace stays
        f = self._file(fd)
        if f is None:
            return -abi.EBADF
        if f.kind != "device":
            return -abi.ENOTTY
        vfs = self._kernel.profile.vfs_command(cmd)
        if vfs is not None:  # do_vfs_ioctl answers it; the driver never sees it (ref §1)
            return self._vfs_ioctl(vfs, arg)
        return self._kernel._driver.ioctl(self, cmd, arg)

    def _vfs_ioctl(self, vfs: "profiles.VfsCommand", arg: int) -> int:
        """What do_vfs_ioctl does on the device node (tdxmodel.profiles.VfsCommand); its user copies
        are not injection points."""
        act = vfs.action
        if act == "ok":
            return 0
        if act == "errno":
            return -vfs.errno
        if act in ("get_int", "fioasync"):
            raw = self._read_user(arg, 4)
            if len(raw) < 4:
                return -abi.EFAULT
            # FIOASYNC: FASYNC would change and the misc device has no fasync (never on, so only on != 0)
            return -abi.ENOTTY if act == "fioasync" and int.from_bytes(raw, "little") else 0
        if act == "put_int":
            if not self._user_accessible(arg, 4, "w"):
                return -abi.EFAULT
            self._write_user(arg, vfs.value.to_bytes(4, "little"))
            return 0
        if act == "fsuuid":
            data = bytes([abi.DEVTMPFS_UUID_LEN]) + self._kernel._fs_uuid
            return -abi.EFAULT if self._write_user(arg, data) < len(data) else 0
        if act == "clone_range":
            raw = self._read_user(arg, abi.FILE_CLONE_RANGE_LEN)
            if len(raw) < abi.FILE_CLONE_RANGE_LEN:
                return -abi.EFAULT
            return self._vfs_clone(int.from_bytes(raw[:8], "little"))
        if act == "clone":
            return self._vfs_clone(arg)
        # dedupe: get_user(dest_count), the PAGE_SIZE bound, memdup_user, then "not a regular file"
        off = abi.FILE_DEDUPE_RANGE_OFF_COUNT
        raw = self._read_user(arg + off, 2) if arg + off + 2 <= _U64 + 1 else b""
        if len(raw) < 2:
            return -abi.EFAULT
        size = abi.FILE_DEDUPE_RANGE_LEN + abi.FILE_DEDUPE_RANGE_INFO_LEN * int.from_bytes(raw, "little")
        if size > PAGE_SIZE:
            return -abi.ENOMEM
        if len(self._read_user(arg, size)) < size:
            return -abi.EFAULT
        return -abi.EINVAL

    def _vfs_clone(self, srcfd: int) -> int:
        """FICLONE's checks up to the first that fails on a character device (fs/remap_range.c)."""
        src = self._files.get(srcfd & 0xFFFFFFFF)  # fdget takes an unsigned int
        if src is None:
            return -abi.EBADF
        return -abi.EINVAL if src.kind == "device" else -abi.EXDEV  # same superblock: not regular

    def pread(self, fd: int, addr: int, count: int, offset: int) -> int:
        """pread(fd: int, addr: int, count: int, offset: int) -> int: bytes read or -errno
        (-EINVAL for a negative count or offset, and on the device node)."""
        return self._rw(fd, addr, count, offset, write=False)

    def pwrite(self, fd: int, addr: int, count: int, offset: int) -> int:
        """pwrite(fd: int, addr: int, count: int, offset: int) -> int: bytes written or -errno."""
        return self._rw(fd, addr, count, offset, write=True)

    def _rw(self, fd: int, addr: int, count: int, offset: int, *, write: bool) -> int:
        _check_int("fd", fd)
        _check_int("addr", addr, 0, _U64)
        _check_int("count", count)
        _check_int("offset", offset)
        self._begin()
        # ksys_pread64 / ksys_pwrite64: a negative position is -EINVAL before the fd is looked up
        # (ref §2.5 last paragraph, [26]); a negative count only after the access mode (rw_verify_area)
        if offset < 0:
            return -abi.EINVAL
        f = self._file(fd)
        if f is None:
            return -abi.EBADF
        if f.accmode == (os.O_RDONLY if write else os.O_WRONLY):
            return -abi.EBADF
        if f.kind == "configfs" and count >= 0:
            return self._cfs_rw(f, addr, count, offset, write)[0]
        if count < 0 or f.kind in ("device", "configfs"):
            return -abi.EINVAL
        drv = self._kernel._driver
        if write:
            return drv.write_measurement(self, f.name, addr, count, offset)
        return drv.read_measurement(self, f.name, addr, count, offset)

    # -- read/write at the file position, and the configfs directory calls --------------------------
    def _cfs_rw(self, f: _OpenFile, addr: int, count: int, pos: int, write: bool):
        tsm = self._kernel.tsm
        ret, pos = (tsm.write if write else tsm.read)(self, f.cfs, addr, count, pos)
        if ret == _tsm.OOPS:
            raise errors.KernelOops("NULL pointer dereference: configfs-tsm provider_show after the "
                                    "provider unregistered (quote.md §1.7)")
        return ret, pos

    def _pos_rw(self, fd: int, addr: int, count: int, write: bool) -> int:
        self._begin()
        f = self._file(fd)
        _check_int("addr", addr, 0, _U64)
        _check_int("count", count)
        if f is None or f.accmode == (os.O_RDONLY if write else os.O_WRONLY):
            return -abi.EBADF
        if count < 0 or f.kind != "configfs":
            return -abi.EINVAL
        ret, f.cfs.pos = self._cfs_rw(f, addr, count, f.cfs.pos, write)
        return ret

    def read(self, fd: int, addr: int, count: int) -> int:
        """read(fd: int, addr: int, count: int) -> int: bytes read at the file position, or -errno
        (configfs files; the device node and measurement files: -EINVAL, use pread)."""
        return self._pos_rw(fd, addr, count, False)

    def write(self, fd: int, addr: int, count: int) -> int:
        """write(fd: int, addr: int, count: int) -> int: bytes written at the file position, or -errno."""
        return self._pos_rw(fd, addr, count, True)

    def _dir_call(self, path: str):
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        self._begin()
        tsm = self._kernel.tsm
        if tsm is None or "\0" in path or not tsm.owns(_squeeze(path)):
            return None
        return tsm

    def mkdir(self, path: str, mode: int = 0o755) -> int:
        """mkdir(path: str, mode: int = 0o755) -> int: 0 or -errno (configfs ignores the mode)."""
        _check_int("mode", mode, 0, 0o7777)
        tsm = self._dir_call(path)
        return -abi.ENOENT if tsm is None else tsm.mkdir(_squeeze(path))

    def rmdir(self, path: str) -> int:
        """rmdir(path: str) -> int: 0 or -errno."""
        tsm = self._dir_call(path)
        return -abi.ENOENT if tsm is None else tsm.rmdir(_squeeze(path))

    def stat(self, path: str):
        """stat(path: str) -> dict {"type": "dir" | "file", "mode": int} or -errno."""
        tsm = self._dir_call(path)
        return -abi.ENOENT if tsm is None else tsm.stat(_squeeze(path))

    def readdir(self, path: str):
        """readdir(path: str) -> list[str] (sorted, without . and ..) or -errno."""
        tsm = self._dir_call(path)
        return -abi.ENOENT if tsm is None else tsm.readdir(_squeeze(path))
