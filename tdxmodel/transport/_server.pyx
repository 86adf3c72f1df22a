# cython: language_level=3
"""The transports of ``tdxmodel serve`` (csrc/transport/): a FUSE file system and a Unix socket over
one device, as its own extension module, so the core (``tdxmodel._core._ext``) links no libfuse and
the reference backend serves without the core.

The device is either the null handler (benchmarks: the transport alone) or a Python object
(tdxmodel.transport.device.EmulatedDevice) called with the GIL, whose exceptions go to its
``callback_error`` (the error sink) and answer -EIO. With the core backend, the ioctl and interrupt
entries come from the core's ``DevicePath.fastpath()`` table instead and run without the GIL.
Thin: the policy lives in tdxmodel/transport/*.py.
"""

from cpython.buffer cimport PyBUF_WRITE
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.errno cimport EIO, EINVAL, ERANGE
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy
from posix.types cimport off_t

from tdxmodel.transport.tdx_ops cimport *
from tdxmodel.transport.tdx_server cimport *
from tdxmodel.transport.tdx_fuse cimport *
from tdxmodel.transport.tdx_socket cimport *

cdef struct _Ctx:
    void *py                    # the Python handler (borrowed; DeviceServer.handler keeps it alive)
    const tdxf_fastpath *fast   # the core's nogil ioctl path, or NULL


NODE_DIR = TDXF_NODE_DIR
NODE_DEVICE = TDXF_NODE_DEVICE
NODE_CONTROL = TDXF_NODE_CONTROL
NODE_VFS = TDXF_NODE_VFS
VFS_DIR = TDXF_VFS_DIR
VFS_FILE = TDXF_VFS_FILE
MAX_WINDOW = TDXW_MAX_WINDOW
if MAX_WINDOW > 8192:  # _py_ioctl's saved copy
    raise ImportError("csrc/transport/tdx_wire.h: TDXW_MAX_WINDOW grew past _py_ioctl's buffer")


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
    # An internal error must not reach the client's memory: the image is put back as it came.
    cdef unsigned char saved[8192]  # TDXW_MAX_WINDOW, which bounds call.window
    memcpy(saved, call.image, call.window)
    cdef object view = PyMemoryView_FromMemory(<char *>call.image, call.window, PyBUF_WRITE)
    cdef object bview = None
    try:
        if call.buf_image == NULL:
            return _py(ctx).ioctl(call.handle, call.pid, call.cmd, call.arg, view, call.readable,
                                  call.writable)
        # the request's embedded buffer (tdx_ops.h): passed only for the commands that have one
        bview = PyMemoryView_FromMemory(<char *>call.buf_image, call.buf_window, PyBUF_WRITE)
        return _py(ctx).ioctl(call.handle, call.pid, call.cmd, call.arg, view, call.readable,
                              call.writable, buffer=(call.buf, bview, call.buf_readable,
                                                     call.buf_writable, call.buf_ptr_off))
    except BaseException as e:
        memcpy(call.image, saved, call.window)
        if call.buf_image != NULL:  # nothing changed: tdxf_buffer_end writes nothing back
            memcpy(call.buf_image, call.buf_image + call.buf_window, call.buf_window)
        _sink(ctx, e)
        return -EIO
    finally:
        view.release()  # the image lives on a C stack: no reference may outlive the call
        if bview is not None:
            bview.release()


cdef long _fast_ioctl(void *ctx, tdxf_ioctl_call *call) noexcept nogil:
    cdef const tdxf_fastpath *f = (<_Ctx *>ctx).fast
    return f.ioctl(f.ctx, call)


cdef void _fast_interrupt(void *ctx, uint64_t handle, int on) noexcept nogil:
    cdef const tdxf_fastpath *f = (<_Ctx *>ctx).fast
    f.interrupt(f.ctx, handle, on)


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


# ---------------------------------------------------------------------------------- the served tree
cdef int _py_vfs_stat(void *ctx, const char *path, tdxf_vstat *out) noexcept with gil:
    try:
        r = _py(ctx).vfs_stat(path.decode("utf-8", "surrogateescape"))
        if isinstance(r, int):
            return r if r < 0 else -EINVAL
        out.type, out.mode, out.size = r
        return 0
    except BaseException as e:
        _sink(ctx, e)
        return -EIO


