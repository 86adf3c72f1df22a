# Declarations of csrc/transport/tdx_ops.h: the device interface the transports call.
from libc.stdint cimport int64_t, uint32_t, uint64_t, uint8_t
from posix.types cimport off_t

cdef extern from "tdx_ops.h" nogil:
    ctypedef struct tdxf_ioctl_call:
        uint64_t handle
        uint32_t pid
        uint64_t cmd
        uint64_t arg
        uint8_t *image
        uint32_t window
        uint32_t readable
        uint32_t writable
        uint64_t buf
        uint8_t *buf_image
        uint32_t buf_window
        uint32_t buf_readable
        uint32_t buf_writable
        uint32_t buf_ptr_off

    enum:
        TDXF_VFS_DIR
        TDXF_VFS_FILE

    ctypedef struct tdxf_vstat:
        uint32_t type
        uint32_t mode
        uint64_t size

    ctypedef struct tdxf_handler:
        void *ctx
        int (*open)(void *ctx, int flags, uint32_t pid, uint64_t *handle) noexcept
        void (*release)(void *ctx, uint64_t handle) noexcept
        long (*ioctl)(void *ctx, tdxf_ioctl_call *call) noexcept
        int (*control_read)(void *ctx, int node, uint32_t pid, char *buf, size_t size, off_t offset) noexcept
        int (*control_write)(void *ctx, int node, uint32_t pid, const char *buf, size_t size,
                             off_t offset) noexcept
        void (*interrupt)(void *ctx, uint64_t handle, int on) noexcept
        int (*vfs_stat)(void *ctx, const char *path, tdxf_vstat *out) noexcept
        int (*vfs_mkdir)(void *ctx, const char *path, unsigned mode, uint32_t pid) noexcept
        int (*vfs_rmdir)(void *ctx, const char *path, uint32_t pid) noexcept
        long (*vfs_readdir)(void *ctx, const char *path, char *buf, size_t size) noexcept
        int (*vfs_open)(void *ctx, const char *path, int flags, uint32_t pid, uint64_t *handle) noexcept
        long (*vfs_read)(void *ctx, uint64_t handle, char *buf, size_t size, int64_t offset) noexcept
        long (*vfs_write)(void *ctx, uint64_t handle, const char *buf, size_t size, int64_t offset) noexcept
        int64_t (*vfs_lseek)(void *ctx, uint64_t handle, int64_t offset, int whence) noexcept
        void (*vfs_release)(void *ctx, uint64_t handle) noexcept
        void (*vfs_flush)(void *ctx, uint64_t handle) noexcept

    ctypedef struct tdxf_fastpath:
        void *ctx
        long (*ioctl)(void *ctx, tdxf_ioctl_call *call) noexcept nogil
        void (*interrupt)(void *ctx, uint64_t handle, int on) noexcept nogil

    const char *TDXF_FASTPATH_CAPSULE
