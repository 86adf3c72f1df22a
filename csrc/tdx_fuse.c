/*
 * tdx_fuse.c - the FUSE file system and the Unix-socket server of `tdxmodel serve` (see tdx_fuse.h).
 *
 * FUSE gives a regular file only "restricted" ioctls: the kernel copies in and out exactly the size
 * encoded in the command (ref §1, bits 29:16), before and after the request reaches us. Where that
 * size covers the driver's window (v6.2/v6.16: TDX_CMD_GET_REPORT0 encodes 1088, the driver uses
 * 1088, ref §2.4) we use FUSE's buffers. Where it does not (v4: TDX_CMD_GET_TDREPORT encodes 8 but
 * the driver reads 64 and writes 1024 in place, ref §2.2) we read and write the client's memory at
 * its raw `arg` with process_vm_readv/process_vm_writev (the daemon runs as root), which fault byte
 * for byte as copy_from_user/copy_to_user do.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312

#include "tdx_fuse.h"
#include "tdx_driver.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TDXF_MAX_NODES 64
#define TDXF_MAX_CONNS 1024
#define TDXF_NAME_MAX 64
/* x86-64 host pages are the TDX page size, so the mirror keeps the client's page layout */
#define TDXF_PAGE ((uint32_t)TDX_PAGE_SIZE)
/* Largest control-file read we serve in one request (measurement files are 48 bytes). */
#define TDXF_MAX_CONTROL_IO (64u * 1024u)

typedef struct {
    char name[TDXF_NAME_MAX];
    uint64_t parent;
    int kind;
    unsigned mode;
    uint64_t size;
    int node_id;
} tdxf_node;

struct tdxf_server {
    tdxf_handler handler;
    char device_path[TDXW_MAX_PATH];
    struct tdxw_window windows[TDXW_MAX_WINDOWS];
    uint32_t nwindows;
    tdxf_node nodes[TDXF_MAX_NODES]; /* nodes[i] has inode i + 1; nodes[0] is the root */
    int nnodes;
    struct timespec started;
    /* FUSE */
    struct fuse_session *se;
    int max_threads;
    atomic_int fuse_stopping;
    pthread_mutex_t stop_lock;
    /* socket */
    int listen_fd;
    atomic_int socket_stopping;
    atomic_int socket_threads;
    pthread_mutex_t conn_lock;
    int conn_fds[TDXF_MAX_CONNS]; /* open connections, -1 when free: stop shuts them down */
    char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    /* counters */
    atomic_uint_fast64_t c_fuse_ioctls, c_socket_ioctls, c_opens, c_releases, c_vm_reads, c_vm_writes,
        c_client_gone;
};

/* ---------------------------------------------------------------------------------- null handler */

static int null_open(void *ctx, int flags, uint32_t pid, uint64_t *handle)
{
    (void)ctx, (void)flags, (void)pid;
    *handle = 0;
    return 0;
}
static void null_release(void *ctx, uint64_t handle) { (void)ctx, (void)handle; }
static long null_ioctl(void *ctx, tdxf_ioctl_call *call) { (void)ctx, (void)call; return 0; }
static int null_control_read(void *ctx, int node, uint32_t pid, char *buf, size_t size, off_t off)
{
    (void)ctx, (void)node, (void)pid, (void)buf, (void)size, (void)off;
    return 0;
}
static int null_control_write(void *ctx, int node, uint32_t pid, const char *buf, size_t size,
                              off_t off)
{
    (void)ctx, (void)node, (void)pid, (void)buf, (void)off;
    return (int)size;
}

const tdxf_handler tdxf_null_handler = {NULL, null_open, null_release, null_ioctl, null_control_read,
                                        null_control_write, NULL};

/* ------------------------------------------------------------------------------ server and nodes */

tdxf_server *tdxf_server_new(const tdxf_handler *handler, const char *device_path)
{
    tdxf_server *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->handler = *handler;
    snprintf(s->device_path, sizeof(s->device_path), "%s", device_path ? device_path : "");
    s->nodes[0].kind = TDXF_NODE_DIR;
    s->nodes[0].mode = 0755;
    s->nnodes = 1;
    s->listen_fd = -1;
    pthread_mutex_init(&s->stop_lock, NULL);
    pthread_mutex_init(&s->conn_lock, NULL);
    for (int i = 0; i < TDXF_MAX_CONNS; i++)
        s->conn_fds[i] = -1;
    clock_gettime(CLOCK_REALTIME, &s->started);
    return s;
}

