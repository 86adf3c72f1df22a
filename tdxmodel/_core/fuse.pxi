# The transports of `tdxmodel serve` (csrc/tdx_fuse.h): a FUSE file system and a Unix socket, over a
# handler that is either the null handler (benchmarks: the transport alone) or a Python object
# (tdxmodel.transport.device.EmulatedDevice) called with the GIL. Layer 2: thin; the policy lives in
# tdxmodel/transport/.

from cpython.buffer cimport PyBUF_WRITE
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.errno cimport EIO, EINVAL
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from posix.types cimport off_t

from tdxmodel._core.tdx_fuse cimport *

cdef struct _Ctx:
    void *py            # the Python handler (borrowed; DeviceServer.handler keeps it alive)
    tdxf_core *core     # the nogil ioctl path, or NULL


NODE_DIR = TDXF_NODE_DIR
NODE_DEVICE = TDXF_NODE_DEVICE
NODE_CONTROL = TDXF_NODE_CONTROL
MAX_WINDOW = TDXW_MAX_WINDOW
USER_BASE = TDXF_USER_BASE
MIRROR_PAGES = TDXF_MIRROR_PAGES
MAX_CORE_FILES = 4096


cdef inline object _py(void *ctx):
    return <object>(<_Ctx *>ctx).py


cdef inline void _sink(void *ctx, BaseException exc) noexcept:
    # The error sink (uvloop's pattern): a callback never lets an exception escape into C.
    try:
        _py(ctx).callback_error(exc)
    except BaseException:
        pass


cdef int _py_open(void *ctx, int flags, uint32_t pid, uint64_t *handle) noexcept with gil:
    try:
        r = _py(ctx).open(flags, pid)
        if r < 0:
            return r
        handle[0] = r
        return 0
    except BaseException as e:
        _sink(ctx, e)
        return -EIO


cdef void _py_release(void *ctx, uint64_t handle) noexcept with gil:
    try:
        _py(ctx).release(handle)
    except BaseException as e:
        _sink(ctx, e)


cdef long _py_ioctl(void *ctx, tdxf_ioctl_call *call) noexcept with gil:
    cdef object view = PyMemoryView_FromMemory(<char *>call.image, call.window, PyBUF_WRITE)
    try:
        return _py(ctx).ioctl(call.handle, call.pid, call.cmd, call.arg, view, call.readable,
                                   call.writable)
    except BaseException as e:
        _sink(ctx, e)
        return -EIO
    finally:
        view.release()  # the image lives on a C stack: no reference may outlive the call


cdef long _core_ioctl(void *ctx, tdxf_ioctl_call *call) noexcept nogil:
    return tdxf_core_ioctl((<_Ctx *>ctx).core, call)


cdef void _core_interrupt(void *ctx, uint64_t handle, int on) noexcept nogil:
    tdxf_core_interrupt((<_Ctx *>ctx).core, handle, on)


cdef void _py_interrupt(void *ctx, uint64_t handle, int on) noexcept with gil:
    try:
        _py(ctx).interrupt(handle, bool(on))
    except BaseException as e:
        _sink(ctx, e)


cdef int _py_control_read(void *ctx, int node, uint32_t pid, char *buf, size_t size,
                          off_t offset) noexcept with gil:
    try:
        r = _py(ctx).control_read(node, pid, size, offset)
        if isinstance(r, int):
            return r if r < 0 else -EINVAL
        data = bytes(r)
        if <size_t>len(data) > size:
            data = data[:size]
        memcpy(buf, <const char *>data, len(data))
        return len(data)
    except BaseException as e:
        _sink(ctx, e)
        return -EIO


cdef int _py_control_write(void *ctx, int node, uint32_t pid, const char *buf, size_t size,
                           off_t offset) noexcept with gil:
    try:
        return _py(ctx).control_write(node, pid, buf[:size], offset)
    except BaseException as e:
        _sink(ctx, e)
        return -EIO


