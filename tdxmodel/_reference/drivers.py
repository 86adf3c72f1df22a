"""The tdx_guest driver code, one class per ops of ``tdxmodel.profiles`` (``Profile.ops``), step by step
against the reference tables. Command numbers, request offsets, the errno map, the injection points
and what stays resident come from the kernel's profile (``kernel.profile``).

Layer 2 (reference backend). Each ``ioctl`` reads top to bottom like its table: the comment ``# §2.4 #3``
names the row of ref §2.4 the next lines implement. The kernel services (allocators, user copies,
TDCALL, mr_lock) are ``tdxmodel._reference.kernel.Kernel`` methods; ``task`` is the calling Process.

Every exit path frees what it allocated, except what a generation documents it keeps (6.16's report
buffer, ``Profile.resident``). A TD exit raised by the module (``tdxmodel.errors.TdExit``: only possible when
someone unmapped the kernel's own pages) propagates after the same cleanup.
"""

from __future__ import annotations

import struct
import threading
from typing import Optional
import time

from tdxmodel import abi, errors

_REPORT_LEN = abi.TDX_REPORT_LEN
_REPORTDATA_LEN = abi.TDX_REPORTDATA_LEN


class _TsmRwsem:
    """tsm-mr's own rwsem (ref §2.5 "Read"): readers share it, a writer excludes everyone. The read side
    is interruptible (a signal pending while it would wait: -EINTR); the write side is killable, and the
    model's signal is not a fatal one, so a writer waits. Uncontended takes never look at signals."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False

    def down_read_interruptible(self, task) -> int:
        with self._cond:
            while self._writer:
                if task.signal_pending:
                    return -abi.EINTR
                self._cond.wait(0.001)  # re-check the signal another thread may deliver
            self._readers += 1
        return 0

    def up_read(self) -> None:
        with self._cond:
            self._readers -= 1
            self._cond.notify_all()

    def down_write_killable(self) -> None:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait(0.001)
            self._writer = True

    def downgrade_write(self) -> None:
        with self._cond:
            self._writer = False
            self._readers = 1
            self._cond.notify_all()

    def up_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


NEVER = (1 << 64) - 1
TASK_HUNG = ("mutex_lock(quote_lock) never returns: a TDX_CMD_GEN_QUOTE returned to user space "
             "holding it (v4 3/3's early returns, ref §2.2)")


class _Entry:
    """A request of an ioctl quote path: the kmalloc'd entry (downstream) and its shared buffer."""

    __slots__ = ("obj", "buf", "buf_len", "order", "valid", "done")

    def __init__(self) -> None:
        self.obj = self.buf = None
        self.buf_len = self.order = 0
        self.valid = True
        self.done = 0   # struct completion's done count