void tdxf_server_free(tdxf_server *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->stop_lock);
    pthread_mutex_destroy(&s->conn_lock);
    free(s);
}

int tdxf_set_window(tdxf_server *s, uint64_t cmd, uint32_t window)
{
    if (window > TDXW_MAX_WINDOW)
        return -EINVAL;
    for (uint32_t i = 0; i < s->nwindows; i++)
        if (s->windows[i].cmd == cmd) {
            s->windows[i].window = window;
            return 0;
        }
    if (s->nwindows == TDXW_MAX_WINDOWS)
        return -EINVAL;
    s->windows[s->nwindows].cmd = cmd;
    s->windows[s->nwindows].window = window;
    s->nwindows++;
    return 0;
}

uint32_t tdxf_window(const tdxf_server *s, uint64_t cmd)
{
    for (uint32_t i = 0; i < s->nwindows; i++)
        if (s->windows[i].cmd == cmd)
            return s->windows[i].window;
    return 0;
}

long tdxf_add_node(tdxf_server *s, uint64_t parent, const char *name, int kind, unsigned mode,
                   uint64_t size, int node_id)
{
    if (parent < 1 || parent > (uint64_t)s->nnodes || s->nodes[parent - 1].kind != TDXF_NODE_DIR)
        return -ENOTDIR;
    if (!name || !*name || strlen(name) >= TDXF_NAME_MAX || strchr(name, '/'))
        return -EINVAL;
    if (kind < TDXF_NODE_DIR || kind > TDXF_NODE_CONTROL)
        return -EINVAL;
    for (int i = 1; i < s->nnodes; i++)
        if (s->nodes[i].parent == parent && strcmp(s->nodes[i].name, name) == 0)
            return -EEXIST;
    if (s->nnodes == TDXF_MAX_NODES)
        return -ENOSPC;
    tdxf_node *n = &s->nodes[s->nnodes];
    snprintf(n->name, sizeof(n->name), "%s", name);
    n->parent = parent;
    n->kind = kind;
    n->mode = mode & 07777;
    n->size = size;
    n->node_id = node_id;
    return ++s->nnodes;
}

void tdxf_get_counters(const tdxf_server *s, tdxf_counters *out)
{
    out->fuse_ioctls = atomic_load(&s->c_fuse_ioctls);
    out->socket_ioctls = atomic_load(&s->c_socket_ioctls);
    out->opens = atomic_load(&s->c_opens);
    out->releases = atomic_load(&s->c_releases);
    out->vm_reads = atomic_load(&s->c_vm_reads);
    out->vm_writes = atomic_load(&s->c_vm_writes);
    out->client_gone = atomic_load(&s->c_client_gone);
}

/* ---------------------------------------------------------------------- client memory (root) */

/* process_vm_readv stops at the first page it cannot read and returns the bytes before it, so
 * reading page by page gives the readable prefix exactly (the fault position is page-granular). */
uint32_t tdxf_vm_read(pid_t pid, uint64_t addr, uint8_t *out, uint32_t len)
{
    uint32_t done = 0;
    while (done < len) {
        uint32_t chunk = TDXF_PAGE - (uint32_t)((addr + done) % TDXF_PAGE);
        if (chunk > len - done)
            chunk = len - done;
        struct iovec local = {out + done, chunk};
        struct iovec remote = {(void *)(uintptr_t)(addr + done), chunk};
        ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n <= 0)
            break;
        done += (uint32_t)n;
        if ((uint32_t)n < chunk)
            break;
    }
    return done;
}

uint32_t tdxf_vm_write(pid_t pid, uint64_t addr, const uint8_t *data, uint32_t len)
{
    uint32_t done = 0;
    while (done < len) {
        uint32_t chunk = TDXF_PAGE - (uint32_t)((addr + done) % TDXF_PAGE);
        if (chunk > len - done)
            chunk = len - done;
        struct iovec local = {(void *)(data + done), chunk};
        struct iovec remote = {(void *)(uintptr_t)(addr + done), chunk};
        ssize_t n = process_vm_writev(pid, &local, 1, &remote, 1, 0);
        if (n <= 0)
            break;
        done += (uint32_t)n;
        if ((uint32_t)n < chunk)
            break;
    }
    return done;
}

uint32_t tdxf_vm_probe_write(pid_t pid, uint64_t addr, const uint8_t *same, uint32_t len)
{
    return tdxf_vm_write(pid, addr, same, len);
}

