"""configfs-tsm report and the tdx_guest quote provider in plain Python (layer 2, reference backend);
paired with csrc/tsm_report.c, the same steps in the same order.

quote.md §1.3 (generations and the wrap guard), §1.4 (configfs write: buffered per open file, -EFBIG
past 64 bytes, a zero-length write -EFAULT, commit at release with its result ignored), §1.5 (read:
R1-R8, the provider called twice on the first read), §1.6 (mkdir/rmdir), §2.2-§2.4 (the provider
P1-P11, the wait loop as written). Model choices are the C file's (its header comment).
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Dict, List, Optional, Tuple

from tdxmodel import abi, profiles
from tdxmodel._reference.gk_alloc import SLAB_CLASSES

OOPS = "oops"  # a NULL dereference in the emulated kernel (<= 6.15 provider_show after unregister)
ZERO_SIZE = "zero-size"  # kvmemdup(.., 0): ZERO_SIZE_PTR, nothing allocated
_ATTRS = (("generation", "generation", 0o444), ("provider", "provider", 0o444),
          ("inblob", "inblob", 0o200), ("outblob", "outblob", 0o444))
_ATTR = {name: (kind, mode) for name, kind, mode in _ATTRS}
HDR = abi.QUOTE_HDR_LEN


class _RwSem:
    """tsm_rwsem: uninterruptible readers/writer lock (report.c's guard(rwsem_*))."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def read(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def write(self) -> None:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True

    def unlock_read(self) -> None:
        with self._cond:
            self._readers -= 1
            self._cond.notify_all()

    def unlock_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Item:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dead = False
        self.open_files = 0
        self.write_gen = 0
        self.read_gen = 0
        self.inblob = b""
        self.outblob = None      # None, ZERO_SIZE, or (gpa, kind) of the kernel allocation
        self.outblob_len = 0


class TsmFile:
    """One open configfs file (configfs's struct configfs_buffer)."""

    def __init__(self, kind: str, item: Optional[_Item], accmode: int) -> None:
        self.kind, self.item, self.accmode = kind, item, accmode
        self.pos = 0
        self.mutex = threading.Lock()
        self.read_in_progress = self.write_in_progress = False
        self.needs_read_fill = True
        self.bin = b""
        self.text = b""


class TsmReport:
    """The configfs-tsm core, the TDX provider and the quote buffer of one kernel."""

    def __init__(self, kernel, init_task, fail_decrypt: bool) -> None:
        self.k = kernel
        self.p = kernel.profile
        self.q = self.p.quote
        self.report_dir = profiles.TSM_REPORT_DIR
        self.tsm_dir = self.report_dir.rsplit("/", 1)[0]
        self.config_dir = self.tsm_dir.rsplit("/", 1)[0]
        self.rwsem = _RwSem()
        self.items_lock = threading.Lock()
        self.items: List[_Item] = []
        self.registered = False
        self.count = 0
        self.quote_lock = threading.Lock()
        self.getquote_timeout = abi.GETQUOTE_TIMEOUT  # polls (quote.md §2.2)
        self.leaked_pages = 0
        self.completion = self.q.completion
        self.notify_registered = False
        self.irqs = 0
        self._irq_lock = threading.Lock()
        # quote.md §2.2: alloc_pages_exact(PAGE_ALIGN(size), GFP_KERNEL | __GFP_ZERO)
        buf = kernel.alloc_pages(init_task, self.q.buf_order, "quote_buf:alloc_pages", zero=True)
        if buf is None:
            raise _init_error(0)
        if fail_decrypt:  # set_memory_decrypted failed: the pages are leaked on purpose
            self.leaked_pages = 1 << self.q.buf_order
            raise _init_error(self.leaked_pages)
        self.buf = buf
        kernel.module.set_page_state(buf, 1 << self.q.buf_order, "shared")
        self.registered = True  # tsm_register

    # -- locks ------------------------------------------------------------------------------------
    def _rw_read(self) -> None:
        self.rwsem.read()
        self.k._count_lock(+1)

    def _rw_write(self) -> None:
        self.rwsem.write()
        self.k._count_lock(+1)

    def _rw_unlock(self, write: bool) -> None:
        self.k._count_lock(-1)
        (self.rwsem.unlock_write if write else self.rwsem.unlock_read)()

    # -- the shared buffer as the guest reads it -----------------------------------------------------
    def _host(self):
        return self.k.module._vmm

    def _settle(self) -> None:
        h = self._host()
        if h is not None:
            h.clock.poll()

    def _status(self) -> int:
        self._settle()
        return struct.unpack("<Q", self.k.read(self.buf + abi.QUOTE_HDR_OFF_STATUS, 8))[0]

    def _out_len(self) -> int:
        self._settle()
        v = struct.unpack("<I", self.k.read(self.buf + abi.QUOTE_HDR_OFF_OUT_LEN, 4))[0]
        h = self._host()
        if h is not None:
            h.guest_read(self.buf + abi.QUOTE_HDR_OFF_OUT_LEN, 4)
        return v

    # -- kvmemdup / kvfree -------------------------------------------------------------------------
    def _ob_free(self, it: _Item) -> None:
        if it.outblob not in (None, ZERO_SIZE):
            self.k.kfree(it.outblob)
        it.outblob, it.outblob_len = None, 0

    def _kvmemdup(self, task, it: _Item, n: int) -> int:
        k = self.k
        if n == 0:
            it.outblob = ZERO_SIZE
            return 0
        if k.inject(task, "outblob:kvmemdup", "failslab", n):
            return -abi.ENOMEM
        if n <= _SLAB_MAX:
            dst = k.kmalloc(task, n, "outblob:kvmemdup", nofail=True)
        else:
            order = 0
            while (abi.TDX_PAGE_SIZE << order) < n:
                order += 1
            dst = k.alloc_pages(task, order, "outblob:kvmemdup", nofail=True) if order <= _MAX_ORDER else None
        if dst is None:
            return -abi.ENOMEM
        mem = k.module.memory_pages * abi.TDX_PAGE_SIZE
        src = self.buf + HDR
        avail = max(0, mem - src)
        data = k.read(src, min(n, avail)) + bytes(max(0, n - avail))
        k.write(dst, data)
        it.outblob = dst
        return 0

    def _outblob_bytes(self, it: _Item, n: int) -> bytes:
        """n bytes from the outblob: past its allocation into adjacent kernel memory, past guest
        memory as zeros (the C file's header)."""
        mem = self.k.module.memory_pages * abi.TDX_PAGE_SIZE
        avail = max(0, mem - it.outblob)
        return self.k.read(it.outblob, min(n, avail)) + bytes(max(0, n - avail))

    # -- the provider (quote.md §2.3) --------------------------------------------------------------
    @staticmethod
    def _signal_due(task, clock) -> bool:
        """A signal due at a clock time (Process.signal_at_ns) becomes pending once it is reached."""
        at = task._signal_at
        if at is not None and clock is not None and clock.now_ns() >= at:
            task._signal_at = None
            task._signal_pending = True
        return task._signal_pending

    def _sleep_interruptible(self, task, h, ms: int) -> None:
        """msleep_interruptible(ms): msleep's duration, cut short by a signal due during it."""
        c = h.clock
        now = c.now_ns()
        ns = profiles.msleep_ns(ms, self.completion.hz, now)
        at = task._signal_at
        if at is not None and now < at < now + ns:
            ns = at - now
        c.sleep_ns(ns)

    def _msleep(self, h, ms: int) -> None:
        c = h.clock
        c.sleep_ns(profiles.msleep_ns(ms, self.completion.hz, c.now_ns()))

    def _wait_stock(self, task) -> int:
        h = self._host()
        clock = h.clock if h is not None else None
        limit = self.getquote_timeout
        i = 0
        while True:  # §2.4 as written: the increment happens even when the compare fails
            if self._status() != abi.GET_QUOTE_IN_FLIGHT:
                break
            old, i = i, i + 1
            if not old < limit:
                break
            if self._signal_due(task, clock):      # msleep_interruptible returns at once
                return -abi.EINTR
            if clock is not None:
                self._sleep_interruptible(task, h, abi.GETQUOTE_POLL_MS)
            if self._signal_due(task, clock):      # woken by a signal during the sleep
                return -abi.EINTR
        return -abi.ETIMEDOUT if i == limit else 0

    def _wait_poll(self) -> int:
        """read_poll_timeout(status, != IN_FLIGHT, interval, cap): one more check after the cap;
        uninterruptible sleeps (the C file's wait_poll)."""
        comp = self.completion
        h = self._host()
        deadline = (h.clock.now_ns() if h is not None else 0) + comp.cap_ms * 1_000_000
        while True:
            if self._status() != abi.GET_QUOTE_IN_FLIGHT:
                return 0
            if h is None or (comp.cap_ms and h.clock.now_ns() > deadline):
                return 0 if self._status() != abi.GET_QUOTE_IN_FLIGHT else -abi.ETIMEDOUT
            if comp.sleep == "usleep_range":
                h.clock.sleep_ns(comp.interval_ms * 1_000_000)   # the range's upper bound
            else:
                self._msleep(h, comp.interval_ms)
            h = self._host()

    def _notify_irq(self, vector: int) -> None:
        if vector == abi.QUOTE_NOTIFY_VECTOR:
            with self._irq_lock:
                self.irqs += 1

    def _register_notify(self) -> bool:
        r10, _ = self.k.module.tdvmcall(abi.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, abi.QUOTE_NOTIFY_VECTOR)
        self.notify_registered = r10 == abi.TDVMCALL_STATUS_SUCCESS
        return self.notify_registered

    def set_completion(self, comp) -> None:
        self.completion = comp
        if comp.mode == "interrupt":
            self._register_notify()   # at init (quote.md §2.6); retried before a GetQuote if it failed

    def _wait_interrupt(self, task, irqs_before: int) -> int:
        """wait_for_completion_interruptible, no timeout (the C file's wait_interrupt)."""
        while True:
            h = self._host()
            if self.irqs != irqs_before and self._status() != abi.GET_QUOTE_IN_FLIGHT:
                return 0
            if self._signal_due(task, h.clock if h is not None else None):
                return -abi.EINTR
            due = h._next_due_ns() if h is not None else None
            at = task._signal_at                 # a signal due first ends the idle wait there
            if h is not None and at is not None and (due is None or at < due):
                due = at
            if due is not None:
                now = h.clock.now_ns()
                if due > now:
                    h.clock.sleep_ns(due - now)
                else:
                    h.clock.poll()
            else:
                time.sleep(0.0001)     # nothing due: wait for a signal or another task
                if h is not None:
                    h.clock.poll()

    def _header(self) -> None:
        self.k.write(self.buf, bytes(self.q.buf_size))                             # P4
        self.k.write(self.buf, struct.pack("<QQII", abi.GET_QUOTE_CMD_VER, 0, abi.TDX_REPORT_LEN, 0))

    def _report_temporaries(self, task, it: _Item, temps: list) -> int:
        k = self.k
        rd = k.kmalloc(task, abi.TDX_REPORTDATA_LEN, "reportdata:kmalloc")
        if rd is None:
            return -abi.ENOMEM
        temps.append(rd)
        tdr = k.kmalloc(task, abi.TDX_REPORT_LEN, "tdreport:kzalloc", zero=True)
        if tdr is None:
            return -abi.ENOMEM
        temps.append(tdr)
        k.write(rd, it.inblob)
        status = k.tdcall(abi.TDG_MR_REPORT, tdr, rd, 0)
        return -self.p.status_errno(status) if status else 0

    def _report_cached(self, task, it: _Item) -> int:
        k, drv = self.k, self.k._driver
        ret = k.mutex_lock_interruptible(task, drv.mr_lock)
        if ret:
            return ret
        try:
            k.write(drv.buf + abi.TDR_OFF_REPORTDATA, it.inblob)
            status = k.tdcall(abi.TDG_MR_REPORT, drv.buf, drv.buf + abi.TDR_OFF_REPORTDATA, 0)
            if status:
                return -self.p.status_errno(status)
            k.write(self.buf + HDR, k.read(drv.buf, abi.TDX_REPORT_LEN))
            return 0
        finally:
            k.mutex_unlock(drv.mr_lock)

    def _report_new_locked(self, task, it: _Item, temps: list) -> int:
        k, q = self.k, self.q
        if self._status() == abi.GET_QUOTE_IN_FLIGHT:                               # P2
            return -abi.EBUSY
        if len(it.inblob) != abi.TDX_REPORTDATA_LEN:                                # P3
            return -abi.EINVAL
        if self.p.cached_report_buf:                                                # 6.16+: P4, P5
            self._header()
            ret = self._report_cached(task, it)
            if ret:
                return ret
        else:                                                                       # <= 6.15: P5, P4
            ret = self._report_temporaries(task, it, temps)
            if ret:
                return ret
            self._header()
            k.write(self.buf + HDR, k.read(temps[1], abi.TDX_REPORT_LEN))
        irqs_before = self.irqs
        mode = self.completion.mode
        if mode == "interrupt":  # registered at init, or before the first GetQuote (the C file's choice)
            if not self.notify_registered and not self._register_notify():
                return -abi.EIO
            if self._host() is not None:
                self._host()._set_irq(self._notify_irq)
        r10, _ = k.module.tdvmcall(abi.TDVMCALL_GET_QUOTE, self.buf | abi.TDX_GPA_SHARED_BIT, q.buf_size)  # P6
        if r10 != 0:
            return -abi.EIO
        if mode == "poll":                                                          # P7
            ret = self._wait_poll()
        elif mode == "interrupt":
            ret = self._wait_interrupt(task, irqs_before)
        else:
            ret = self._wait_stock(task)
        if ret:
            return ret
        if q.status_check and self._status() != abi.GET_QUOTE_SUCCESS:              # P8 (7.1)
            return -abi.EIO
        if q.out_len_once:                                                          # P9 (7.0)
            out_len = self._out_len()
            if out_len > q.max_out_len:
                return -abi.EFBIG
            ret = self._kvmemdup(task, it, out_len)                                 # P10
            if ret:
                return ret
            it.outblob_len = out_len                                                # P11
        else:                                                                       # read twice
            ret = self._kvmemdup(task, it, self._out_len())                         # P10
            if ret:
                return ret
            it.outblob_len = self._out_len()                                        # P11
        return 0

    def _report_new(self, task, it: _Item) -> int:
        k = self.k
        ret = k.mutex_lock_interruptible(task, self.quote_lock)                     # P1
        if ret:
            return ret
        temps: list = []
        try:
            ret = self._report_new_locked(task, it, temps)
        finally:
            k.mutex_unlock(self.quote_lock)                                         # P11: unlock, free
            for t in temps:
                k.kfree(t)
        return ret

    # -- the tsm core (quote.md §1.5) --------------------------------------------------------------
    def _serve(self, it: _Item, cap: Optional[int]):
        if cap is None:
            return it.outblob_len
        n = min(cap, it.outblob_len)
        if n == 0:
            return b""
        if it.outblob == ZERO_SIZE:
            return OOPS  # the double read made outblob_len > 0 over ZERO_SIZE_PTR
        return self._outblob_bytes(it, n)

    def _report_read(self, task, it: _Item, cap: Optional[int]):
        """tsm_report_read: an int (size, or -errno) for the probe, bytes or -errno for the fill."""
        self._rw_read()
        try:
            if not it.inblob:                                                       # R1
                return -abi.EINVAL
            if it.outblob is not None and it.read_gen == it.write_gen:              # R2
                return self._serve(it, cap)
        finally:
            self._rw_unlock(False)
        self._rw_write()
        try:
            if not self.registered:                                                 # R3
                return -self.q.no_provider_errno
            if not it.inblob:                                                       # R4
                return -abi.EINVAL
            if it.outblob is not None and it.read_gen == it.write_gen:              # R5
                return self._serve(it, cap)
            self._ob_free(it)                                                       # R6
            rc = self._report_new(task, it)
            if rc < 0:
                return rc
            it.read_gen = it.write_gen                                              # R7
            return self._serve(it, cap)
        finally:
            self._rw_unlock(True)

    def _inblob_commit(self, it: _Item, data: bytes) -> int:
        self._rw_write()
        try:
            if it.write_gen == (it.read_gen - 1) % (1 << 64):                       # the wrap guard
                return -abi.EBUSY
            it.write_gen = (it.write_gen + 1) % (1 << 64)
            it.inblob = bytes(data)
            return len(data)
        finally:
            self._rw_unlock(True)

    def _show(self, f: TsmFile):
        self._rw_read()
        try:
            if f.kind == "generation":
                return f"{f.item.write_gen}\n".encode()
            if not self.registered:
                return -abi.ENXIO if self.q.provider_gone_enxio else OOPS
            return (profiles.TSM_PROVIDER_NAME + "\n").encode()
        finally:
            self._rw_unlock(False)

    # -- paths ---------------------------------------------------------------------------------------
    def owns(self, path: str) -> bool:
        return path == self.config_dir or path.startswith(self.config_dir + "/")

    def _find(self, name: str) -> Optional[_Item]:
        return next((it for it in self.items if not it.dead and it.name == name), None)

    def _resolve(self, path: str):
        """(level, item, attr): 0 config dir, 1 tsm dir, 2 report dir, 3 item, 4 attribute; or an errno."""
        if path == self.report_dir or path == self.report_dir + "/":
            return 2, None, None
        if path.startswith(self.report_dir + "/"):
            rest = path[len(self.report_dir) + 1:]
            name, sep, tail = rest.partition("/")
            if len(name.encode("utf-8", "surrogateescape")) > abi.TSM_NAME_MAX:
                return -abi.ENAMETOOLONG, None, None
            if not name:
                return -abi.ENOENT, None, None
            it = self._find(name)
            if it is None:
                return -abi.ENOENT, None, None
            if not sep or tail == "":
                return 3, it, None
            if tail in _ATTR:
                return 4, it, tail
            for a in _ATTR:
                if tail.startswith(a + "/"):
                    return -abi.ENOTDIR, None, None
            return -abi.ENOENT, None, None
        if path == self.tsm_dir:
            return 1, None, None
        if path == self.config_dir:
            return 0, None, None
        return -abi.ENOENT, None, None

    # -- syscalls ------------------------------------------------------------------------------------
    def open(self, path: str, accmode: int):
        with self.items_lock:
            lvl, it, attr = self._resolve(path)
            if lvl < 0:
                return lvl
            if lvl < 4 and accmode != 0:
                return -abi.EISDIR
            if lvl == 4:
                mode = _ATTR[attr][1]
                if (accmode != 0 and not mode & 0o222) or (accmode != 1 and not mode & 0o444):
                    return -abi.EACCES
            f = TsmFile(_ATTR[attr][0] if lvl == 4 else "dir", it, accmode)
            if it is not None:
                it.open_files += 1
            return f

    def _copy_out(self, task, uaddr: int, data: bytes, count: int, f: TsmFile, pos: int) -> Tuple[int, int]:
        if pos >= len(data):
            return 0, pos
        n = min(count, len(data) - pos)
        copied = 0
        if n:
            copied = n - _copy_bytes_to_user(self.k, task, "configfs:copy_to_user", uaddr, data[pos:pos + n])
        return (copied if copied else -abi.EFAULT), pos + copied

    def read(self, task, f: TsmFile, uaddr: int, count: int, pos: int) -> Tuple[object, int]:
        """-> (ret, new pos); ret may be OOPS."""
        if f.kind == "dir":
            return -abi.EISDIR, pos
        if f.accmode == 1:
            return -abi.EBADF, pos
        if count < 0:
            return -abi.EINVAL, pos
        with f.mutex:
            if f.kind == "outblob":
                if f.write_in_progress:
                    return -abi.ETXTBSY, pos
                f.read_in_progress = True
                if f.needs_read_fill:
                    n = -abi.ENOENT if f.item.dead else self._report_read(task, f.item, None)
                    if n <= 0:                                                      # R8
                        return n, pos
                    if n > self.q.outblob_max:
                        return -abi.EFBIG, pos
                    data = -abi.ENOENT if f.item.dead else self._report_read(task, f.item, n)
                    if not isinstance(data, bytes):
                        return data, pos
                    f.bin = data + bytes(n - len(data))  # the read buffer keeps the probe's size
                    f.needs_read_fill = False
                return self._copy_out(task, uaddr, f.bin, count, f, pos)
            if f.kind in ("generation", "provider"):
                if f.needs_read_fill:
                    t = -abi.ENOENT if f.item.dead else self._show(f)
                    if not isinstance(t, bytes):
                        return t, pos
                    f.text = t
                    f.needs_read_fill = False
                return self._copy_out(task, uaddr, f.text, count, f, pos)
            return -abi.EBADF, pos

    def write(self, task, f: TsmFile, uaddr: int, count: int, pos: int) -> Tuple[int, int]:
        if f.kind == "dir" or f.accmode == 0:
            return -abi.EBADF, pos
        if count < 0:
            return -abi.EINVAL, pos
        if f.kind != "inblob":
            return -abi.EBADF, pos
        with f.mutex:
            if f.read_in_progress:
                return -abi.ETXTBSY, pos
            f.write_in_progress = True
            end = pos + count
            if end > len(f.bin):
                if end > abi.TSM_INBLOB_MAX:                                       # §1.4 step 1
                    return -abi.EFBIG, pos
                f.bin = f.bin + bytes(end - len(f.bin))
            data = self.k.copy_in(task, "configfs:copy_from_user", uaddr, count) if count else b""
            copied = len(data)
            # the copy zero-fills what it could not copy (copy_from_user, as the C does)
            f.bin = f.bin[:pos] + data + bytes(count - copied) + f.bin[pos + count:]
            return (copied if copied else -abi.EFAULT), pos + copied

    def release(self, task, f: TsmFile) -> None:
        if f.kind == "inblob" and f.write_in_progress and not f.item.dead:
            self._inblob_commit(f.item, f.bin)  # its result is ignored (quote.md §1.4 step 3)
        with self.items_lock:
            it = f.item
            if it is not None:
                it.open_files -= 1
                if it.open_files == 0 and it.dead:
                    self._item_free(it)

    def _item_free(self, it: _Item) -> None:
        if it in self.items:
            self.items.remove(it)
        self._ob_free(it)

    def mkdir(self, path: str) -> int:
        with self.items_lock:
            lvl, it, attr = self._resolve(path)
            if lvl >= 0:
                return -abi.EEXIST
            if lvl in (-abi.ENAMETOOLONG, -abi.ENOTDIR):
                return lvl
            parent = path.rsplit("/", 1)[0] or "/"
            plvl, _, _ = self._resolve(parent)
            if plvl < 0:
                return -abi.ENOTDIR if plvl == -abi.ENOTDIR else -abi.ENOENT
            if plvl == 4:
                return -abi.ENOTDIR
            if plvl != 2:
                return -abi.EPERM
            self._rw_read()
            try:
                if not self.registered:
                    return -abi.ENXIO
                self.items.append(_Item(path.rsplit("/", 1)[1]))
                self.count += 1
                return 0
            finally:
                self._rw_unlock(False)

    def rmdir(self, path: str) -> int:
        with self.items_lock:
            lvl, it, attr = self._resolve(path)
            if lvl < 0:
                return lvl
            if lvl == 4:
                return -abi.ENOTDIR
            if lvl < 3:
                return -abi.EPERM
            it.dead = True
            self.count -= 1
            if it.open_files == 0:
                self._item_free(it)
            return 0

    def stat(self, path: str):
        with self.items_lock:
            lvl, it, attr = self._resolve(path)
        if lvl < 0:
            return lvl
        if lvl == 4:
            return {"type": "file", "mode": _ATTR[attr][1]}
        return {"type": "dir", "mode": 0o755}

    def readdir(self, path: str):
        with self.items_lock:
            lvl, it, attr = self._resolve(path)
            if lvl < 0:
                return lvl
            if lvl == 4:
                return -abi.ENOTDIR
            if lvl == 0:
                names = [self.tsm_dir.rsplit("/", 1)[1]]
            elif lvl == 1:
                names = [self.report_dir.rsplit("/", 1)[1]]
            elif lvl == 2:
                names = [i.name for i in self.items if not i.dead]
            else:
                names = [a for a, _, _ in _ATTRS]
        return sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape"))

    # -- registration ----------------------------------------------------------------------------
    def unregister(self) -> None:
        self._rw_write()
        self.registered = False
        self._rw_unlock(True)

    def register(self) -> int:
        with self.items_lock:
            self._rw_write()
            try:
                if self.registered or (self.q.counts_items and self.count):
                    return -abi.EBUSY
                self.registered = True
                return 0
            finally:
                self._rw_unlock(True)

    def set_generations(self, name: str, write_gen: int, read_gen: int) -> None:
        with self.items_lock:
            it = self._find(name)
            if it is None:
                raise ValueError(f"no configfs-tsm item {name!r}")
            self._rw_write()
            it.write_gen, it.read_gen = write_gen, read_gen
            self._rw_unlock(True)


_SLAB_MAX = SLAB_CLASSES[-1]   # larger kvmallocs come from whole pages
_MAX_ORDER = 10                # GK_MAX_ORDER: the largest block this model allocates


def _init_error(leaked: int):
    from tdxmodel import errors
    exc = errors.errno_exception(abi.ENOMEM, "tdx_guest init: report or quote buffer")
    exc.leaked_pages = leaked
    return exc


def _copy_bytes_to_user(k, task, point: str, uaddr: int, data: bytes) -> int:
    """copy_to_user from a host buffer (configfs's read buffer): bytes NOT copied."""
    n = len(data)
    if k.inject(task, point, "fail_usercopy", 1):
        return n
    limit = n
    if task._partial_to_user is not None:
        limit = min(n, task._partial_to_user)
        task._partial_to_user = None
    return n - task._write_user(uaddr, data[:limit])
