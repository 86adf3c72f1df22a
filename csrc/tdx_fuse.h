/*
 * tdx_fuse.h - serve an emulated tdx_guest device to unmodified programs (layer 4, C part).
 *
 * Two transports share one request model and one handler interface:
 *   - a FUSE file system (libfuse3 low-level API, multithreaded loop) holding the device file, the
 *     6.16 measurement files and the fault-injection control files;
 *   - a Unix stream socket spoken by the LD_PRELOAD library (csrc/preload/tdx_preload.c).
 *
 * The request model: an ioctl is (cmd, arg) plus a mirror of the client's memory from arg on, over
 * the "window" of bytes the driver may touch for that cmd (tdxf_window). The mirror records how many
 * bytes from arg the client can read and write, so the handler can reproduce the client's page
 * permissions in the emulated Process's user memory (the page offset of arg is kept, so faults fall
 * on the same byte). After the call the bytes the handler changed are written back to the client.
 *
 * The wire format of the socket (struct tdxw_*) is plain C so the preload library can include this
 * header without libfuse. It is a host-local protocol: native byte order, no versioning beyond
 * TDXW_VERSION. tdxmodel/transport/protocol.py documents it for Python.
 */
#ifndef TDX_FUSE_H
#define TDX_FUSE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ------------------------------------------------------------------------------------------ wire */

#define TDXW_MAGIC 0x4D584454u /* "TDXM" */
#define TDXW_VERSION 1u
#define TDXW_MAX_WINDOW 8192u  /* largest mirror a request may carry (the drivers need <= 1088) */
#define TDXW_MAX_PATH 256u
#define TDXW_MAX_WINDOWS 16u

enum tdxw_op {
    TDXW_OP_HELLO = 0, /* -> tdxw_hello: device path and the window of each known cmd */
    TDXW_OP_OPEN = 1,  /* payload: tdxw_open; the connection becomes one open file of the device */
    TDXW_OP_IOCTL = 2, /* payload: tdxw_ioctl + readable bytes; reply tdxw_ioctl_reply + changed bytes */
};

struct tdxw_header {
    uint32_t magic;
    uint16_t version;
    uint16_t op;
    uint32_t length; /* bytes of payload after this header */
};

struct tdxw_window {
    uint64_t cmd;
    uint32_t window;
    uint32_t pad;
};

struct tdxw_hello {
    char device_path[TDXW_MAX_PATH]; /* NUL-terminated: the node the preload library intercepts */
    uint32_t nwindows;
    uint32_t pad;
    struct tdxw_window windows[TDXW_MAX_WINDOWS];
};

struct tdxw_open {
    int32_t flags; /* the client's open(2) flags */
    uint32_t pad;
};

struct tdxw_ioctl {
    uint64_t cmd;
    uint64_t arg;      /* the client's raw pointer: its page offset is kept in the emulated mirror */
    uint32_t window;   /* bytes of the mirror the client asked about */
    uint32_t readable; /* bytes from arg the client could read (<= window); that many follow */
    uint32_t writable; /* bytes from arg the client could write (<= readable) */
    uint32_t pad;
};

struct tdxw_reply {
    int64_t result;    /* 0 / positive, or -errno; also the reply to OPEN */
    uint32_t wb_offset; /* the changed bytes start at arg + wb_offset ... */
    uint32_t wb_length; /* ... and that many follow this struct */
};

/* ------------------------------------------------------------------------------------- handler */

typedef struct {
    uint64_t handle;   /* what open() returned for this open file */
    uint32_t pid;      /* client process (FUSE request tgid, or SO_PEERCRED pid) */
    uint64_t cmd;
    uint64_t arg;      /* the client's raw arg */
    uint8_t *image;    /* mirror of client bytes [arg, arg + window); the handler updates it in place */
    uint32_t window;
    uint32_t readable; /* client bytes readable from arg (<= window) */
    uint32_t writable; /* client bytes writable from arg (<= readable) */
} tdxf_ioctl_call;

/* What the transports call. Every function may be called from many threads at once. For the Python
 * handler they acquire the GIL; the null handler (benchmarks) does nothing and never blocks. */
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
} tdxf_handler;

/* The null handler: open gives handle 0, ioctl returns 0 and changes nothing. */
extern const tdxf_handler tdxf_null_handler;

/* ---------------------------------------------------------------------------------------- device */

enum tdxf_node_kind { TDXF_NODE_DIR = 0, TDXF_NODE_DEVICE = 1, TDXF_NODE_CONTROL = 2 };

typedef struct tdxf_server tdxf_server;

/* A server: one handler, a file tree (for FUSE) and a cmd -> window table (for both transports).
 * Returns NULL on allocation failure. */