/* Write back the bytes the handler changed, within the client's writable prefix. Returns the range
 * written through *first / *count. */
static void changed_range(const uint8_t *before, const uint8_t *after, uint32_t limit, uint32_t *first,
                          uint32_t *count)
{
    uint32_t lo = 0, hi = limit;
    while (lo < limit && before[lo] == after[lo])
        lo++;
    while (hi > lo && before[hi - 1] == after[hi - 1])
        hi--;
    *first = lo;
    *count = hi - lo;
}

/* ------------------------------------------------------------------------------------------ FUSE */

static tdxf_node *node_of(tdxf_server *s, fuse_ino_t ino)
{
    if (ino < 1 || ino > (fuse_ino_t)s->nnodes)
        return NULL;
    return &s->nodes[ino - 1];
}

static void fill_stat(tdxf_server *s, fuse_ino_t ino, const tdxf_node *n, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = ino;
    st->st_mode = (n->kind == TDXF_NODE_DIR ? S_IFDIR : S_IFREG) | n->mode;
    st->st_nlink = n->kind == TDXF_NODE_DIR ? 2 : 1;
    st->st_size = (off_t)n->size;
    st->st_uid = 0;
    st->st_gid = 0;
    st->st_blksize = TDXF_PAGE;
    st->st_atim = st->st_mtim = st->st_ctim = s->started;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    tdxf_server *s = fuse_req_userdata(req);
    for (int i = 1; i < s->nnodes; i++) {
        if (s->nodes[i].parent == parent && strcmp(s->nodes[i].name, name) == 0) {
            struct fuse_entry_param e;
            memset(&e, 0, sizeof(e));
            e.ino = (fuse_ino_t)i + 1;
            e.attr_timeout = 3600.0; /* the tree never changes while mounted */
            e.entry_timeout = 3600.0;
            fill_stat(s, e.ino, &s->nodes[i], &e.attr);
            fuse_reply_entry(req, &e);
            return;
        }
    }
    fuse_reply_err(req, ENOENT);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    tdxf_server *s = fuse_req_userdata(req);
    tdxf_node *n = node_of(s, ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    fill_stat(s, ino, n, &st);
    fuse_reply_attr(req, &st, 3600.0);
}

/* O_TRUNC (a shell's `>`) arrives as a size change: sysfs ignores it, so do we. Ownership and mode
 * are fixed by the daemon's flags. */
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    (void)attr, (void)fi;
    tdxf_server *s = fuse_req_userdata(req);
    tdxf_node *n = node_of(s, ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
        fuse_reply_err(req, EPERM);
        return;
    }
    struct stat st;
    fill_stat(s, ino, n, &st);
    fuse_reply_attr(req, &st, 3600.0);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)fi;
    tdxf_server *s = fuse_req_userdata(req);
    tdxf_node *dir = node_of(s, ino);
    if (!dir || dir->kind != TDXF_NODE_DIR) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    char *buf = calloc(1, size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t used = 0;
    /* entries: 0 ".", 1 "..", then children in node order; `off` is the next entry's index */
    int index = 0;
    for (int i = -2; i < s->nnodes; i++) {
        const char *name;
        struct stat st;
        memset(&st, 0, sizeof(st));
        if (i == -2) {
            name = ".";
            st.st_ino = ino;
            st.st_mode = S_IFDIR;
        } else if (i == -1) {
            name = "..";
            st.st_ino = dir->parent ? dir->parent : 1;
            st.st_mode = S_IFDIR;
        } else {
            if (i == 0 || s->nodes[i].parent != ino)
                continue;
            name = s->nodes[i].name;
            st.st_ino = (ino_t)i + 1;
            st.st_mode = s->nodes[i].kind == TDXF_NODE_DIR ? S_IFDIR : S_IFREG;
        }
        index++;
        if (index <= off)
            continue;
        size_t need = fuse_add_direntry(req, buf + used, size - used, name, &st, index);
        if (need > size - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    tdxf_server *s = fuse_req_userdata(req);
    tdxf_node *n = node_of(s, ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (n->kind == TDXF_NODE_DIR) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    /* kernfs refuses to open a read-only attribute for writing, even for root (ref §2.5: 0444) */
    if (n->kind == TDXF_NODE_CONTROL && (fi->flags & O_ACCMODE) != O_RDONLY && !(n->mode & 0222)) {
        fuse_reply_err(req, EACCES);
        return;
    }
    fi->direct_io = 1;  /* every read and write reaches the handler, whatever st_size says */
    fi->keep_cache = 0;
    fi->nonseekable = 0;
    fi->fh = 0;
    if (n->kind == TDXF_NODE_DEVICE) {
        uint64_t handle = 0;
        const struct fuse_ctx *ctx = fuse_req_ctx(req);
        int r = s->handler.open(s->handler.ctx, fi->flags, (uint32_t)ctx->pid, &handle);
        if (r < 0) {
            fuse_reply_err(req, -r);
            return;
        }
        atomic_fetch_add(&s->c_opens, 1);
        fi->fh = handle;
    }
    if (fuse_reply_open(req, fi) == -ENOENT && n->kind == TDXF_NODE_DEVICE) {
        /* the client was interrupted before it got its fd: nobody will release it */
        s->handler.release(s->handler.ctx, fi->fh);
        atomic_fetch_add(&s->c_releases, 1);
    }
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    tdxf_server *s = fuse_req_userdata(req);
    tdxf_node *n = node_of(s, ino);
    if (n && n->kind == TDXF_NODE_DEVICE) {
        s->handler.release(s->handler.ctx, fi->fh);
        atomic_fetch_add(&s->c_releases, 1);
    }
    fuse_reply_err(req, 0);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)fi;
    tdxf_server *s = fuse_req_userdata(req);
    tdxf_node *n = node_of(s, ino);
    if (!n || n->kind != TDXF_NODE_CONTROL) {
        /* the misc device has no read method (ref §2: ioctl only) */
        fuse_reply_err(req, n ? EINVAL : ENOENT);
        return;
    }
    if (size > TDXF_MAX_CONTROL_IO)
        size = TDXF_MAX_CONTROL_IO;
    char *buf = malloc(size ? size : 1);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int r = s->handler.control_read(s->handler.ctx, n->node_id, (uint32_t)fuse_req_ctx(req)->pid, buf,
                                    size, off);
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_buf(req, buf, (size_t)r);
    free(buf);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    (void)fi;
    tdxf_server *s = fuse_req_userdata(req);
    tdxf_node *n = node_of(s, ino);
    if (!n || n->kind != TDXF_NODE_CONTROL) {
        fuse_reply_err(req, n ? EINVAL : ENOENT);
        return;
    }
    int r = s->handler.control_write(s->handler.ctx, n->node_id, (uint32_t)fuse_req_ctx(req)->pid, buf,
                                     size, off);
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_write(req, (size_t)r);
}

struct interrupt_arg {
    tdxf_server *s;
    uint64_t handle;
    int fired;
};

static void op_interrupted(fuse_req_t req, void *data)
{
    (void)req;
    struct interrupt_arg *a = data;
    a->fired = 1;
    a->s->handler.interrupt(a->s->handler.ctx, a->handle, 1);
}

static void op_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
                     struct fuse_file_info *fi, unsigned flags, const void *in_buf, size_t in_bufsz,
                     size_t out_bufsz)
{
    tdxf_server *s = fuse_req_userdata(req);
    tdxf_node *n = node_of(s, ino);
    if (!n || n->kind != TDXF_NODE_DEVICE) {
        fuse_reply_err(req, ENOTTY); /* sysfs attributes and directories have no ioctl */
        return;
    }
    if (flags & FUSE_IOCTL_COMPAT) {
        fuse_reply_err(req, ENOTTY); /* 32-bit clients: the drivers have no compat_ioctl */
        return;
    }
    atomic_fetch_add(&s->c_fuse_ioctls, 1);
    uint8_t image[TDXW_MAX_WINDOW], before[TDXW_MAX_WINDOW];
    uint32_t window = tdxf_window(s, cmd);
    pid_t pid = fuse_req_ctx(req)->pid;
    uint64_t uarg = (uint64_t)(uintptr_t)arg;
    tdxf_ioctl_call call = {fi->fh, (uint32_t)pid, cmd, uarg, image, window, 0, 0};
    /* FUSE already copied `in_bufsz` bytes in; it copies `out_bufsz` out when we succeed. */
    int fuse_buffers = window > 0 && in_bufsz >= window && out_bufsz >= window;
    if (fuse_buffers) {
        memcpy(image, in_buf, window);
        call.readable = call.writable = window;
    } else if (window > 0) {
        call.readable = tdxf_vm_read(pid, uarg, image, window);
        call.writable = tdxf_vm_probe_write(pid, uarg, image, call.readable);
        atomic_fetch_add(&s->c_vm_reads, 1);
    }
    memcpy(before, image, window);
    /* A signal to the waiting client arrives as a FUSE INTERRUPT: hand it to the emulated task for
     * the duration of the call. libfuse runs the function at once if the interrupt came first, and
     * unregistering waits for a callback in progress, so on = 0 always comes last. */
    struct interrupt_arg irq = {s, fi->fh, 0};
    if (s->handler.interrupt)
        fuse_req_interrupt_func(req, op_interrupted, &irq);
    long result = s->handler.ioctl(s->handler.ctx, &call);
    if (s->handler.interrupt) {
        fuse_req_interrupt_func(req, NULL, NULL);
        if (irq.fired)
            s->handler.interrupt(s->handler.ctx, fi->fh, 0);
    }
    uint32_t first = 0, count = 0;
    changed_range(before, image, call.writable, &first, &count);
    if (count && (!fuse_buffers || result < 0)) {
        /* v4's in-place report, or user bytes written on an error path (v4's put_user of the status,
         * a partial copy_to_user): FUSE copies nothing out on an error reply, so write them here. */
        atomic_fetch_add(&s->c_vm_writes, 1);
        if (tdxf_vm_write(pid, uarg + first, image + first, count) == 0 && count)
            atomic_fetch_add(&s->c_client_gone, 1);
    }
    int r;
    if (result < 0) {
        r = fuse_reply_err(req, (int)-result);
    } else {
        size_t out = window < out_bufsz ? window : out_bufsz;
        r = fuse_reply_ioctl(req, (int)result, out ? image : NULL, out);
    }
    if (r == -ENOENT)
        atomic_fetch_add(&s->c_client_gone, 1); /* interrupted or killed mid-call: nothing to undo */
}

static const struct fuse_lowlevel_ops tdxf_ops = {
    .lookup = op_lookup,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readdir = op_readdir,
    .open = op_open,
    .release = op_release,
    .read = op_read,
    .write = op_write,
    .ioctl = op_ioctl,
};

int tdxf_fuse_mount(tdxf_server *s, const char *mountpoint, const char *options, int max_threads)
{
    if (s->se)
        return -EBUSY;
    char *argv[4];
    int argc = 0;
    argv[argc++] = "tdxmodel";
    if (options && *options) {
        argv[argc++] = "-o";
        argv[argc++] = (char *)options;
    }
    argv[argc] = NULL;
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    s->se = fuse_session_new(&args, &tdxf_ops, sizeof(tdxf_ops), s);
    if (!s->se)
        return -EINVAL;
    if (fuse_session_mount(s->se, mountpoint) != 0) {
        fuse_session_destroy(s->se);
        s->se = NULL;
        return -EIO;
    }
    s->max_threads = max_threads > 0 ? max_threads : 16;
    atomic_store(&s->fuse_stopping, 0);
    return 0;
}

int tdxf_fuse_run(tdxf_server *s)
{
    if (!s->se)
        return -EINVAL;
    /* Workers inherit this thread's mask: signals belong to the Python main thread. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (!cfg)
        return -ENOMEM;
    fuse_loop_cfg_set_max_threads(cfg, (unsigned)s->max_threads);
    fuse_loop_cfg_set_idle_threads(cfg, 4);
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    int r = fuse_session_loop_mt(s->se, cfg);
    fuse_loop_cfg_destroy(cfg);
    pthread_mutex_lock(&s->stop_lock);
    struct fuse_session *se = s->se;
    s->se = NULL;
    if (se) {
        fuse_session_unmount(se);
        fuse_session_destroy(se);
    }
    pthread_mutex_unlock(&s->stop_lock);
    return r;
}

void tdxf_fuse_stop(tdxf_server *s)
{
    pthread_mutex_lock(&s->stop_lock);
    if (s->se && !atomic_exchange(&s->fuse_stopping, 1)) {
        fuse_session_exit(s->se);
        /* Unmounting makes the workers' read() of /dev/fuse fail, so the loop returns. */
        fuse_session_unmount(s->se);
    }
    pthread_mutex_unlock(&s->stop_lock);
}