class _IoctlQuote:
    """The ioctl quote paths' shared machinery (csrc/tdx_driver.c "the ioctl quote paths"): quote_lock
    (mutex_lock, never interrupted), the per-request shared buffer, the notify IRQ and the wait."""

    def _iq_init(self, kernel) -> None:
        self.quote_lock = threading.Lock()
        self.quote_outside_hold = False
        self.quote_leaked = False             # v4: a call returned to user space holding quote_lock
        self._work = False
        self._done_lock = threading.Lock()   # the completions' done counts
        self.quote_list = []
        self.v4_done = _Entry()               # v4's global req_compl
        self._irq_host = None
        # boot: SetupEventNotifyInterrupt with the profile's vector, a failure only logged; then the
        # handler (ref §2.2 v4 2/3; td-partitioning tdx_arch_init + request_irq)
        kernel.module.tdvmcall(abi.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, self.p.ioctl_quote.notify_vector)
        h = kernel.module._vmm
        if h is not None:
            h._set_irq(self._irq)
            self._irq_host = h

    # -- quote_lock ----------------------------------------------------------------------------------
    def _qlock(self) -> None:
        while not self.quote_lock.acquire(timeout=0.001):
            pass  # mutex_lock: a signal does not end the wait
        self.k._count_lock(+1)

    def _qtrylock(self) -> bool:
        if not self.quote_lock.acquire(blocking=False):
            return False
        self.k._count_lock(+1)
        return True

    def _qrelease(self) -> None:
        self.k._count_lock(-1)
        self.quote_lock.release()

    def _qunlock(self) -> None:
        self._qrelease()
        self._run_work()  # the work the IRQ queued meanwhile runs now

    # -- the shared buffer ---------------------------------------------------------------------------
    def _status(self, e: _Entry) -> int:
        return struct.unpack("<Q", self.k.read(e.buf + abi.QUOTE_HDR_OFF_STATUS, 8))[0]

    def _entry_alloc(self, task, length: int, with_obj: bool):
        """alloc_quote_entry: the entry (downstream), then dma_alloc_coherent(PAGE_ALIGN(len)), zeroed
        and shared; None is -ENOMEM (an order above the largest block fails before any point)."""
        k, e = self.k, _Entry()
        if with_obj:
            e.obj = k.kmalloc(task, abi.QUOTE_ENTRY_SIZE, "quote_entry:kmalloc")
            if e.obj is None:
                return None
        e.buf_len = (length + abi.TDX_PAGE_SIZE - 1) & ~(abi.TDX_PAGE_SIZE - 1) & ((1 << 64) - 1)
        while e.buf_len and (abi.TDX_PAGE_SIZE << e.order) < e.buf_len and e.order <= _MAX_ORDER:
            e.order += 1
        if e.buf_len == 0 or length > e.buf_len or e.order > _MAX_ORDER:
            e.buf = None
        else:
            e.buf = k.alloc_pages(task, e.order, "quote_buf:dma_alloc_coherent", zero=True)
        if e.buf is None:
            if e.obj is not None:
                k.kfree(e.obj)
            return None
        k.module.set_page_state(e.buf, 1 << e.order, "shared")
        return e

    def _entry_free(self, e: _Entry) -> None:
        """dma_free_coherent: back to private, then freed (whether or not the host still owns it)."""
        self.k.module.set_page_state(e.buf, 1 << e.order, "private")
        self.k.kfree(e.buf)
        if e.obj is not None:
            self.k.kfree(e.obj)

    def _hcall(self, e: _Entry) -> int:
        r10, _ = self.k.module.tdvmcall(abi.TDVMCALL_GET_QUOTE, e.buf | abi.TDX_GPA_SHARED_BIT, e.buf_len)
        return r10

    # -- the notify IRQ and the work -------------------------------------------------------------------
    def _irq(self, vector: int) -> None:
        if vector != self.p.ioctl_quote.notify_vector:
            return
        if self.p.ioctl_quote.parallel:
            self._work = True          # queue_work(quote_wq, &quote_work)
            self._run_work()
        else:
            with self._done_lock:      # v4: complete(&req_compl) whatever the buffer says
                self.v4_done.done += 1

    def _run_work(self) -> None:
        """quote_callback_handler: under quote_lock, complete every entry the host is done with, or
        free it if its caller left."""
        while self._work:
            if not self._qtrylock():
                return                 # the holder runs it at unlock
            self._work = False
            try:
                for e in list(self.quote_list):
                    if self._status(e) == abi.GET_QUOTE_IN_FLIGHT:
                        continue
                    if e.valid:
                        with self._done_lock:
                            e.done += 1
                    else:
                        self.quote_list.remove(e)
                        self._entry_free(e)
            finally:
                self._qrelease()

    def _take_done(self, e: _Entry) -> bool:
        with self._done_lock:
            if e.done:
                e.done -= 1
                return True
        return False

    def _wait(self, task, e: _Entry, timeout_ns: int = 0) -> int:
        """0 when the completion came, -EINTR on a signal, 1 when timeout_ns (0: none) passed. The vCPU
        idles: a virtual clock jumps to the host's next completion (or the timeout)."""
        h = self.k.module._vmm
        start = h.clock.now_ns() if h is not None else 0
        # saturated as the clock is (2**64-2): a timeout past the clock's end still expires there
        deadline = min(start + timeout_ns, NEVER - 1)
        while True:
            self._run_work()
            if self._take_done(e):
                return 0
            if task._signal_pending:
                return -abi.EINTR
            h = self.k.module._vmm
            if h is None:
                time.sleep(5e-5)
                continue
            clk = h.clock
            now = clk.now_ns()
            if timeout_ns and now >= deadline:
                return 1
            nxt = h._next_due_ns()
            nxt = NEVER if nxt is None else nxt
            if timeout_ns:
                nxt = min(nxt, deadline)
            if clk.kind == "virtual" and nxt != NEVER:
                if nxt > now:
                    clk.sleep_ns(nxt - now)
                else:
                    clk.poll()
            elif clk.kind == "real":
                step = 1_000_000 if nxt == NEVER or nxt - now >= 1_000_000 else max(nxt - now, 0)
                clk.sleep_ns(step if nxt > now else 0)
            else:
                time.sleep(5e-5)      # nothing due: wait for a signal or another thread
                clk.poll()

    # -- the quote_lock test hooks -------------------------------------------------------------------
    def quote_lock_try(self) -> bool:
        if not self._qtrylock():
            return False
        self.quote_outside_hold = True
        return True

    def quote_lock_release(self) -> None:
        if not self.quote_outside_hold:
            raise ValueError("quote_lock is not held by quote_lock_try")
        self.quote_outside_hold = False
        self._qunlock()