cdef class DeviceServer:
    """DeviceServer(handler: object | None, device_path: str)

    One served device: a file tree and a command -> window table, reachable through FUSE
    (fuse_mount/fuse_run/fuse_stop) and a Unix socket (socket_listen/socket_run/socket_stop).
    `handler` None is the null server (every ioctl returns 0 and changes nothing); otherwise an object
    with open(flags, pid) -> handle | -errno, release(handle), ioctl(handle, pid, cmd, arg, image,
    readable, writable) -> int, control_read(node, pid, size, offset) -> bytes | -errno,
    control_write(node, pid, data, offset) -> int, callback_error(exc), and optionally
    interrupt(handle, on: bool) (a FUSE client got a signal during its ioctl / that call ended). fuse_run and socket_run block
    (GIL released): call them from their own threads.
    """
    cdef tdxf_server *s
    cdef tdxf_handler ops
    cdef _Ctx ctx
    cdef readonly object handler
    cdef readonly bint fast_path
    cdef bint mounted

    def __cinit__(self, handler, str device_path, bint fast_path=False):
        self.ctx.py = NULL
        self.ctx.core = NULL
        if handler is None:
            self.ops = tdxf_null_handler
        else:
            for name in ("open", "release", "ioctl", "control_read", "control_write", "callback_error"):
                if not callable(getattr(handler, name, None)):
                    raise TypeError(f"handler lacks a callable {name}()")
            self.ctx.py = <void *>handler
            self.ops.ctx = &self.ctx
            self.ops.open = _py_open
            self.ops.release = _py_release
            self.ops.ioctl = _py_ioctl
            self.ops.interrupt = NULL
            if callable(getattr(handler, "interrupt", None)):
                self.ops.interrupt = _py_interrupt
            if fast_path:
                # the hot path without the GIL: needs the C core's Process (core_register)
                self.ctx.core = tdxf_core_new(MAX_CORE_FILES)
                if self.ctx.core == NULL:
                    raise MemoryError()
                self.ops.ioctl = _core_ioctl
                self.ops.interrupt = _core_interrupt
                self.fast_path = True
            self.ops.control_read = _py_control_read
            self.ops.control_write = _py_control_write
        self.handler = handler  # keeps ctx alive as long as the server
        self.s = tdxf_server_new(&self.ops, device_path.encode())
        if self.s == NULL:
            raise MemoryError()

    def __dealloc__(self):
        # The daemon stops both transports before dropping the server.
        if self.s != NULL:
            tdxf_server_free(self.s)
            self.s = NULL
        if self.ctx.core != NULL:
            tdxf_core_free(self.ctx.core)
            self.ctx.core = NULL

    cdef tdxf_core *_core(self) except NULL:
        if self.ctx.core == NULL:
            raise ValueError("this server has no core fast path (fast_path=False)")
        return self.ctx.core

    def core_register(self, process, int fd):
        """core_register(process: core Process, fd: int) -> int handle: route this open file's ioctls
        through the nogil path. The process must map MIRROR_PAGES pages rw at USER_BASE and stay
        alive until core_unregister."""
        cdef tdxf_core *c = self._core()
        if not isinstance(process, Process):
            raise TypeError("process must be a core backend Process")
        r = tdxf_core_register(c, <void *>(<Process>process)._live(), fd)
        if r < 0:
            raise OSError(-r, "too many open device files")
        return r

    def core_unregister(self, uint64_t handle):
        """core_unregister(handle: int) -> None: waits for a call in progress on it."""
        cdef tdxf_core *c = self._core()
        with nogil:
            tdxf_core_unregister(c, handle)

    def fail_nth_arm(self):
        """fail_nth_arm() -> int: take the daemon-wide pending fail-nth for one syscall."""
        return tdxf_core_fail_nth_arm(self._core())

    def fail_nth_disarm(self, unsigned left):
        tdxf_core_fail_nth_disarm(self._core(), left)

    def fail_nth_set(self, unsigned n):
        tdxf_core_fail_nth_set(self._core(), n)

    def fail_nth_get(self):
        return tdxf_core_fail_nth_get(self._core())

    def set_window(self, uint64_t cmd, uint32_t window):
        """set_window(cmd: int, window: int) -> None: bytes the driver may touch from arg for cmd."""
        if tdxf_set_window(self.s, cmd, window) < 0:
            raise ValueError(f"window: {window} exceeds {TDXW_MAX_WINDOW} or the table is full")

    def window(self, uint64_t cmd):
        """window(cmd: int) -> int"""
        return tdxf_window(self.s, cmd)

    def add_node(self, uint64_t parent, str name, int kind, unsigned mode, uint64_t size=0,
                 int node_id=-1):
        """add_node(parent: int, name: str, kind: int, mode: int, size=0, node_id=-1) -> int inode"""
        r = tdxf_add_node(self.s, parent, name.encode(), kind, mode, size, node_id)
        if r < 0:
            raise OSError(-r, f"cannot add node {name!r}")
        return r

    def fuse_mount(self, str mountpoint, str options="", int max_threads=16):
        """fuse_mount(mountpoint: str, options: str = "", max_threads: int = 16) -> None"""
        r = tdxf_fuse_mount(self.s, mountpoint.encode(), options.encode(), max_threads)
        if r < 0:
            raise OSError(-r, f"cannot mount FUSE on {mountpoint}")
        self.mounted = True

    def fuse_run(self):
        """fuse_run() -> int: serve FUSE requests until fuse_stop (GIL released)."""
        cdef int r
        with nogil:
            r = tdxf_fuse_run(self.s)
        self.mounted = False
        return r

    def fuse_stop(self):
        """fuse_stop() -> None: make fuse_run return and unmount (idempotent)."""
        with nogil:
            tdxf_fuse_stop(self.s)

    def socket_listen(self, str path, unsigned mode=0o600):
        """socket_listen(path: str, mode: int = 0o600) -> None"""
        r = tdxf_socket_listen(self.s, path.encode(), mode)
        if r < 0:
            raise OSError(-r, f"cannot listen on {path}")

    def socket_run(self):
        """socket_run() -> int: accept clients until socket_stop (GIL released)."""
        cdef int r
        with nogil:
            r = tdxf_socket_run(self.s)
        return r

    def socket_stop(self):
        """socket_stop() -> None: stop accepting, remove the socket path, end open connections."""
        with nogil:
            tdxf_socket_stop(self.s)

    def counters(self):
        """counters() -> dict"""
        cdef tdxf_counters c
        tdxf_get_counters(self.s, &c)
        return {"fuse_ioctls": c.fuse_ioctls, "socket_ioctls": c.socket_ioctls, "opens": c.opens,
                "releases": c.releases, "vm_reads": c.vm_reads, "vm_writes": c.vm_writes,
                "client_gone": c.client_gone}