/* ---------------------------------------------------------------------------------------- socket */

static int read_full(int fd, void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n == 0)
            return -1;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

/* header, reply and data as one packed message (the structs are sent one after another, never as
 * one padded C struct: the wire has no padding between them). */
static int send_reply(int fd, int64_t result, uint32_t off, const uint8_t *data, uint32_t len)
{
    uint8_t msg[sizeof(struct tdxw_header) + sizeof(struct tdxw_reply) + TDXW_MAX_WINDOW];
    struct tdxw_header h = {TDXW_MAGIC, TDXW_VERSION, 0, (uint32_t)sizeof(struct tdxw_reply) + len};
    struct tdxw_reply r = {result, off, len};
    if (len > TDXW_MAX_WINDOW)
        return -1;
    memcpy(msg, &h, sizeof(h));
    memcpy(msg + sizeof(h), &r, sizeof(r));
    if (len)
        memcpy(msg + sizeof(h) + sizeof(r), data, len);
    return write_full(fd, msg, sizeof(h) + sizeof(r) + len);
}

typedef struct {
    tdxf_server *s;
    int fd;
    int slot;
    uint32_t pid;
} conn_arg;

static int conn_slot_take(tdxf_server *s, int fd)
{
    int slot = -1;
    pthread_mutex_lock(&s->conn_lock);
    for (int i = 0; i < TDXF_MAX_CONNS; i++)
        if (s->conn_fds[i] < 0) {
            s->conn_fds[i] = fd;
            slot = i;
            break;
        }
    pthread_mutex_unlock(&s->conn_lock);
    return slot;
}

