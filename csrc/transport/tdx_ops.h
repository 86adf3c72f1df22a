/*
 * tdx_ops.h - the interface between a transport (FUSE, socket) and the device it serves.
 *
 * The request model: an ioctl is (cmd, arg) plus a mirror of the client's memory from arg on, over
 * the "window" of bytes the driver may touch for that cmd. The mirror records how many bytes from
 * arg the client can read and write, so the device can reproduce the client's page permissions in
 * the emulated Process's user memory (the page offset of arg is kept, so faults fall on the same
 * byte). After the call the transport writes back the bytes the device changed.
 *
 * A device is a table of callbacks (tdxf_handler). The transport extension fills it with Python
 * callbacks (called with the GIL) or the null handler; the C core may supply the ioctl and
 * interrupt entries itself (tdxf_fastpath, csrc/tdx_devpath.h), so the hot path needs no GIL. A
 * command whose request embeds a pointer to a buffer (tdxf_set_buffer) also gets that buffer
 * mirrored, through the client's pid (the daemon runs as root: tdx_usercopy.h). Header
 * only: the core includes it without linking the transport.
 */
#ifndef TDX_OPS_H
#define TDX_OPS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    uint64_t handle;   /* what open() returned for this open file */
    uint32_t pid;      /* client process (FUSE request tgid, or SO_PEERCRED pid) */
    uint64_t cmd;
    uint64_t arg;      /* the client's raw arg */
    uint8_t *image;    /* mirror of client bytes [arg, arg + window); the device updates it in place */
    uint32_t window;
    uint32_t readable; /* client bytes readable from arg (<= window) */
    uint32_t writable; /* client bytes writable from arg (<= readable) */
    /* A command with an embedded buffer pointer (the get_quote commands: {u64 buf; u64 len; ...},
     * ref §2.2, quote.md §2.6): a mirror of client bytes [buf, buf + PAGE_ALIGN(len)), read and
     * written back by the transport like the window. buf_image NULL: none. */
    uint64_t buf;          /* the client's pointer, as the request holds it */
    uint8_t *buf_image;
    uint32_t buf_window, buf_readable, buf_writable;
    uint32_t buf_ptr_off;  /* where the pointer sits in the request (the device points it at its mirror) */
} tdxf_ioctl_call;

/* What stat says of a path of the served tree. */
enum { TDXF_VFS_DIR = 1, TDXF_VFS_FILE = 2 };
typedef struct {
    uint32_t type; /* TDXF_VFS_DIR or TDXF_VFS_FILE */
    uint32_t mode; /* permission bits */
    uint64_t size;
} tdxf_vstat;

/* What the transports call. Every function may be called from many threads at once. */
typedef struct {
    void *ctx;
    /* open the device for a client: 0 and *handle, or -errno */
    int (*open)(void *ctx, int flags, uint32_t pid, uint64_t *handle);
    void (*release)(void *ctx, uint64_t handle);
    /* run one ioctl: 0 / positive, or -errno; may change image[0 .. writable) */
    long (*ioctl)(void *ctx, tdxf_ioctl_call *call);
    /* control files (FUSE only): bytes read / written, or -errno */
    int (*control_read)(void *ctx, int node, uint32_t pid, char *buf, size_t size, off_t offset);
    int (*control_write)(void *ctx, int node, uint32_t pid, const char *buf, size_t size,
                         off_t offset);
    /* FUSE only, may be NULL: the client of the ioctl in progress on `handle` got a signal (on = 1;
     * called from another thread while ioctl runs), or that call has ended (on = 0). The emulated
     * task sees a pending signal in between: 6.16's mr_lock_interruptible gives -EINTR (ref §2.5). */
    void (*interrupt)(void *ctx, uint64_t handle, int on);
    /* The served tree beside the node table: the configfs-tsm tree (both transports) and, for the
     * socket, the control files too. Paths are relative to the mount ("tsm/report/q/inblob").
     * Each may be NULL (the null handler): the tree is then empty. */
    int (*vfs_stat)(void *ctx, const char *path, tdxf_vstat *out);
    int (*vfs_mkdir)(void *ctx, const char *path, unsigned mode, uint32_t pid);
    int (*vfs_rmdir)(void *ctx, const char *path, uint32_t pid);
    /* the entries' names, each NUL-terminated, into buf: bytes used, or -errno (-ERANGE: too many) */
    long (*vfs_readdir)(void *ctx, const char *path, char *buf, size_t size);
    /* one open file of the path (its last close is vfs_release): 0 and *handle, or -errno */
    int (*vfs_open)(void *ctx, const char *path, int flags, uint32_t pid, uint64_t *handle);
    /* at offset, or at (and moving) the open file's position when offset < 0: bytes or -errno */
    long (*vfs_read)(void *ctx, uint64_t handle, char *buf, size_t size, int64_t offset);
    long (*vfs_write)(void *ctx, uint64_t handle, const char *buf, size_t size, int64_t offset);
    /* the open file's position: whence SEEK_SET / SEEK_CUR / SEEK_END; the new position or -errno */
    int64_t (*vfs_lseek)(void *ctx, uint64_t handle, int64_t offset, int whence);
    void (*vfs_release)(void *ctx, uint64_t handle);
    /* a close(2) of one of the open file's fds (FUSE FLUSH; the preload library's close): the
     * release that follows a last close is asynchronous on both transports, so the handler makes
     * the client's next call on the tree wait for it */
    void (*vfs_flush)(void *ctx, uint64_t handle);
} tdxf_handler;

/* The entries a device implemented in C lends the transport (no GIL). Passed between the two
 * extension modules in a PyCapsule named TDXF_FASTPATH_CAPSULE. */
typedef struct {
    void *ctx;
    long (*ioctl)(void *ctx, tdxf_ioctl_call *call);
    void (*interrupt)(void *ctx, uint64_t handle, int on);
} tdxf_fastpath;

#define TDXF_FASTPATH_CAPSULE "tdxmodel.tdxf_fastpath"

#endif /* TDX_OPS_H */
