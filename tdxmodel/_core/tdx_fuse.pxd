# Declarations of csrc/tdx_fuse.h (layer 2): only what fuse.pxi uses. Omitted: the wire structs
# (tdxw_*), which only the preload library and tdxmodel/transport/protocol.py speak.
from libc.stdint cimport uint32_t, uint64_t, uint8_t
from posix.types cimport off_t, pid_t

cdef extern from "tdx_fuse.h" nogil:
    const unsigned TDXW_MAX_WINDOW

    ctypedef struct tdxf_ioctl_call:
        uint64_t handle
        uint32_t pid
        uint64_t cmd
        uint64_t arg
        uint8_t *image
        uint32_t window
        uint32_t readable
        uint32_t writable

    ctypedef struct tdxf_handler:
        void *ctx
        int (*open)(void *ctx, int flags, uint32_t pid, uint64_t *handle) noexcept
        void (*release)(void *ctx, uint64_t handle) noexcept
        long (*ioctl)(void *ctx, tdxf_ioctl_call *call) noexcept
        int (*control_read)(void *ctx, int node, uint32_t pid, char *buf, size_t size, off_t offset) noexcept
        int (*control_write)(void *ctx, int node, uint32_t pid, const char *buf, size_t size,
                             off_t offset) noexcept
        void (*interrupt)(void *ctx, uint64_t handle, int on) noexcept

    const tdxf_handler tdxf_null_handler

    enum:
        TDXF_NODE_DIR
        TDXF_NODE_DEVICE
        TDXF_NODE_CONTROL

    ctypedef struct tdxf_server:
        pass

    tdxf_server *tdxf_server_new(const tdxf_handler *handler, const char *device_path)
    void tdxf_server_free(tdxf_server *s)
    int tdxf_set_window(tdxf_server *s, uint64_t cmd, uint32_t window)
    uint32_t tdxf_window(const tdxf_server *s, uint64_t cmd)
    long tdxf_add_node(tdxf_server *s, uint64_t parent, const char *name, int kind, unsigned mode,
                       uint64_t size, int node_id)
    int tdxf_fuse_mount(tdxf_server *s, const char *mountpoint, const char *options, int max_threads)
    int tdxf_fuse_run(tdxf_server *s)
    void tdxf_fuse_stop(tdxf_server *s)
    int tdxf_socket_listen(tdxf_server *s, const char *path, unsigned mode)
    int tdxf_socket_run(tdxf_server *s)
    void tdxf_socket_stop(tdxf_server *s)

    ctypedef struct tdxf_counters:
        uint64_t fuse_ioctls, socket_ioctls, opens, releases, vm_reads, vm_writes, client_gone
    void tdxf_get_counters(const tdxf_server *s, tdxf_counters *out)

    uint32_t tdxf_vm_read(pid_t pid, uint64_t addr, uint8_t *out, uint32_t len)
    uint32_t tdxf_vm_write(pid_t pid, uint64_t addr, const uint8_t *data, uint32_t len)

    # core fast path
    unsigned long long TDXF_USER_BASE
    unsigned TDXF_MIRROR_PAGES
    ctypedef struct tdxf_core:
        pass
    tdxf_core *tdxf_core_new(unsigned max_files)
    void tdxf_core_free(tdxf_core *c)
    long tdxf_core_register(tdxf_core *c, void *p, int fd)
    void tdxf_core_unregister(tdxf_core *c, uint64_t handle)
    void tdxf_core_interrupt(tdxf_core *c, uint64_t handle, int on)
    long tdxf_core_ioctl(tdxf_core *c, tdxf_ioctl_call *call) noexcept
    unsigned tdxf_core_fail_nth_arm(tdxf_core *c)
    void tdxf_core_fail_nth_disarm(tdxf_core *c, unsigned left)
    void tdxf_core_fail_nth_set(tdxf_core *c, unsigned n)
    unsigned tdxf_core_fail_nth_get(tdxf_core *c)