static void conn_slot_free(tdxf_server *s, int slot)
{
    pthread_mutex_lock(&s->conn_lock);
    s->conn_fds[slot] = -1;
    pthread_mutex_unlock(&s->conn_lock);
}

/* One connection: HELLO any number of times, then OPEN, then IOCTLs until the client closes. A
 * malformed message ends the connection (the client sees EIO), never the daemon. */
static void *conn_main(void *p)
{
    conn_arg a = *(conn_arg *)p;
    free(p);
    tdxf_server *s = a.s;
    int opened = 0;
    uint64_t handle = 0;
    uint8_t payload[sizeof(struct tdxw_ioctl) + TDXW_MAX_WINDOW];
    uint8_t before[TDXW_MAX_WINDOW];
    for (;;) {
        struct tdxw_header h;
        if (read_full(a.fd, &h, sizeof(h)) < 0)
            break;
        if (h.magic != TDXW_MAGIC || h.version != TDXW_VERSION || h.length > sizeof(payload))
            break;
        if (read_full(a.fd, payload, h.length) < 0)
            break;
        if (h.op == TDXW_OP_HELLO) {
            struct tdxw_hello hello;
            memset(&hello, 0, sizeof(hello));
            snprintf(hello.device_path, sizeof(hello.device_path), "%s", s->device_path);
            hello.nwindows = s->nwindows;
            memcpy(hello.windows, s->windows, sizeof(hello.windows));
            struct tdxw_header rh = {TDXW_MAGIC, TDXW_VERSION, TDXW_OP_HELLO, sizeof(hello)};
            if (write_full(a.fd, &rh, sizeof(rh)) < 0 || write_full(a.fd, &hello, sizeof(hello)) < 0)
                break;
        } else if (h.op == TDXW_OP_OPEN) {
            if (opened || h.length != sizeof(struct tdxw_open))
                break;
            struct tdxw_open o;
            memcpy(&o, payload, sizeof(o));
            int r = s->handler.open(s->handler.ctx, o.flags, a.pid, &handle);
            if (r == 0) {
                opened = 1;
                atomic_fetch_add(&s->c_opens, 1);
            }
            if (send_reply(a.fd, r, 0, NULL, 0) < 0 || r < 0)
                break;
        } else if (h.op == TDXW_OP_IOCTL) {
            struct tdxw_ioctl q;
            if (!opened || h.length < sizeof(q))
                break;
            memcpy(&q, payload, sizeof(q));
            if (q.window > TDXW_MAX_WINDOW || q.readable > q.window || q.writable > q.readable ||
                h.length != sizeof(q) + q.readable)
                break;
            uint8_t *image = payload + sizeof(q);
            /* bytes the client could not read are unknown: the mirror maps none of them */
            memset(image + q.readable, 0, q.window - q.readable);
            memcpy(before, image, q.window);
            atomic_fetch_add(&s->c_socket_ioctls, 1);
            tdxf_ioctl_call call = {handle, a.pid, q.cmd, q.arg, image, q.window, q.readable,
                                    q.writable};
            long result = s->handler.ioctl(s->handler.ctx, &call);
            uint32_t first = 0, count = 0;
            changed_range(before, image, q.writable, &first, &count);
            if (send_reply(a.fd, result, first, image + first, count) < 0)
                break;
        } else {
            break;
        }
    }
    if (opened) {
        s->handler.release(s->handler.ctx, handle);
        atomic_fetch_add(&s->c_releases, 1);
    }
    conn_slot_free(s, a.slot);
    close(a.fd);
    atomic_fetch_sub(&s->socket_threads, 1);
    return NULL;
}