tdxf_server *tdxf_server_new(const tdxf_handler *handler, const char *device_path);
void tdxf_server_free(tdxf_server *s); /* the transports must be stopped first */

/* Bytes the driver may touch from arg for cmd (0 for unknown commands: the driver touches none).
 * Returns 0, or -EINVAL when the table is full or the window exceeds TDXW_MAX_WINDOW. */
int tdxf_set_window(tdxf_server *s, uint64_t cmd, uint32_t window);
uint32_t tdxf_window(const tdxf_server *s, uint64_t cmd);

/* Add a node under parent (1 = the mount's root). Returns its inode number (>= 2) or -errno.
 * Control nodes carry `node_id`, passed to control_read/control_write. Files report size `size`
 * (reads are direct: the handler decides how much is there). */
long tdxf_add_node(tdxf_server *s, uint64_t parent, const char *name, int kind, unsigned mode,
                   uint64_t size, int node_id);

/* FUSE: mount on `mountpoint` and run the multithreaded loop until tdxf_fuse_stop (call from a
 * dedicated thread, without the GIL). `options` is a comma-separated libfuse -o string or NULL.
 * tdxf_fuse_mount returns 0 or -errno; tdxf_fuse_run returns the loop's result. */
int tdxf_fuse_mount(tdxf_server *s, const char *mountpoint, const char *options, int max_threads);
int tdxf_fuse_run(tdxf_server *s);
/* Make the loop return and unmount (safe from any thread, idempotent). */
void tdxf_fuse_stop(tdxf_server *s);

/* Socket: bind and listen on `path` with `mode` (0 keeps umask's), then serve until
 * tdxf_socket_stop: tdxf_socket_run accepts and starts one thread per connection. */
int tdxf_socket_listen(tdxf_server *s, const char *path, unsigned mode);
int tdxf_socket_run(tdxf_server *s);
void tdxf_socket_stop(tdxf_server *s);

/* Counters for tests and benchmarks. */
typedef struct {
    uint64_t fuse_ioctls, socket_ioctls, opens, releases, vm_reads, vm_writes, client_gone;
} tdxf_counters;
void tdxf_get_counters(const tdxf_server *s, tdxf_counters *out);

/* ------------------------------------------------------------------- core fast path (no GIL) */

/* The ioctl hot path on the C core (csrc/tdx_driver.h), without Python: each open file of the device
 * is registered as (emulated process, emulated fd); tdxf_core_ioctl mirrors the client's memory into
 * that process at TDXF_USER_BASE + the page offset of arg (with the client's permissions), runs
 * td_ioctl and reads the result back. fail-nth armed through DIR/fail-nth lives here so both this
 * path and the Python control path count the same points. */
#define TDXF_USER_BASE 0x7E0000000000ull
#define TDXF_MIRROR_PAGES 3u /* a window of <= 8192 bytes at any offset spans <= 3 pages */
struct td_process;
typedef struct tdxf_core tdxf_core;
tdxf_core *tdxf_core_new(unsigned max_files);
void tdxf_core_free(tdxf_core *c);
/* the process must have TDXF_MIRROR_PAGES pages mapped rw at TDXF_USER_BASE; handle >= 1 or -EMFILE */
long tdxf_core_register(tdxf_core *c, struct td_process *p, int fd);
/* waits for a call in progress on the handle; afterwards the process may be closed */
void tdxf_core_unregister(tdxf_core *c, uint64_t handle);
long tdxf_core_ioctl(tdxf_core *c, tdxf_ioctl_call *call);
/* the emulated task of `handle` gets (on = 1) or loses (on = 0) a pending signal */
void tdxf_core_interrupt(tdxf_core *c, uint64_t handle, int on);
/* daemon-wide fail-nth: arm takes the pending count (0 if none) for one syscall; disarm gives back
 * what that syscall left unreached (ref §7: the count runs on across calls until it fires). */
unsigned tdxf_core_fail_nth_arm(tdxf_core *c);
void tdxf_core_fail_nth_disarm(tdxf_core *c, unsigned left);
void tdxf_core_fail_nth_set(tdxf_core *c, unsigned n);
unsigned tdxf_core_fail_nth_get(tdxf_core *c);

/* Mirror helpers shared with the preload library's logic (exposed for tests):
 * bytes of [addr, addr+len) of process pid readable from addr on (a fault stops the count). */
uint32_t tdxf_vm_read(pid_t pid, uint64_t addr, uint8_t *out, uint32_t len);
/* Write-back the same bytes to learn how many are writable (the client is blocked in the call). */
uint32_t tdxf_vm_probe_write(pid_t pid, uint64_t addr, const uint8_t *same, uint32_t len);
uint32_t tdxf_vm_write(pid_t pid, uint64_t addr, const uint8_t *data, uint32_t len);

#endif /* TDX_FUSE_H */