class DriverV4(_IoctlQuote):
    """The v4 patch as posted on 22 Apr 2022 (ref §2.2), defects included: an unknown command returns
    0, and a TDCALL failure put_user()s the masked status into user bytes 0..7 and returns -EIO
    whatever put_user returned."""

    OPS = "v4"

    def __init__(self, kernel, task, misaligned_report_buf: bool) -> None:
        self.k = kernel  # init: platform registration cannot fail in the model
        self.p = kernel.profile
        self._iq_init(kernel)

    def ioctl(self, task, cmd: int, arg: int) -> int:
        req = self.p.report
        if cmd == self.p.command("get_quote").value:
            return self._gen_quote(task, self.p.command("get_quote"), arg)  # TDX_CMD_GEN_QUOTE (3/3)
        if cmd != req.value:
            return -self.p.unknown_cmd_errno  # §2.2 dispatch: v4 only logs "not supported": 0
        k = self.k
        # §2.2 #1: 64-byte REPORTDATA from the slab, not zeroed
        reportdata = k.kmalloc(task, _REPORTDATA_LEN, "reportdata:kmalloc",
                               misaligned=k._misalign("reportdata"))
        if reportdata is None:
            return -abi.ENOMEM
        # §2.2 #2: one zeroed page for the TDREPORT (page alignment covers the 1024-byte rule)
        tdreport = k.get_zeroed_page(task, "tdreport:get_zeroed_page", misaligned=k._misalign("tdreport"))
        if tdreport is None:
            k.kfree(reportdata)
            return -abi.ENOMEM
        try:
            # §2.2 #3: REPORTDATA from user offset 0
            if k.copy_from_user(task, "reportdata:copy_from_user", reportdata,
                                arg + req.field("reportdata").offset, _REPORTDATA_LEN):
                return -abi.EFAULT
            # §2.2 #4: tdx_mcall_tdreport; on failure the masked status goes to user bytes 0..7 and
            # the put_user result is overwritten: -EIO either way
            # The wrapper returns status & 0xFFFFFFFF00000000 and the driver tests only that, so a
            # nonzero status with bits 63:32 clear would pass as success (no module status does).
            wrapped = k.tdcall(abi.TDG_MR_REPORT, tdreport, reportdata, 0) & abi.LINUX_V4_STATUS_MASK
            if wrapped:
                k.put_user(task, "status:put_user", wrapped, arg + self.p.status_writeback.offset)
                return -abi.EIO
            # §2.2 #5: the TDREPORT over user bytes 0..1023, in place
            if k.copy_to_user(task, "tdreport:copy_to_user", arg + req.field("tdreport").offset,
                              tdreport, _REPORT_LEN):
                return -abi.EFAULT
            # §2.2 #6
            return 0
        finally:
            k.kfree(tdreport)
            k.kfree(reportdata)


    def _gen_quote(self, task, req, arg: int) -> int:
        """v4 3/3 tdx_get_tdquote as posted (ref §2.2), defects kept: the early returns leave
        quote_lock held, a timed-out or interrupted request frees the buffer the host still owns, and
        PAGE_ALIGN(len) bytes go back before the status is checked."""
        k = self.k
        # 1: quote_lock (mutex_lock): held for good by a call that returned with it, the task hangs
        if not self._qtrylock():
            if self.quote_leaked:
                raise errors.TaskHung(TASK_HUNG)
            self._qlock()
        # 2: reinit_completion(&req_compl)
        with self._done_lock:
            self.v4_done.done = 0
        # 3: the 24-byte request; a fault returns with quote_lock held
        raw = k.copy_in(task, "quote_req:copy_from_user", arg, req.request_len)
        if len(raw) != req.request_len:
            self.quote_leaked = True
            return -abi.EFAULT
        ubuf = int.from_bytes(raw[0:8], "little")
        length = int.from_bytes(raw[8:16], "little")
        f = req.field("timeout")
        timeout_ms = int.from_bytes(raw[f.offset:f.end], "little")
        # 4: len <= 0 || timeout <= 0 (unsigned: == 0) -> -EINVAL, quote_lock held
        if length == 0 or timeout_ms == 0:
            self.quote_leaked = True
            return -abi.EINVAL
        try:
            # 5: dma_alloc_coherent(PAGE_ALIGN(len), GFP_KERNEL | __GFP_ZERO)
            e = self._entry_alloc(task, length, with_obj=False)
            if e is None:
                return -abi.ENOMEM
            try:
                # 6: len bytes from req.buf
                if k.copy_from_user(task, "quote_data:copy_from_user", e.buf, ubuf, length):
                    return -abi.EFAULT
                # 7: a nonzero R10 is put_user()ed as a long to arg + 0, the result overwritten: -EIO
                r10 = self._hcall(e)
                if r10 != abi.TDVMCALL_STATUS_SUCCESS:
                    k.put_user(task, "quote_err:put_user", r10, arg)
                    return -abi.EIO
                # 8: wait_for_completion_interruptible_timeout(msecs_to_jiffies(timeout)) (HZ = 1000,
                # a choice); <= 0 -> -EIO, and the buffer is freed below while the host may own it
                if self._wait(task, self.v4_done, timeout_ms * 1_000_000):
                    return -abi.EIO
                # 9: PAGE_ALIGN(len) bytes back, before the status check
                if k.copy_to_user(task, "quote_data:copy_to_user", ubuf, e.buf, e.buf_len):
                    return -abi.EFAULT
                # 10: status != 0 -> -EIO
                return 0 if self._status(e) == abi.GET_QUOTE_SUCCESS else -abi.EIO
            finally:
                self._entry_free(e)      # 11
        finally:
            self._qunlock()