int tdxf_socket_listen(tdxf_server *s, const char *path, unsigned mode)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (mode && chmod(path, mode) < 0) {
        int e = errno;
        close(fd);
        unlink(path);
        return -e;
    }
    if (listen(fd, 128) < 0) {
        int e = errno;
        close(fd);
        unlink(path);
        return -e;
    }
    snprintf(s->socket_path, sizeof(s->socket_path), "%s", path);
    s->listen_fd = fd;
    atomic_store(&s->socket_stopping, 0);
    return 0;
}

int tdxf_socket_run(tdxf_server *s)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    while (!atomic_load(&s->socket_stopping)) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (atomic_load(&s->socket_stopping))
                break;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                usleep(10000);
                continue;
            }
            break;
        }
        if (atomic_load(&s->socket_stopping)) {
            close(fd);
            break;
        }
        struct ucred cred;
        socklen_t len = sizeof(cred);
        conn_arg *a = malloc(sizeof(*a));
        if (!a) {
            close(fd);
            continue;
        }
        a->s = s;
        a->fd = fd;
        a->slot = conn_slot_take(s, fd);
        if (a->slot < 0) { /* too many clients: refuse this one */
            close(fd);
            free(a);
            continue;
        }
        a->pid = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 ? (uint32_t)cred.pid : 0;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        atomic_fetch_add(&s->socket_threads, 1);
        if (pthread_create(&t, &attr, conn_main, a) != 0) {
            atomic_fetch_sub(&s->socket_threads, 1);
            conn_slot_free(s, a->slot);
            close(fd);
            free(a);
        }
        pthread_attr_destroy(&attr);
    }
    /* Open connections are shut down by tdxf_socket_stop; wait until every thread has left (a
     * call in progress finishes first), so none outlives the server. */
    while (atomic_load(&s->socket_threads) > 0)
        usleep(1000);
    close(s->listen_fd);
    s->listen_fd = -1;
    return 0;
}