cdef int _py_vfs_mkdir(void *ctx, const char *path, unsigned mode, uint32_t pid) noexcept with gil:
    try:
        return _py(ctx).vfs_mkdir(path.decode("utf-8", "surrogateescape"), mode, pid)
    except BaseException as e:
        _sink(ctx, e)
        return -EIO


cdef int _py_vfs_rmdir(void *ctx, const char *path, uint32_t pid) noexcept with gil:
    try:
        return _py(ctx).vfs_rmdir(path.decode("utf-8", "surrogateescape"), pid)
    except BaseException as e:
        _sink(ctx, e)
        return -EIO


cdef long _py_vfs_readdir(void *ctx, const char *path, char *buf, size_t size) noexcept with gil:
    try:
        r = _py(ctx).vfs_readdir(path.decode("utf-8", "surrogateescape"))
        if isinstance(r, int):
            return r if r < 0 else -EINVAL
        data = b"".join((b"d" if is_dir else b"f") + name.encode("utf-8", "surrogateescape") + b"\0"
                        for name, is_dir in r)
        if <size_t>len(data) > size:
            return -ERANGE
        memcpy(buf, <const char *>data, len(data))
        return len(data)
    except BaseException as e:
        _sink(ctx, e)
        return -EIO


cdef int _py_vfs_open(void *ctx, const char *path, int flags, uint32_t pid,
                      uint64_t *handle) noexcept with gil:
    try:
        r = _py(ctx).vfs_open(path.decode("utf-8", "surrogateescape"), flags, pid)
        if r < 0:
            return r
        handle[0] = r
        return 0
    except BaseException as e:
        _sink(ctx, e)
        return -EIO


cdef long _py_vfs_read(void *ctx, uint64_t handle, char *buf, size_t size,
                       int64_t offset) noexcept with gil:
    try:
        r = _py(ctx).vfs_read(handle, size, offset)
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


cdef long _py_vfs_write(void *ctx, uint64_t handle, const char *buf, size_t size,
                        int64_t offset) noexcept with gil:
    try:
        return _py(ctx).vfs_write(handle, buf[:size], offset)
    except BaseException as e:
        _sink(ctx, e)
        return -EIO


cdef int64_t _py_vfs_lseek(void *ctx, uint64_t handle, int64_t offset, int whence) noexcept with gil:
    try:
        return _py(ctx).vfs_lseek(handle, offset, whence)
    except BaseException as e:
        _sink(ctx, e)
        return -EIO


cdef void _py_vfs_release(void *ctx, uint64_t handle) noexcept with gil:
    try:
        _py(ctx).vfs_release(handle)
    except BaseException as e:
        _sink(ctx, e)


cdef void _py_vfs_flush(void *ctx, uint64_t handle) noexcept with gil:
    try:
        _py(ctx).vfs_flush(handle)
    except BaseException as e:
        _sink(ctx, e)


_VFS_METHODS = ("vfs_stat", "vfs_mkdir", "vfs_rmdir", "vfs_readdir", "vfs_open", "vfs_read",
                "vfs_write", "vfs_lseek", "vfs_release", "vfs_flush")