class DriverV62:
    """Upstream v6.2-v6.15, TDX_CMD_GET_REPORT0 on struct tdx_report_req (ref §2.4). No lock."""

    OPS = "v6_2"

    def __init__(self, kernel, task, misaligned_report_buf: bool) -> None:
        self.k = kernel  # init: a TDX guest CPU is always present in the model
        self.p = kernel.profile

    def ioctl(self, task, cmd: int, arg: int) -> int:
        req = self.p.report
        if cmd != req.value:
            return -self.p.unknown_cmd_errno  # §2.4 dispatch
        k = self.k
        # §2.4 #1: kmalloc(64), not zeroed
        reportdata = k.kmalloc(task, _REPORTDATA_LEN, "reportdata:kmalloc",
                               misaligned=k._misalign("reportdata"))
        if reportdata is None:
            return -abi.ENOMEM
        # §2.4 #2: kzalloc(1024)
        tdreport = k.kmalloc(task, _REPORT_LEN, "tdreport:kzalloc", zero=True,
                             misaligned=k._misalign("tdreport"))
        if tdreport is None:
            k.kfree(reportdata)
            return -abi.ENOMEM
        try:
            # §2.4 #3: 64 bytes from arg+0
            if k.copy_from_user(task, "reportdata:copy_from_user", reportdata,
                                arg + req.field("reportdata").offset, _REPORTDATA_LEN):
                return -abi.EFAULT
            # §2.4 #4: TDG.MR.REPORT; status>>32 == 0xC0000100 -> -EINVAL, other nonzero -> -EIO
            status = k.tdcall(abi.TDG_MR_REPORT, tdreport, reportdata, 0)
            if status != abi.TDX_SUCCESS:
                return -self.p.status_errno(status)
            # §2.4 #5: 1024 bytes to arg+64
            if k.copy_to_user(task, "tdreport:copy_to_user", arg + req.field("tdreport").offset,
                              tdreport, _REPORT_LEN):
                return -abi.EFAULT
            # §2.4 #6
            return 0
        finally:
            k.kfree(tdreport)
            k.kfree(reportdata)