void tdxf_socket_stop(tdxf_server *s)
{
    if (s->listen_fd < 0 || atomic_exchange(&s->socket_stopping, 1))
        return;
    /* shutdown wakes accept(); the path goes now so no new client finds it */
    shutdown(s->listen_fd, SHUT_RDWR);
    unlink(s->socket_path);
    pthread_mutex_lock(&s->conn_lock);
    for (int i = 0; i < TDXF_MAX_CONNS; i++)
        if (s->conn_fds[i] >= 0)
            shutdown(s->conn_fds[i], SHUT_RDWR);
    pthread_mutex_unlock(&s->conn_lock);
}

/* ------------------------------------------------------------------- core fast path (no GIL) */

typedef struct {
    pthread_mutex_t lock; /* one call at a time per open file, as the Python path does */
    struct td_process *p;
    int fd;
    int used;
    int plain; /* all mirror pages mapped rw */
} core_file;

struct tdxf_core {
    unsigned max_files;
    pthread_mutex_t slots_lock;
    _Atomic unsigned fail_nth;
    core_file files[];
};

tdxf_core *tdxf_core_new(unsigned max_files)
{
    tdxf_core *c = calloc(1, sizeof(*c) + sizeof(core_file) * max_files);
    if (!c)
        return NULL;
    c->max_files = max_files;
    pthread_mutex_init(&c->slots_lock, NULL);
    for (unsigned i = 0; i < max_files; i++)
        pthread_mutex_init(&c->files[i].lock, NULL);
    return c;
}

void tdxf_core_free(tdxf_core *c)
{
    if (!c)
        return;
    for (unsigned i = 0; i < c->max_files; i++)
        pthread_mutex_destroy(&c->files[i].lock);
    pthread_mutex_destroy(&c->slots_lock);
    free(c);
}

long tdxf_core_register(tdxf_core *c, struct td_process *p, int fd)
{
    long handle = -EMFILE;
    pthread_mutex_lock(&c->slots_lock);
    for (unsigned i = 0; i < c->max_files; i++) {
        core_file *f = &c->files[i];
        pthread_mutex_lock(&f->lock);
        if (!f->used) {
            f->p = p;
            f->fd = fd;
            f->used = 1;
            f->plain = 1;
            handle = (long)i + 1;
        }
        pthread_mutex_unlock(&f->lock);
        if (handle > 0)
            break;
    }
    pthread_mutex_unlock(&c->slots_lock);
    return handle;
}

