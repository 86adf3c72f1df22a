# The served device's ioctl path without the GIL (csrc/tdx_devpath.h). `tdxmodel serve` hands it to
# the transport extension (tdxmodel.transport._server.DeviceServer) as a table of C functions in a
# PyCapsule, so the core links no transport code and the transport needs no core. Layer 2: thin.

from cpython.pycapsule cimport PyCapsule_New

from tdxmodel._core.tdx_devpath cimport *

USER_BASE = TDXF_USER_BASE
MIRROR_PAGES = TDXF_MIRROR_PAGES
BUF_BASE = TDXF_BUF_BASE


cdef class DevicePath:
    """DevicePath(max_files: int = 4096)

    Open files of the served device, each an (emulated Process, fd) of this core, whose ioctls the
    transport runs in C (``fastpath()``). It also holds the daemon-wide pending fail-nth, so this path
    and the Python control path count the same points."""
    cdef tdxf_core *c
    cdef dict _processes  # handle -> Process: alive while registered

    def __cinit__(self, unsigned max_files=4096):
        self.c = tdxf_core_new(max_files)
        if self.c == NULL:
            raise MemoryError()
        self._processes = {}

    def __dealloc__(self):
        # A DeviceServer holding our table keeps a reference to us: it is gone first.
        if self.c != NULL:
            tdxf_core_free(self.c)
            self.c = NULL

    def fastpath(self):
        """fastpath() -> PyCapsule: the ioctl/interrupt table (tdxf_fastpath) for the transport;
        valid as long as this object."""
        return PyCapsule_New(<void *>tdxf_core_fastpath(self.c), TDXF_FASTPATH_CAPSULE, NULL)

    def core_register(self, process, int fd):
        """core_register(process: core Process, fd: int) -> int handle: route this open file's ioctls
        through the nogil path. The process must map MIRROR_PAGES pages rw at USER_BASE and stay
        alive until core_unregister."""
        cdef void *proc
        cdef long r
        if not isinstance(process, Process):
            raise TypeError("process must be a core backend Process")
        proc = <void *>(<Process>process)._live()
        # without the GIL: a slot's lock may be held by an ioctl waiting for mr_lock, whose holder
        # (a measurement write through the control path) needs the GIL to go on (a soak hung so)
        with nogil:
            r = tdxf_core_register(self.c, proc, fd)
        if r < 0:
            raise OSError(-r, "too many open device files")
        self._processes[r] = process
        return r

    def core_unregister(self, unsigned long long handle):
        """core_unregister(handle: int) -> None: waits for a call in progress on it."""
        with nogil:
            tdxf_core_unregister(self.c, handle)
        self._processes.pop(handle, None)

    def fail_nth_arm(self):
        """fail_nth_arm() -> int: take the daemon-wide pending fail-nth for one syscall."""
        return tdxf_core_fail_nth_arm(self.c)

    def fail_nth_disarm(self, unsigned left):
        tdxf_core_fail_nth_disarm(self.c, left)

    def fail_nth_set(self, unsigned n):
        tdxf_core_fail_nth_set(self.c, n)

    def fail_nth_get(self):
        return tdxf_core_fail_nth_get(self.c)