class DriverV616:
    """v6.16+: the report buffer allocated at init, mr_lock, -ENXIO/-EBUSY/-EINTR and the measurement
    files (ref §2.5)."""

    OPS = "v6_16"

    def __init__(self, kernel, task, misaligned_report_buf: bool) -> None:
        self.k = kernel
        self.p = kernel.profile
        self.mr_lock = threading.Lock()
        self.stale = True  # §2.5 "Read": the cache starts stale (read and written under tsm_rwsem)
        self.tsm_rwsem = _TsmRwsem()
        self._last_status = abi.TDX_SUCCESS
        # §2.5 init #1: tdx_mr_init allocates the buffer, then one REPORT with zero REPORTDATA;
        # a failure aborts module load (we raise the errno load fails with)
        buf = kernel.kmalloc(task, _REPORT_LEN, "report_buf:kzalloc", zero=True,
                             misaligned=misaligned_report_buf)
        if buf is None:
            raise errors.errno_exception(abi.ENOMEM, "tdx_guest init: report buffer")
        self.buf = buf
        ret = self._do_report(task)
        if ret:
            kernel.kfree(buf)
            raise errors.errno_exception(-ret, "tdx_guest init: TDG.MR.REPORT", status=self._last_status)
        # §2.5 init #1.3 tsm_mr_create_attribute_group: both kzallocs are made before either is checked
        attrs = kernel.kmalloc(task, abi.TSM_MR_ATTRS_SIZE, "tsm_mr_attrs:kzalloc", zero=True)
        ctx = kernel.kmalloc(task, abi.TSM_MR_CTX_SIZE, "tsm_mr_ctx:kzalloc", zero=True)
        if attrs is None or ctx is None:
            for ptr in (attrs, ctx, buf):
                if ptr is not None:
                    kernel.kfree(ptr)
            raise errors.errno_exception(abi.ENOMEM, "tdx_guest init: tsm-mr attribute group")
        # §2.5 init #2 misc_register cannot fail in the model; #3-#4 (the quote buffer, tsm registration)
        # follow in tsm_report.TsmReport (quote.md §2.2)

    # -- tdx_do_report / tdx_do_extend ---------------------------------------------------------------
    def _report_locked(self) -> int:
        """§2.5 #3: TDG.MR.REPORT with RCX = pa(buf), RDX = pa(buf+128); -ENXIO / -EBUSY / -EIO."""
        status = self.k.tdcall(abi.TDG_MR_REPORT, self.buf, self.buf + abi.TDR_OFF_REPORTDATA, 0)
        self._last_status = status
        return -self.p.status_errno(status) if status != abi.TDX_SUCCESS else 0

    def _do_report(self, task) -> int:
        """tdx_do_report(NULL, NULL): the refresh (and init) form, REPORTDATA as it sits at buf+128."""
        ret = self.k.mutex_lock_interruptible(task, self.mr_lock)
        if ret:
            return ret
        try:
            return self._report_locked()
        finally:
            self.k.mutex_unlock(self.mr_lock)

    def ioctl(self, task, cmd: int, arg: int) -> int:
        req = self.p.report
        if cmd != req.value:
            return -self.p.unknown_cmd_errno
        k = self.k
        # §2.5 #1: take mr_lock interruptibly
        ret = k.mutex_lock_interruptible(task, self.mr_lock)
        if ret:
            return ret
        try:
            # §2.5 #2: 64 bytes from arg+0 to buf+128 (a fault may leave them partly copied or zeroed);
            # skipped for a NULL arg (sockptr_is_null): the REPORT uses the stale REPORTDATA
            if arg != 0 and k.copy_from_user(task, "reportdata:copy_from_user", self.buf + abi.TDR_OFF_REPORTDATA,
                                arg + req.field("reportdata").offset, _REPORTDATA_LEN):
                return -abi.EFAULT
            # §2.5 #3
            ret = self._report_locked()
            if ret:
                return ret
            # §2.5 #4: 1024 bytes from the cache to arg+64
            if k.copy_to_user(task, "tdreport:copy_to_user", arg + req.field("tdreport").offset,
                              self.buf, _REPORT_LEN):
                return -abi.EFAULT
            return 0
        finally:
            # §2.5 #5: unlock
            k.mutex_unlock(self.mr_lock)

    # -- measurement files (§2.5 "Measurement files") -----------------------------------------------
    def _kernfs_buf(self, task, size: int) -> Optional[int]:
        """kernfs' bounce buffer (§2.5 "Read" #1, "Write" #1): kmalloc(size); kmalloc(0) is
        ZERO_SIZE_PTR (0 here, no point); kmalloc(4097) is kmalloc-8k, beyond the model's slab
        classes: failslab sees 8 KiB and an order-1 page allocation stands in (abi.KMALLOC_8K)."""
        k = self.k
        if size == 0:
            return 0
        if size <= abi.TDX_PAGE_SIZE:
            return k.kmalloc(task, size, "kernfs_buf:kmalloc")
        if k.inject(task, "kernfs_buf:kmalloc", "failslab", abi.KMALLOC_8K):
            return None
        return k.alloc_pages(task, 1, "kernfs_buf:kmalloc", nofail=True)

    def read_measurement(self, task, name: str, uaddr: int, count: int, offset: int) -> int:
        buf = self._kernfs_buf(task, min(count, abi.TDX_PAGE_SIZE))
        if buf is None:
            return -abi.ENOMEM
        try:
            return self._read_measurement(task, name, uaddr, count, offset)
        finally:
            if buf:
                self.k.kfree(buf)

    def _read_measurement(self, task, name: str, uaddr: int, count: int, offset: int) -> int:
        mr = self.p.measurement(name)
        field_offset, live = mr.tdr_offset, mr.live
        size = abi.MEASUREMENT_LEN
        if offset >= size or count == 0:  # sysfs: nothing to read past the end
            return 0
        # §2.5 "Read" #3: tsm-mr's rwsem for reading, interruptibly
        ret = self.tsm_rwsem.down_read_interruptible(task)
        if ret:
            return ret
        try:
            if live and self.stale:  # #4: drop it, take it for writing, refresh if still stale
                self.tsm_rwsem.up_read()
                self.tsm_rwsem.down_write_killable()
                try:
                    if self.stale:
                        ret = self._do_report(task)  # mr_lock only here (-EINTR), then the REPORT
                        if not ret:
                            self.stale = False
                finally:
                    self.tsm_rwsem.downgrade_write()
        finally:
            self.tsm_rwsem.up_read()
        if ret:  # #5: a refresh error is returned instead of the bytes
            return ret
        n = min(count, size - offset)
        if self.k.copy_to_user(task, "measurement:copy_to_user", uaddr,
                               self.buf + field_offset + offset, n):
            return -abi.EFAULT  # a short copy is -EFAULT; its prefix stays in user memory
        return n

    def write_measurement(self, task, name: str, uaddr: int, count: int, offset: int) -> int:
        # §2.5 "Write" #1: kernfs kmallocs min(count, PAGE_SIZE) + 1 (the terminating NUL) first
        buf = self._kernfs_buf(task, min(count, abi.TDX_PAGE_SIZE) + 1)
        if buf is None:
            return -abi.ENOMEM
        try:
            return self._write_measurement(task, name, uaddr, count, offset)
        finally:
            self.k.kfree(buf)

    def _write_measurement(self, task, name: str, uaddr: int, count: int, offset: int) -> int:
        mr = self.p.measurement(name)  # only the RTMRs open for writing (0644)
        index = (mr.tdr_offset - abi.TDR_OFF_RTMR0) // abi.TDX_SHA384_LEN
        k = self.k
        size = abi.MEASUREMENT_LEN
        # §2.5 "Write" #1: kernfs copies min(count, PAGE_SIZE) bytes before any size check; a short
        # copy is -EFAULT whatever the offset (a copy of 0 bytes passes no usercopy point)
        n = min(count, abi.TDX_PAGE_SIZE)
        data = k.copy_in(task, "measurement:copy_from_user", uaddr, n) if n else b""
        if len(data) != n:
            return -abi.EFAULT
        # #2 sysfs: offset >= 48 -> -EFBIG; count clipped to 48 - offset; 0 -> 0
        if offset >= size:
            return -abi.EFBIG
        n = min(n, size - offset)
        if n == 0:
            return 0
        # #3 tsm-mr: offset != 0 or clipped count != 48 -> -EINVAL
        if offset != 0 or n != size:
            return -abi.EINVAL
        data = data[:size]
        # #4: tsm-mr's rwsem for writing (killable); #5 tdx_do_extend: mr_lock (-EINTR), the 48 bytes
        # to buf+128, leaf 2 with RCX = pa(buf+128), RDX = idx
        self.tsm_rwsem.down_write_killable()
        try:
            ret = k.mutex_lock_interruptible(task, self.mr_lock)
            if ret:
                return ret
            try:
                k.write(self.buf + abi.TDR_OFF_REPORTDATA, data)
                status = k.tdcall(abi.TDG_MR_RTMR_EXTEND, self.buf + abi.TDR_OFF_REPORTDATA, index)
                if status != abi.TDX_SUCCESS:
                    return -self.p.status_errno(status)
                self.stale = True  # #6: a successful write makes the cache stale
            finally:
                k.mutex_unlock(self.mr_lock)
        finally:
            self.tsm_rwsem.up_write()
        return size