void tdxf_core_unregister(tdxf_core *c, uint64_t handle)
{
    if (handle < 1 || handle > c->max_files)
        return;
    core_file *f = &c->files[handle - 1];
    pthread_mutex_lock(&f->lock);
    f->used = 0;
    f->p = NULL;
    pthread_mutex_unlock(&f->lock);
}

unsigned tdxf_core_fail_nth_arm(tdxf_core *c)
{
    return atomic_load(&c->fail_nth) ? atomic_exchange(&c->fail_nth, 0) : 0;
}

void tdxf_core_fail_nth_disarm(tdxf_core *c, unsigned left)
{
    unsigned zero = 0;
    if (left)
        atomic_compare_exchange_strong(&c->fail_nth, &zero, left); /* a newer write wins */
}

void tdxf_core_fail_nth_set(tdxf_core *c, unsigned n) { atomic_store(&c->fail_nth, n); }
unsigned tdxf_core_fail_nth_get(tdxf_core *c) { return atomic_load(&c->fail_nth); }

/* Map the mirror as the client's pages are: rw below `writable`, r below `readable`, nothing after.
 * Both bounds fall on the client's page boundaries (or at the window's end), hence on ours. */
static int core_layout(gk_mm *mm, uint32_t offset, uint32_t readable, uint32_t writable)
{
    if (gk_mm_unmap(mm, TDXF_USER_BASE, (uint64_t)TDXF_MIRROR_PAGES * TDXF_PAGE))
        return 0;
    int plain = 1;
    for (uint32_t k = 0; k < TDXF_MIRROR_PAGES; k++) {
        uint32_t start = k * TDXF_PAGE > offset ? k * TDXF_PAGE - offset : 0;
        int prot = start < writable ? (GK_PROT_READ | GK_PROT_WRITE)
                                    : (start < readable ? GK_PROT_READ : GK_PROT_NONE);
        if (prot != (GK_PROT_READ | GK_PROT_WRITE))
            plain = 0;
        if (prot != GK_PROT_NONE)
            gk_mm_map(mm, TDXF_USER_BASE + (uint64_t)k * TDXF_PAGE, TDXF_PAGE, prot);
    }
    return plain;
}

/* Called only while an ioctl on `handle` is in flight (op_ioctl's interrupt window), when the file is
 * registered and its process alive: no lock needed (the ioctl holds the file's). */
void tdxf_core_interrupt(tdxf_core *c, uint64_t handle, int on)
{
    if (handle < 1 || handle > c->max_files)
        return;
    struct td_process *p = c->files[handle - 1].p;
    if (p)
        atomic_store(&td_process_task(p)->signal_pending, on);
}

long tdxf_core_ioctl(tdxf_core *c, tdxf_ioctl_call *call)
{
    if (call->handle < 1 || call->handle > c->max_files)
        return -EBADF;
    core_file *f = &c->files[call->handle - 1];
    pthread_mutex_lock(&f->lock);
    if (!f->used) {
        pthread_mutex_unlock(&f->lock);
        return -EBADF;
    }
    gk_mm *mm = td_process_mm(f->p);
    gk_task *task = td_process_task(f->p);
    uint32_t offset = (uint32_t)(call->arg % TDXF_PAGE);
    uint64_t addr = TDXF_USER_BASE + offset;
    int plain = call->readable == call->window && call->writable == call->window;
    if (!plain || !f->plain)
        f->plain = core_layout(mm, plain ? 0 : offset, plain ? call->window : call->readable,
                               plain ? call->window : call->writable);
    if (call->readable)
        gk_mm_poke(mm, addr, call->image, call->readable);
    unsigned armed = tdxf_core_fail_nth_arm(c);
    if (armed)
        atomic_store(&task->fail_nth, armed);
    long ret = td_ioctl(f->p, f->fd, (uint32_t)call->cmd, addr);
    if (armed) {
        unsigned left = atomic_exchange(&task->fail_nth, 0);
        tdxf_core_fail_nth_disarm(c, left);
    }
    if (call->writable)
        gk_mm_peek(mm, addr, call->image, call->writable);
    pthread_mutex_unlock(&f->lock);
    /* a TD exit needs the host to unmap the kernel's own pages, which the daemon never does */
    return ret == TD_RET_TD_EXIT ? -EIO : ret;
}
