"""The handler behind ``tdxmodel serve``: every request runs on the emulated kernel (layer 4).

``EmulatedDevice`` is the object ``tdxmodel.transport._server.DeviceServer`` calls (with the GIL) for the device
file, the socket and the control files. It speaks to the emulator only through the backend's public
API (docs/CONTRACT.md: ``Kernel.process``, ``Process.open/ioctl/pread/pwrite/poke/peek/mmap``,
``Kernel.fault``, ``Process.fail_nth``), so it serves either backend.

One open file of the device = one emulated Process holding one open fd of the driver's node. An
ioctl's user memory is mirrored into that Process at ``USER_BASE`` plus the client's page offset, with
the client's permissions (readable / writable prefix), so copy_from_user/copy_to_user fault on the
same byte as they would in the client.

Control files (FUSE only; paths relative to the mount, in the kernel's debugfs vocabulary, ref §7):

=====================================  ==========================================================
``fail/failslab/<knob>``               knobs: probability interval times space verbose
``fail/fail_page_alloc/<knob>``        ignore-gfp-wait (Y/N) for these two; min-order for
``fail/fail_usercopy/<knob>``          fail_page_alloc. Reads print the value and a newline
``fail-nth``                           write N: the N-th injectable point of the next emulated
                                       syscall(s) fails, counted across calls from any client;
                                       reads 0 once fired, N' > 0 while pending (ref §7 fail-nth)
``debug/mr_lock`` (6.16 only)          write 1 / 0: hold / release mr_lock as another task
``debug/counters``                     JSON: the kernel's and module's debug counters and the
                                       number of open device files (tests assert they balance)
``measurements/<name>`` (6.16 only)    the sysfs files of ref §2.5, through Process.pread/pwrite
``acpi/tables/CCEL``, ``.../data/CCEL`` the boot event log's ACPI table and log area (0400)
``debug/host_fault``                   write ``NAME [key=value ...]``: Host.push_fault(NAME, ...)
                                       for the next GetQuote (``clear``: drop queued faults)
``debug/host_counters``                JSON: the VMM's and the quote service's counters
=====================================  ==========================================================

The configfs-tsm tree (``tsm/report/...``, generations with a quote path) is the served tree of
``tdxmodel.transport.tree``: the ``vfs_*`` methods below hand it to the transports.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from tdxmodel import abi, profiles

PAGE = abi.TDX_PAGE_SIZE
#: Where an open file's mirror of the client's memory lives in its emulated Process (any page-aligned
#: user address works; the page offset of the client's arg is added).
USER_BASE = 0x7E0000000000
MIRROR_PAGES = 3  # a window of <= 8192 bytes at any page offset spans at most 3 pages
#: Where a request's embedded buffer (the get_quote commands) is mirrored, the client's page offset
#: kept; the request's pointer is aimed at it for the call (csrc/tdx_devpath.h TDXF_BUF_BASE).
BUF_BASE = 0x7E0100000000
#: The control process's buffer for measurement reads and writes (a FUSE write is <= 128 KiB).
CONTROL_BASE = 0x7D0000000000
CONTROL_LEN = 33 * PAGE * 4

FAULT_KNOBS: Dict[str, Tuple[str, ...]] = {
    "failslab": ("probability", "interval", "times", "space", "verbose", "ignore-gfp-wait"),
    "fail_page_alloc": ("probability", "interval", "times", "space", "verbose", "ignore-gfp-wait",
                        "min-order"),
    "fail_usercopy": ("probability", "interval", "times", "space", "verbose"),
}
_BOOL_KNOBS = {"ignore-gfp-wait"}


def driver_windows(driver: str) -> Dict[int, int]:
    """driver_windows(driver: str) -> {cmd: bytes from arg the driver may touch}.

    v4 reads 64 bytes and writes the 1024-byte TDREPORT in place (ref §2.2) though its command encodes
    8; 6.2+ reads 64 and writes 1024 at +64 of the 1088-byte struct (ref §2.4, §2.5). The commands the
    VFS answers before the driver (profiles.VfsCommand) come with theirs: a socket client's kernel
    (the preload library's) hands them to us; FUSE's answers them itself and never sends them."""
    prof = profiles.get(driver)
    windows = {v.cmd: v.window for v in prof.vfs_commands if v.window}
    windows.update({c.value: c.request_len for c in prof.commands})
    return windows


def driver_buffers(driver: str) -> Dict[int, Tuple[int, int]]:
    """driver_buffers(driver: str) -> {cmd: (offset of the u64 pointer, offset of the u64 length)}.

    The get_quote commands' requests point to the caller's quote buffer (ref §2.2, quote.md §2.6):
    the transports mirror [pointer, pointer + PAGE_ALIGN(length)) of the client as well."""
    out = {}
    for c in profiles.get(driver).commands:
        names = {f.name: f for f in c.fields}
        if "buf" in names and "len" in names:
            out[c.value] = (names["buf"].offset, names["len"].offset)
    return out


class _FailNth:
    """The daemon-wide pending fail-nth (DIR/fail-nth) when no core fast path holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    def fail_nth_arm(self) -> int:
        with self._lock:
            n, self._n = self._n, 0
            return n

    def fail_nth_disarm(self, left: int) -> None:
        with self._lock:
            if left and not self._n:
                self._n = left

    def fail_nth_set(self, n: int) -> None:
        with self._lock:
            self._n = n

    def fail_nth_get(self) -> int:
        return self._n


class _OpenFile:
    __slots__ = ("process", "fd", "lock", "mirror_is_plain")

    def __init__(self, process: Any, fd: int) -> None:
        self.process = process
        self.fd = fd
        self.lock = threading.Lock()
        self.mirror_is_plain = True  # all MIRROR_PAGES mapped rw


class EmulatedDevice:
    """EmulatedDevice(kernel, *, store=None, log=print-to-stderr)

    The handler of one served TD. ``store`` (a ``tdxmodel.state.StateStore``) receives every extend
    made through the measurement files or an extending ioctl (Command.extends_rtmr), under its lock
    and in its order; ``sync_state()`` applies the
    store's RTMRs when its generation changes (the daemon polls it, and a measurement read calls it
    first)."""

    def __init__(self, kernel: Any, *, store: Any = None,
                 log: Optional[Callable[[str], None]] = None) -> None:
        self.kernel = kernel
        self.module = kernel.module
        self.driver = kernel.driver
        self.profile = profiles.get(kernel.driver)
        self.store = store
        self.log = log or (lambda msg: print(f"tdxmodel serve: {msg}", file=sys.stderr, flush=True))
        self.errors: List[BaseException] = []
        self._files: Dict[int, _OpenFile] = {}
        self._files_lock = threading.Lock()
        self._next_handle = 1
        self._fail_nth: Any = _FailNth()
        self._fast: Any = None
        self._extend_lock = threading.Lock()  # emulated extend + store write-back, in one order
        self._generation: Optional[int] = None
        # control nodes: node id -> (read, write)
        self.controls: List[Tuple[str, Callable[[int, int], Any], Callable[[bytes, int], int]]] = []
        self._control_process: Any = None
        self.control_sizes: Dict[str, int] = {}  # relative path -> st_size of a fixed-size control file
        self._acpi: Optional[Dict[str, bytes]] = None
        self._measurement_fds: Dict[str, int] = {}
        self._control_lock = threading.Lock()
        self._mr_lock_held = False
        self.host: Any = None
        self.qgs: Any = None
        #: set by the daemon: () -> the state's TEE_TCB_INFO, after the host follows its TCB position
        self.tcb_moved: Optional[Callable[[], bytes]] = None
        if self.profile.measurements:
            self._open_measurements()
        self._sync_error: Optional[str] = None
        from tdxmodel.transport.tree import ServedTree
        self.tree = ServedTree(self)
        if store is not None:
            self.sync_state()  # one read gives the generation and the RTMRs it goes with

    # ------------------------------------------------------------------ the served tree
    def vfs_stat(self, path):
        return self.tree.vfs_stat(path)

    def vfs_readdir(self, path):
        return self.tree.vfs_readdir(path)

    def vfs_mkdir(self, path, mode, pid):
        return self.tree.vfs_mkdir(path, mode, pid)

    def vfs_rmdir(self, path, pid):
        return self.tree.vfs_rmdir(path, pid)

    def vfs_open(self, path, flags, pid):
        return self.tree.vfs_open(path, flags, pid)

    def vfs_read(self, handle, size, offset):
        return self.tree.vfs_read(handle, size, offset)

    def vfs_write(self, handle, data, offset):
        return self.tree.vfs_write(handle, data, offset)

    def vfs_lseek(self, handle, offset, whence):
        return self.tree.vfs_lseek(handle, offset, whence)

    def vfs_release(self, handle):
        self.tree.vfs_release(handle)

    def vfs_flush(self, handle):
        self.tree.vfs_flush(handle)

    # ------------------------------------------------------------------ the device file
    def attach_fast_path(self, path: Any) -> None:
        """Route ioctls through the core's nogil path (a ``tdxmodel._core._ext.DevicePath``, which
        the transport calls in C): it then also holds the pending fail-nth, so both paths count the
        same points."""
        from tdxmodel._core import _ext
        if (_ext.USER_BASE, _ext.MIRROR_PAGES, _ext.BUF_BASE) != (USER_BASE, MIRROR_PAGES, BUF_BASE):
            raise RuntimeError("the C mirror layout differs from tdxmodel.transport.device's")
        path.fail_nth_set(self._fail_nth.fail_nth_get())
        self._fast = path
        self._fail_nth = path

    def open(self, flags: int, pid: int) -> int:
        process = self.kernel.process()
        fd = process.open(self.kernel.device_path, flags)
        if fd < 0:
            return fd
        process.mmap(USER_BASE, MIRROR_PAGES * PAGE, "rw")
        with self._files_lock:
            if self._fast is not None:
                try:
                    handle = self._fast.core_register(process, fd)
                except OSError as e:
                    process.close(fd)
                    return -(e.errno or errno.EMFILE)
            else:
                handle = self._next_handle
                self._next_handle += 1
            self._files[handle] = _OpenFile(process, fd)
        return handle

    def release(self, handle: int) -> None:
        with self._files_lock:
            f = self._files.pop(handle, None)
            if f is not None and self._fast is not None:
                self._fast.core_unregister(handle)  # waits for a call in progress
        if f is not None:
            with f.lock:
                f.process.close(f.fd)

    def ioctl(self, handle: int, pid: int, cmd: int, arg: int, image: memoryview, readable: int,
              writable: int, buffer: Optional[Tuple[int, memoryview, int, int, int]] = None) -> int:
        """``buffer``: the request's embedded buffer (client pointer, mirror, readable, writable,
        offset of the pointer in the request), for the commands that have one (driver_buffers)."""
        f = self._files.get(handle)
        if f is None:
            return -errno.EBADF
        command = self.profile.command_numbered(cmd & 0xFFFFFFFF)
        if command is not None and command.extends_rtmr and self.store is not None:
            return self._ioctl_extend_through_store(f, command, cmd, arg, image, readable, writable)
        return self._ioctl(f, cmd, arg, image, readable, writable, buffer)

    def _ioctl_extend_through_store(self, f: _OpenFile, command: Any, cmd: int, arg: int,
                                    image: memoryview, readable: int, writable: int) -> int:
        """An ioctl that extends an RTMR (Command.extends_rtmr: intel-downstream's EXTEND_RTMR),
        persisted as a measurement-file write is (_extend_through_store): under the state lock, the
        live TD brought up to the log, the ioctl, then the record; a failed commit puts the RTMR back
        and the call fails -EIO. The index and data are what the driver read: the client's bytes."""
        from tdxmodel.state import StateError

        idx_field, data_field = command.field("index"), command.field("data")
        with self._extend_lock:
            try:
                with self.store.transaction() as txn:
                    self._apply(txn.config, txn.generation)
                    befores = [self.module.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]
                    ret = self._ioctl(f, cmd, arg, image, readable, writable)
                    if ret != 0:
                        return ret  # the driver refused: nothing changed, nothing to record
                    index = image[idx_field.offset]
                    data = bytes(image[data_field.offset:data_field.end])
                    if not (0 <= index < abi.TDX_NUM_RTMRS and len(data) == data_field.size):
                        return ret  # cannot happen: the driver read both and the module checks the index
                    try:
                        txn.extend(index, data, self.module.rtmr(index))
                    except (StateError, ValueError) as e:
                        self.kernel.set_rtmr(index, befores[index])
                        self.log(f"state directory: {e} (the extend of RTMR{index} was undone)")
                        return -errno.EIO
                    self._generation = txn.generation
                    return ret
            except StateError as e:
                self.log(f"state directory: {e} (an extending ioctl fails with EIO until it is usable)")
                return -errno.EIO

    def _ioctl(self, f: _OpenFile, cmd: int, arg: int, image: memoryview, readable: int,
               writable: int, buffer: Optional[Tuple[int, memoryview, int, int, int]] = None) -> int:
        window = len(image)
        addr = USER_BASE + arg % PAGE
        with f.lock:
            p = f.process
            plain = readable == window and writable == window
            if not plain or not f.mirror_is_plain:
                self._layout(f, arg % PAGE, readable, writable)
            if readable:
                p.poke(addr, image[:readable])
            saved = self._buffer_in(p, addr, buffer) if buffer is not None else None
            try:
                ret = self._syscall(p, lambda: p.ioctl(f.fd, cmd & 0xFFFFFFFF, addr))
            finally:
                if buffer is not None:
                    self._buffer_out(p, addr, buffer, saved)
            if writable:
                image[:writable] = p.peek(addr, writable)
        return ret

    @staticmethod
    def _buffer_in(p: Any, req: int, buffer) -> Tuple[int, bytes]:
        """Mirror the embedded buffer at BUF_BASE (the client's page offset and permissions) and aim
        the request's pointer at it; -> (mirror address, the pointer bytes it replaced)."""
        ptr, view, readable, writable, ptr_off = buffer
        offset = ptr % PAGE
        for k in range(-(-(offset + len(view)) // PAGE)):
            start = max(0, k * PAGE - offset)
            prot = "rw" if start < writable else ("r" if start < readable else "")
            if prot:
                p.mmap(BUF_BASE + k * PAGE, PAGE, prot)
        addr = BUF_BASE + offset
        if readable:
            p.poke(addr, view[:readable])
        orig = p.peek(req + ptr_off, 8)
        p.poke(req + ptr_off, addr.to_bytes(8, "little"))
        return addr, orig

    @staticmethod
    def _buffer_out(p: Any, req: int, buffer, saved) -> None:
        """The buffer's bytes back to the mirror; the client's pointer back in the request unless the
        driver wrote there itself (v4's put_user of the TDVMCALL error, ref §2.2)."""
        ptr, view, readable, writable, ptr_off = buffer
        addr, orig = saved
        if writable:
            view[:writable] = p.peek(addr, writable)
        if p.peek(req + ptr_off, 8) == addr.to_bytes(8, "little"):
            p.poke(req + ptr_off, orig)
        p.munmap(BUF_BASE, -(-(addr % PAGE + len(view)) // PAGE) * PAGE)

    def interrupt(self, handle: int, on: bool) -> None:
        """The client of the ioctl in progress on `handle` got a signal (on) / the call ended (off):
        the emulated task has a pending signal in between (6.16 mr_lock: -EINTR, ref §2.5)."""
        f = self._files.get(handle)
        if f is not None:
            f.process.signal_pending = on

    def _layout(self, f: _OpenFile, offset: int, readable: int, writable: int) -> None:
        """Map the mirror's pages as the client's are: rw up to `writable`, r up to `readable`,
        nothing after (the bounds fall on page boundaries of the client, hence of the mirror)."""
        p = f.process
        p.munmap(USER_BASE, MIRROR_PAGES * PAGE)
        plain = True
        for k in range(MIRROR_PAGES):
            start = max(0, k * PAGE - offset)  # first window byte on page k
            prot = "rw" if start < writable else ("r" if start < readable else "")
            plain = plain and prot == "rw"
            if prot:
                p.mmap(USER_BASE + k * PAGE, PAGE, prot)
        f.mirror_is_plain = plain

    # ------------------------------------------------------------------ fail-nth across calls
    def _syscall(self, process: Any, call: Callable[[], int]) -> int:
        armed = self._fail_nth.fail_nth_arm()
        if armed:
            process.fail_nth = armed
        ret = call()
        if armed:
            left = process.fail_nth
            process.fail_nth = 0
            self._fail_nth.fail_nth_disarm(left)  # not reached yet: the next call counts on
        return ret

    @property
    def pending_fail_nth(self) -> int:
        return self._fail_nth.fail_nth_get()

    # ------------------------------------------------------------------ control files
    def control_nodes(self) -> List[Tuple[str, int, int]]:
        """[(relative path, node id, mode)] of every control file, for the daemon to mount."""
        out = []

        def add(path: str, mode: int, read, write) -> None:
            self.controls.append((path, read, write))
            out.append((path, len(self.controls) - 1, mode))

        for cap, knobs in FAULT_KNOBS.items():
            attr = self.kernel.fault(cap)
            for knob in knobs:
                add(f"fail/{cap}/{knob}", 0o600, self._knob_reader(attr, knob),
                    self._knob_writer(attr, knob))
        add("fail-nth", 0o600, lambda size, off: _text(f"{self.pending_fail_nth}\n", off),
            self._write_fail_nth)
        add("debug/counters", 0o444, lambda size, off: _text(json.dumps(self.counters()) + "\n", off),
            lambda data, off: -errno.EACCES)
        if self.profile.has_lock("mr_lock"):
            add("debug/mr_lock", 0o600, lambda size, off: _text(f"{int(self._mr_lock_held)}\n", off),
                self._write_mr_lock)
        for mr in self.profile.measurements:
            add(f"measurements/{mr.name}", mr.mode, self._measurement_reader(mr.name),
                self._measurement_writer(mr.name))
        if self.host is not None:
            add("debug/host_fault", 0o200, lambda size, off: -errno.EACCES, self._write_host_fault)
            add("debug/host_counters", 0o444,
                lambda size, off: _text(json.dumps(self.host_counters()) + "\n", off),
                lambda data, off: -errno.EACCES)
        # the boot event log as Linux shows it (drivers/acpi/sysfs.c): the CCEL table and LAML bytes
        # at its LASA, both root-only like sysfs's ACPI tables
        for rel, blob in self.acpi_tables().items():
            add(rel, 0o400, lambda size, off, blob=blob: blob[off:off + size],
                lambda data, off: -errno.EACCES)
            self.control_sizes[rel] = len(blob)
        self.tree.add_controls(out, self.control_sizes)
        return out

    def acpi_tables(self) -> Dict[str, bytes]:
        """{relative path: bytes} of the CCEL table and its log area, from the state directory's
        boot event log (tdxmodel.eventlog)."""
        if self._acpi is None:
            from tdxmodel import eventlog
            events = self.store.boot_events() if self.store is not None else []
            area = eventlog.log_area(events)
            self._acpi = {"acpi/tables/CCEL": eventlog.ccel_table(len(area)),
                          "acpi/tables/data/CCEL": area}
        return self._acpi

    # ------------------------------------------------------------------ the host behind GetQuote
    def attach_host(self, host: Any, qgs: Any = None) -> None:
        """The VMM (a backend Host) the TD's GetQuote reaches, and the QGS it asks; adds the control
        files ``debug/host_fault`` (write ``NAME [seconds=S] [out_len=N]``: Host.push_fault for the
        next GetQuote, the names of tdxmodel.host_faults, ``none`` for QEMU's behaviour; ``clear``
        drops the queued faults) and ``debug/host_counters`` (JSON: the host's and the QGS's)."""
        self.host = host
        self.qgs = qgs

    def host_counters(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"host": self.host.counters() if self.host is not None else None}
        out["qgs"] = self.qgs.counters() if self.qgs is not None else None
        return out

    def _write_host_fault(self, data: bytes, offset: int) -> int:
        words = data.decode("ascii", "replace").split()
        if not words:
            return -errno.EINVAL
        if words == ["clear"]:
            self.host.clear_faults()
            return len(data)
        name = None if words[0] == "none" else words[0]
        params: Dict[str, Any] = {}
        try:
            for w in words[1:]:
                key, sep, value = w.partition("=")
                if not sep:
                    return -errno.EINVAL
                params[key] = float(value) if key == "seconds" else int(value, 0)
            self.host.push_fault(name, **params)
        except (ValueError, TypeError):
            return -errno.EINVAL
        return len(data)

    def counters(self) -> Dict[str, Any]:
        """The emulated kernel's and module's debug counters, plus open files (debug/counters)."""
        return {"kernel": self.kernel.counters(), "module": self.module.counters(),
                "open_files": len(self._files), "fast_path": self._fast is not None}

    def control_read(self, node: int, pid: int, size: int, offset: int) -> Any:
        return self.controls[node][1](size, offset)

    def control_write(self, node: int, pid: int, data: bytes, offset: int) -> int:
        return self.controls[node][2](data, offset)

    def callback_error(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.log(f"internal error in a request (answered -EIO): {exc!r}")

    @staticmethod
    def _knob_reader(attr: Any, knob: str):
        name = knob.replace("-", "_")

        def read(size: int, offset: int) -> bytes:
            value = getattr(attr, name)
            text = ("Y" if value else "N") if knob in _BOOL_KNOBS else str(int(value))
            return _text(text + "\n", offset)
        return read

    @staticmethod
    def _knob_writer(attr: Any, knob: str):
        name = knob.replace("-", "_")

        def write(data: bytes, offset: int) -> int:
            text = data.decode("ascii", "replace").strip()
            try:
                if knob in _BOOL_KNOBS:
                    if text[:1] in ("Y", "y", "1"):
                        value: Any = True
                    elif text[:1] in ("N", "n", "0"):
                        value = False
                    else:
                        return -errno.EINVAL
                else:
                    value = int(text, 10)
                setattr(attr, name, value)
            except (ValueError, TypeError):
                return -errno.EINVAL
            return len(data)
        return write

    def _write_mr_lock(self, data: bytes, offset: int) -> int:
        """debug/mr_lock (6.16): 1 holds the driver's mr_lock from outside (as another task would),
        0 releases it; clients then wait, and a signal to a waiting client gives -EINTR (ref §2.5)."""
        text = data.decode("ascii", "replace").strip()
        with self._control_lock:
            if text == "1":
                if self._mr_lock_held or not self.kernel.mr_lock_try():
                    return -errno.EBUSY
                self._mr_lock_held = True
            elif text == "0":
                if not self._mr_lock_held:
                    return -errno.EINVAL
                self.kernel.mr_lock_release()
                self._mr_lock_held = False
            else:
                return -errno.EINVAL
        return len(data)

    def _write_fail_nth(self, data: bytes, offset: int) -> int:
        try:
            n = int(data.decode("ascii", "replace").strip(), 10)
        except ValueError:
            return -errno.EINVAL
        if n < 0:
            return -errno.EINVAL
        self._fail_nth.fail_nth_set(n)
        return len(data)

    # ------------------------------------------------------------------ 6.16 measurement files
    def _open_measurements(self) -> None:
        p = self.kernel.process()
        p.mmap(CONTROL_BASE, CONTROL_LEN, "rw")
        for mr in self.profile.measurements:
            name = mr.name
            path = f"{self.profile.measurement_dirs[0]}/{name}"
            fd = p.open(path, os.O_RDWR if mr.writable else os.O_RDONLY)
            if fd < 0:
                raise OSError(-fd, f"the emulated kernel has no {path}")
            self._measurement_fds[name] = fd
        self._control_process = p

    def _measurement_reader(self, name: str):
        live = name.startswith("rtmr")

        def read(size: int, offset: int) -> Any:
            p = self._control_process
            count = min(size, CONTROL_LEN)
            if live:
                self._catch_up()  # an extend another process committed shows at once
            with self._control_lock:
                n = self._syscall(p, lambda: p.pread(self._measurement_fds[name], CONTROL_BASE, count,
                                                     offset))
                return n if n < 0 else p.peek(CONTROL_BASE, n)
        return read

    def _measurement_writer(self, name: str):
        index = int(name[4]) if name.startswith("rtmr") else None

        def write(data: bytes, offset: int) -> int:
            if len(data) > CONTROL_LEN:
                return -errno.EINVAL
            if index is None or self.store is None:
                with self._extend_lock, self._control_lock:
                    return self._pwrite_measurement(name, data, offset)
            return self._extend_through_store(name, index, data, offset)
        return write

    def _pwrite_measurement(self, name: str, data: bytes, offset: int) -> int:
        p = self._control_process
        p.poke(CONTROL_BASE, data)
        return self._syscall(p, lambda: p.pwrite(self._measurement_fds[name], CONTROL_BASE, len(data),
                                                 offset))

    def _extend_through_store(self, name: str, index: int, data: bytes, offset: int) -> int:
        """One order of extends (README "The state directory"): under the state lock, bring the live
        TD up to the log, extend it through the driver, then commit the record; if the commit fails,
        put the RTMR back. A state that cannot be read fails the write before the TD is touched."""
        from tdxmodel.state import StateError

        with self._extend_lock:
            try:
                with self.store.transaction() as txn:
                    self._apply(txn.config, txn.generation)
                    with self._control_lock:
                        before = self.module.rtmr(index)
                        n = self._pwrite_measurement(name, data, offset)
                    if n < 0:
                        return n  # the driver refused: nothing changed, nothing to record
                    try:
                        # a successful write extends with the bytes at offset 0 (ref §2.5 "Write")
                        txn.extend(index, bytes(data[:abi.TDX_EXTEND_DATA_LEN]), self.module.rtmr(index))
                    except (StateError, ValueError) as e:
                        self.kernel.set_rtmr(index, before)
                        self.log(f"state directory: {e} (the extend of RTMR{index} was undone)")
                        return -errno.EIO
                    self._generation = txn.generation
                    return n
            except StateError as e:
                self.log(f"state directory: {e} (a measurement write fails with EIO until it is usable)")
                return -errno.EIO

    # ------------------------------------------------------------------ state directory
    def _apply(self, config: Any, generation: int) -> bool:
        """Set the live RTMRs to the state's (Kernel.set_rtmr: the 6.16 cache goes stale too).
        Called with _extend_lock held."""
        changed = False
        for i, value in enumerate(config.rtmr):
            if self.module.rtmr(i) != value:
                self.kernel.set_rtmr(i, value)
                changed = True
        info = config.tee_tcb_info()
        if self.module.tee_tcb_info() != info:
            # `tdxmodel tcb` moved the platform: the host's QE of the new position first (its
            # TEE_TCB_INFO read with it, under the state lock), then the TD's TEE_TCB_INFO, so every
            # quote is of one position (tdxmodel.host.qe.PositionedQuotingEnclave)
            if self.tcb_moved is not None:
                info = self.tcb_moved()
            self.module.set_tee_tcb_info(info)
            changed = True
        self._generation = generation
        return changed

    def sync_state(self) -> bool:
        """sync_state() -> bool: if the store changed (`tdxmodel extend`, `tdxmodel tcb`, another tool),
        set the TD's RTMRs and TCB position (TEE_TCB_INFO) to the stored ones. Returns whether anything was applied. StateError if the state
        cannot be read (the TD keeps its last good state)."""
        if self.store is None:
            return False
        with self._extend_lock:
            generation, config = self.store.current()
            if generation == self._generation:
                return False
            return self._apply(config, generation)

    def _catch_up(self) -> None:
        """sync_state before a measurement read; a state that cannot be read is said once and the
        last good state served (as the poller does)."""
        try:
            self.sync_state()
            self._sync_error = None
        except Exception as e:  # a corrupt state file must not fail reads of the live TD
            if str(e) != self._sync_error:
                self.log(f"state directory: {e} (serving the last good state)")
            self._sync_error = str(e)

    def release_debug_lock(self) -> None:
        """Give back mr_lock if debug/mr_lock holds it (the daemon stops: waiters go on)."""
        with self._control_lock:
            if self._mr_lock_held:
                self.kernel.mr_lock_release()
                self._mr_lock_held = False

    def close(self) -> None:
        self.release_debug_lock()
        self.tree.close()
        with self._files_lock:
            handles = list(self._files)
        for h in handles:
            self.release(h)
        if self._control_process is not None:
            for fd in self._measurement_fds.values():
                self._control_process.close(fd)
            self._measurement_fds.clear()


def _text(text: str, offset: int) -> bytes:
    return text.encode()[offset:]
