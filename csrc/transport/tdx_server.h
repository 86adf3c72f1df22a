/*
 * tdx_server.h - one served device for `tdxmodel serve` (layer 4, C part): a handler (tdx_ops.h), a
 * file tree for FUSE (tdx_fuse.h), a cmd -> window table for both transports, counters, and the
 * rate-limited log of bad client input. The transports are tdx_fuse.c and tdx_socket.c; the wire
 * format of the socket is tdx_wire.h; client-memory copies are tdx_usercopy.h.
 */
#ifndef TDX_SERVER_H
#define TDX_SERVER_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/un.h>
#include <time.h>

#include "tdx_ops.h"
#include "tdx_wire.h"

/* The null handler: open gives handle 0, ioctl returns 0 and changes nothing (benchmarks). */
extern const tdxf_handler tdxf_null_handler;

/* TDXF_NODE_VFS: a directory whose subtree (itself included) is the handler's served tree
 * (tdx_ops.h vfs_*), looked up by path on every access: the configfs-tsm tree, which changes with
 * every mkdir and rmdir. */
enum tdxf_node_kind { TDXF_NODE_DIR = 0, TDXF_NODE_DEVICE = 1, TDXF_NODE_CONTROL = 2, TDXF_NODE_VFS = 3 };

/* Inodes of the served tree below a TDXF_NODE_VFS node: TDXF_VINO_BASE + n, one per path the kernel
 * holds (lookup counts), dropped at FORGET. */
#define TDXF_VINO_BASE (1ull << 32)
#define TDXF_VPATH_MAX 4096

typedef struct {
    uint64_t ino;
    uint64_t nlookup;
    char *path;
} tdxf_vnode;

#define TDXF_MAX_NODES 64
#define TDXF_MAX_CONNS 1024
#define TDXF_NAME_MAX 64

/* Bad client input is logged, never fatal (QEMU's LOG_GUEST_ERROR): at most TDXF_LOG_BURST lines
 * per TDXF_LOG_WINDOW seconds, then one line saying the rest of the window is suppressed; the next
 * line after the window counts what was suppressed. */
#define TDXF_LOG_BURST 10u
#define TDXF_LOG_WINDOW 10

typedef struct {
    char name[TDXF_NAME_MAX];
    uint64_t parent;
    int kind;
    unsigned mode;
    uint64_t size;
    int node_id;
} tdxf_node;

/* Only the transport C files touch the fields; everyone else uses the functions below. */
typedef struct tdxf_server {
    tdxf_handler handler;
    char device_path[TDXW_MAX_PATH];
    struct tdxw_window windows[TDXW_MAX_WINDOWS];
    uint32_t nwindows;
    struct tdxw_map maps[TDXW_MAX_MAPS]; /* the paths the preload library forwards (HELLO) */
    uint32_t nmaps;
    struct { uint64_t cmd; uint32_t ptr_off, len_off; } buffers[TDXW_MAX_WINDOWS];
    uint32_t nbuffers;
    uint32_t rdev_major, rdev_minor;
    tdxf_node nodes[TDXF_MAX_NODES]; /* nodes[i] has inode i + 1; nodes[0] is the root */
    int nnodes;
    struct timespec started;
    /* FUSE (tdx_fuse.c) */
    struct fuse_session *se;
    int max_threads;
    atomic_int fuse_stopping;
    atomic_int loop_running;
    pthread_t loop_thread;
    pthread_mutex_t stop_lock;
    /* the served tree's inodes (tdx_fuse.c) */
    pthread_mutex_t vnode_lock;
    tdxf_vnode *vnodes;
    size_t nvnodes, vnode_cap;
    uint64_t next_vino;
    /* socket (tdx_socket.c) */
    int listen_fd;
    atomic_int socket_stopping;
    atomic_int socket_threads;
    pthread_mutex_t conn_lock;
    int conn_fds[TDXF_MAX_CONNS]; /* open connections, -1 when free: stop shuts them down */
    char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    /* the log of bad client input */
    pthread_mutex_t log_lock;
    struct timespec log_window;
    uint32_t log_lines;
    uint64_t log_suppressed;
    /* counters */
    atomic_uint_fast64_t c_fuse_ioctls, c_socket_ioctls, c_opens, c_releases, c_vm_reads, c_vm_writes,
        c_client_gone, c_malformed;
} tdxf_server;

/* A server: one handler and the node the preload library intercepts. NULL on allocation failure. */
tdxf_server *tdxf_server_new(const tdxf_handler *handler, const char *device_path);
void tdxf_server_free(tdxf_server *s); /* the transports must be stopped first */

/* Bytes the driver may touch from arg for cmd (0 for unknown commands: the driver touches none).
 * Returns 0, or -EINVAL when the table is full or the window exceeds TDXW_MAX_WINDOW. */
int tdxf_set_window(tdxf_server *s, uint64_t cmd, uint32_t window);
uint32_t tdxf_window(const tdxf_server *s, uint64_t cmd);
/* cmd's request embeds {u64 pointer at ptr_off; u64 length at len_off} (the get_quote commands):
 * the transports mirror [pointer, pointer + PAGE_ALIGN(length)) of the client too, at most
 * TDXF_MAX_BUFFER bytes (a longer buffer is not mirrored: the drivers refuse it, -ENOMEM, before
 * touching it). 0, or -ENOSPC / -EINVAL. */
#define TDXF_MAX_BUFFER (4096u << 10)
int tdxf_set_buffer(tdxf_server *s, uint64_t cmd, uint32_t ptr_off, uint32_t len_off);
/* Around handler.ioctl: begin reads the buffer of call (whose window image is filled) from the
 * client into a new mirror (call->buf_image, NULL when cmd has none or the request does not reach
 * its fields); end writes back the bytes the device changed and frees it. */
void tdxf_buffer_begin(tdxf_server *s, tdxf_ioctl_call *call);
void tdxf_buffer_end(tdxf_server *s, tdxf_ioctl_call *call);
/* The device number stat answers for the node under the preload library (HELLO). */
void tdxf_set_rdev(tdxf_server *s, uint32_t major, uint32_t minor);
/* A client path the preload library forwards to the served tree (tdx_wire.h tdxw_map). 0 or -EINVAL
 * (the table is full, a path too long). */
int tdxf_add_map(tdxf_server *s, const char *client, const char *served, int exact);
/* The HELLO reply: device path, the device node's mode, rdev, start time and the window table. */
void tdxf_fill_hello(const tdxf_server *s, struct tdxw_hello *out);

/* Add a node under parent (1 = the mount's root). Returns its inode number (>= 2) or -errno.
 * Control nodes carry `node_id`, passed to control_read/control_write. Files report size `size`
 * (reads are direct: the handler decides how much is there). */
long tdxf_add_node(tdxf_server *s, uint64_t parent, const char *name, int kind, unsigned mode,
                   uint64_t size, int node_id);

/* One line on stderr about bad input from client `pid`, rate-limited as described above. */
void tdxf_log_client_error(tdxf_server *s, uint32_t pid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Counters for tests and benchmarks. */
typedef struct {
    uint64_t fuse_ioctls, socket_ioctls, opens, releases, vm_reads, vm_writes, client_gone, malformed;
} tdxf_counters;
void tdxf_get_counters(const tdxf_server *s, tdxf_counters *out);

#endif /* TDX_SERVER_H */