cdef class DeviceServer:
    """DeviceServer(handler: object | None, device_path: str, fast_path: object | None = None)

    One served device: a file tree and a command -> window table, reachable through FUSE
    (fuse_mount/fuse_run/fuse_stop) and a Unix socket (socket_listen/socket_run/socket_stop).
    `handler` None is the null server (every ioctl returns 0 and changes nothing); otherwise an object
    with open(flags, pid) -> handle | -errno, release(handle), ioctl(handle, pid, cmd, arg, image,
    readable, writable) -> int, control_read(node, pid, size, offset) -> bytes | -errno,
    control_write(node, pid, data, offset) -> int, callback_error(exc), and optionally
    interrupt(handle, on: bool) (a FUSE client got a signal during its ioctl / that call ended) and
    the served tree (all of vfs_stat(path) -> (type, mode, size) | -errno, vfs_mkdir(path, mode,
    pid), vfs_rmdir(path, pid), vfs_readdir(path) -> [(name, is_dir)] | -errno, vfs_open(path,
    flags, pid) -> handle | -errno, vfs_read(handle, size, offset) -> bytes | -errno,
    vfs_write(handle, data, offset), vfs_lseek(handle, offset, whence), vfs_release(handle),
    vfs_flush(handle) (a close of one of its fds); an
    offset < 0 means the open file's position), served below NODE_VFS nodes.
    `fast_path` is an object whose fastpath() gives a tdxf_fastpath capsule (the core's DevicePath):
    ioctls and interrupts then run in C without the GIL. fuse_run and socket_run block (GIL
    released): call them from their own threads.
    """
    cdef tdxf_server *s
    cdef tdxf_handler ops
    cdef _Ctx ctx
    cdef readonly object handler
    cdef readonly object fast_path  # keeps the capsule's table alive as long as the server
    cdef bint mounted

    def __cinit__(self, handler, str device_path, fast_path=None):
        self.ctx.py = NULL
        self.ctx.fast = NULL
        if handler is None:
            if fast_path is not None:
                raise ValueError("the null server has no fast path")
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
            if fast_path is not None:
                self.ctx.fast = <const tdxf_fastpath *>PyCapsule_GetPointer(fast_path.fastpath(),
                                                                          TDXF_FASTPATH_CAPSULE)
                self.ops.ioctl = _fast_ioctl
                self.ops.interrupt = _fast_interrupt
            self.ops.control_read = _py_control_read
            self.ops.control_write = _py_control_write
            if all(callable(getattr(handler, name, None)) for name in _VFS_METHODS):
                self.ops.vfs_stat = _py_vfs_stat
                self.ops.vfs_mkdir = _py_vfs_mkdir
                self.ops.vfs_rmdir = _py_vfs_rmdir
                self.ops.vfs_readdir = _py_vfs_readdir
                self.ops.vfs_open = _py_vfs_open
                self.ops.vfs_read = _py_vfs_read
                self.ops.vfs_write = _py_vfs_write
                self.ops.vfs_lseek = _py_vfs_lseek
                self.ops.vfs_release = _py_vfs_release
                self.ops.vfs_flush = _py_vfs_flush
        self.handler = handler  # keeps ctx alive as long as the server
        self.fast_path = fast_path
        self.s = tdxf_server_new(&self.ops, device_path.encode())
        if self.s == NULL:
            raise MemoryError()

    def __dealloc__(self):
        # The daemon stops both transports before dropping the server.
        if self.s != NULL:
            tdxf_server_free(self.s)
            self.s = NULL

    def set_rdev(self, uint32_t major, uint32_t minor):
        """set_rdev(major: int, minor: int) -> None: the device number the preload library's stat
        answers for the node (sent in HELLO)."""
        tdxf_set_rdev(self.s, major, minor)

    def add_map(self, str client, str served, bint exact=False):
        """add_map(client: str, served: str, exact=False) -> None: the preload library forwards the
        absolute path `client` (and, unless exact, everything below it) to `served` of the served
        tree (sent in HELLO)."""
        if tdxf_add_map(self.s, client.encode(), served.encode(), exact) < 0:
            raise ValueError(f"map {client} -> {served}: the table is full or a path is too long")

    def set_window(self, uint64_t cmd, uint32_t window):
        """set_window(cmd: int, window: int) -> None: bytes the driver may touch from arg for cmd."""
        if tdxf_set_window(self.s, cmd, window) < 0:
            raise ValueError(f"window: {window} exceeds {TDXW_MAX_WINDOW} or the table is full")

    def set_buffer(self, uint64_t cmd, uint32_t ptr_off, uint32_t len_off):
        """set_buffer(cmd: int, ptr_off: int, len_off: int) -> None: cmd's request embeds a u64
        pointer at ptr_off and a u64 length at len_off; that buffer is mirrored too (tdx_ops.h)."""
        if tdxf_set_buffer(self.s, cmd, ptr_off, len_off) < 0:
            raise ValueError(f"buffer fields at {ptr_off}, {len_off} out of the window, or the table is full")

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
                "client_gone": c.client_gone, "malformed": c.malformed}