class DriverIntelDownstream(_IoctlQuote, DriverV62):
    """Intel's out-of-tree tdx-guest driver (quote.md §2.6; intel/td-partitioning tdx-guest.c
    @1b3c1894): GET_REPORT0 exactly as 6.2 (tdx_get_report0), plus VERIFY_REPORT, EXTEND_RTMR and
    GET_QUOTE (parallel requests, completion by the notify IRQ, no timeout)."""

    OPS = "intel_downstream"

    def __init__(self, kernel, task, misaligned_report_buf: bool) -> None:
        super().__init__(kernel, task, misaligned_report_buf)
        self._iq_init(kernel)

    def ioctl(self, task, cmd: int, arg: int) -> int:
        verify, extend = self.p.command("verify_report"), self.p.command("extend_rtmr")
        quote = self.p.command("get_quote")
        if cmd == verify.value:
            return self._verify_report(task, verify, arg)
        if cmd == extend.value:
            return self._extend_rtmr(task, extend, arg)
        if cmd == quote.value:
            return self._get_quote(task, quote, arg)
        return super().ioctl(task, cmd, arg)  # GET_REPORT0 as 6.2; any other command -ENOTTY

    def _get_quote(self, task, req, arg: int) -> int:
        """tdx_get_quote (quote.md §2.6 steps 1-7)."""
        k = self.k
        # 1: the 16-byte struct tdx_quote_req
        raw = k.copy_in(task, "quote_req:copy_from_user", arg, req.request_len)
        if len(raw) != req.request_len:
            return -abi.EFAULT
        ubuf = int.from_bytes(raw[0:8], "little")
        length = int.from_bytes(raw[8:16], "little")
        # 2: a zero length
        if length == 0:
            return -abi.EINVAL
        # 3: the entry and its shared buffer
        e = self._entry_alloc(task, length, with_obj=True)
        if e is None:
            return -abi.ENOMEM
        # 4: the whole len from req.buf
        if k.copy_from_user(task, "quote_data:copy_from_user", e.buf, ubuf, length):
            self._entry_free(e)
            return -abi.EFAULT
        # 5: GetQuote under quote_lock; R10 != 0 -> -EIO
        self._qlock()
        if self._hcall(e) != abi.TDVMCALL_STATUS_SUCCESS:
            self._qunlock()
            self._entry_free(e)
            return -abi.EIO
        # 6: on quote_list; quote_lock is not held while waiting, so requests run in parallel
        self.quote_list.append(e)
        self._qunlock()
        # 7: wait_for_completion_interruptible, no timeout; a signal orphans the entry while the host
        # still owns the buffer (terminate_quote_request): -EINTR
        if self._wait(task, e):
            self._qlock()
            if self._status(e) == abi.GET_QUOTE_IN_FLIGHT:
                e.valid = False
            else:
                self.quote_list.remove(e)
                self._entry_free(e)
            self._qunlock()
            return -abi.EINTR
        # 8: the whole len back; the -EFAULT of a fault is dropped
        k.copy_to_user(task, "quote_data:copy_to_user", ubuf, e.buf, length)
        # 9: del_quote_entry
        self._qlock()
        self.quote_list.remove(e)
        self._entry_free(e)
        self._qunlock()
        return 0

    def _verify_report(self, task, req, arg: int) -> int:
        k = self.k
        # 1: kmalloc(256), a power of two: 256-aligned as leaf 22 requires (ref §4.7)
        mac = k.kmalloc(task, abi.TDX_REPORTMACSTRUCT_LEN, "reportmac:kmalloc")
        if mac is None:
            return -abi.ENOMEM
        try:
            # 2: the REPORTMACSTRUCT from arg + 0
            if k.copy_from_user(task, "reportmac:copy_from_user", mac, arg + req.field("reportmac").offset,
                                abi.TDX_REPORTMACSTRUCT_LEN):
                return -abi.EFAULT
            # 3: TDG.MR.VERIFYREPORT; any nonzero status -> -EIO
            err = k.tdcall(abi.TDG_MR_VERIFYREPORT, mac, 0, 0)
            ret = -self.p.status_errno(err, "verify_report") if err != abi.TDX_SUCCESS else 0
            # 4: the raw status to err_code (arg + 256) whatever it is; a fault overrides the -EIO
            out = req.field("err_code")
            if k.copy_out(task, "err_code:copy_to_user", arg + out.offset, err.to_bytes(out.size, "little")):
                ret = -abi.EFAULT
            return ret
        finally:
            k.kfree(mac)  # 5

    def _extend_rtmr(self, task, req, arg: int) -> int:
        k = self.k
        # 1: the index byte from arg + 48, before anything else
        index = k.copy_in(task, "rtmr_index:copy_from_user", arg + req.field("index").offset, 1)
        if len(index) != 1:
            return -abi.EFAULT
        # 2: RTMR 0 and 1 are the BIOS's and the kernel's: index < 2 -> -EINVAL (td-partitioning)
        if index[0] < self.p.traits["extend_min_index"]:
            return -abi.EINVAL
        # 3: kmalloc(ALIGN(48, 64)): 64-aligned as leaf 2 requires (ref §4.6)
        size = -(-abi.TDX_EXTEND_DATA_LEN // abi.TDX_EXTEND_ALIGN) * abi.TDX_EXTEND_ALIGN
        data = k.kmalloc(task, size, "extend_data:kmalloc")
        if data is None:
            return -abi.ENOMEM
        try:
            # 4: the 48 bytes from arg + 0
            if k.copy_from_user(task, "extend_data:copy_from_user", data, arg + req.field("data").offset,
                                abi.TDX_EXTEND_DATA_LEN):
                return -abi.EFAULT
            # 5: leaf 2, RCX = pa(data), RDX = index: INVALID -> -EINVAL, BUSY -> -EBUSY, else -EIO
            status = k.tdcall(abi.TDG_MR_RTMR_EXTEND, data, index[0], 0)
            return -self.p.status_errno(status, "extend_rtmr") if status != abi.TDX_SUCCESS else 0
        finally:
            k.kfree(data)  # 6


_MAX_ORDER = 10  # GK_MAX_ORDER: the largest block the allocator hands out

#: Profile.ops -> driver class.
DRIVER_CLASSES = {cls.OPS: cls for cls in (DriverV4, DriverV62, DriverV616, DriverIntelDownstream)}
