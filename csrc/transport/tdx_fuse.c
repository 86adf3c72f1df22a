/*
 * tdx_fuse.c - the FUSE file system of `tdxmodel serve` (see tdx_fuse.h): the device file, the 6.16
 * measurement files and the fault-injection control files, over one tdxf_server.
 *
 * FUSE gives a regular file only "restricted" ioctls: the kernel copies in and out exactly the size
 * encoded in the command (ref §1, bits 29:16), before and after the request reaches us. Where that
 * size covers the driver's window (v6.2/v6.16: TDX_CMD_GET_REPORT0 encodes 1088, the driver uses
 * 1088, ref §2.4) we use FUSE's buffers. Where it does not (v4: TDX_CMD_GET_TDREPORT encodes 8 but
 * the driver reads 64 and writes 1024 in place, ref §2.2) we read and write the client's memory at
 * its raw `arg` (tdx_usercopy.h; the daemon runs as root), which faults byte for byte as
 * copy_from_user/copy_to_user do.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312

#include "tdx_fuse.h"
#include "tdx_abi.h"
#include "tdx_usercopy.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* x86-64 host pages are the TDX page size (ref §4.3) */
#define TDXF_PAGE ((uint32_t)TDX_PAGE_SIZE)
/* Largest control-file read we serve in one request (measurement files are 48 bytes). */
#define TDXF_MAX_CONTROL_IO (64u * 1024u)

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
    tdxf_ioctl_call call = {fi->fh, (uint32_t)pid, cmd, uarg, image, window, 0, 0, 0, NULL, 0, 0, 0, 0};
    /* FUSE already copied `in_bufsz` bytes in; it copies `out_bufsz` out when we succeed. */
    int fuse_buffers = window > 0 && in_bufsz >= window && out_bufsz >= window;
    if (fuse_buffers) {
        memcpy(image, in_buf, window);
        call.readable = call.writable = window;
    } else if (window > 0) {
        call.readable = tdxu_vm_read(pid, uarg, image, window);
        call.writable = tdxu_vm_write(pid, uarg, image, call.readable);
        atomic_fetch_add(&s->c_vm_reads, 1);
    }
    memcpy(before, image, window);
    tdxf_buffer_begin(s, &call); /* a request's embedded buffer (the get_quote commands) */
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
    tdxf_buffer_end(s, &call);
    uint32_t first = 0, count = 0;
    tdxu_changed_range(before, image, call.writable, &first, &count);
    if (count && (!fuse_buffers || result < 0)) {
        /* v4's in-place report, or user bytes written on an error path (v4's put_user of the status,
         * a partial copy_to_user): FUSE copies nothing out on an error reply, so write them here. */
        atomic_fetch_add(&s->c_vm_writes, 1);
        if (tdxu_vm_write(pid, uarg + first, image + first, count) == 0 && count)
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

/* The loop's own thread waits in sem_wait until a worker ends, and checks fuse_session_exited only
 * then (libfuse lib/fuse_loop_mt.c); workers end only when a read of /dev/fuse fails, which never
 * happens while a client keeps the detached mount's device open. A signal interrupts that sem_wait,
 * so stop sends TDXF_WAKE_SIGNAL to the loop thread; its handler does nothing. */
#define TDXF_WAKE_SIGNAL (SIGRTMIN + 5)

static void wake_handler(int sig) { (void)sig; }

static void install_wake_handler(void)
{
    struct sigaction old, sa;
    if (sigaction(TDXF_WAKE_SIGNAL, NULL, &old) == 0 && old.sa_handler != SIG_DFL)
        return; /* already ours (or someone's): any handler interrupts sem_wait */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = wake_handler;
    sigemptyset(&sa.sa_mask);
    sigaction(TDXF_WAKE_SIGNAL, &sa, NULL);
}

int tdxf_fuse_run(tdxf_server *s)
{
    if (!s->se)
        return -EINVAL;
    install_wake_handler();
    /* Workers inherit this thread's mask: signals belong to the Python main thread, except the
     * wake signal, which only tdxf_fuse_stop sends, to this thread only. */
    sigset_t mask;
    sigfillset(&mask);
    sigdelset(&mask, TDXF_WAKE_SIGNAL);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (!cfg)
        return -ENOMEM;
    fuse_loop_cfg_set_max_threads(cfg, (unsigned)s->max_threads);
    fuse_loop_cfg_set_idle_threads(cfg, 4);
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    s->loop_thread = pthread_self();
    atomic_store(&s->loop_running, 1);
    int r = 0;
    if (!atomic_load(&s->fuse_stopping))
        r = fuse_session_loop_mt(s->se, cfg);
    atomic_store(&s->loop_running, 0);
    fuse_loop_cfg_destroy(cfg);
    pthread_mutex_lock(&s->stop_lock);
    struct fuse_session *se = s->se;
    s->se = NULL;
    if (se) {
        fuse_session_unmount(se);
        fuse_session_destroy(se); /* closes /dev/fuse: open files of the mount now fail */
    }
    pthread_mutex_unlock(&s->stop_lock);
    return r;
}

void tdxf_fuse_stop(tdxf_server *s)
{
    int wake = 0;
    pthread_mutex_lock(&s->stop_lock);
    if (s->se && !atomic_exchange(&s->fuse_stopping, 1)) {
        fuse_session_exit(s->se);
        /* A lazy unmount: the mount point is free at once, even while clients hold files open. */
        fuse_session_unmount(s->se);
        wake = 1;
    }
    pthread_mutex_unlock(&s->stop_lock);
    /* Kick the loop until it returns: a signal sent just before it enters sem_wait is lost. Give up
     * after about a second (a handler that never returns keeps its worker, and so the loop). */
    for (int i = 0; wake && i < 500; i++) {
        pthread_mutex_lock(&s->stop_lock); /* held, the loop thread cannot end: safe to signal */
        int running = atomic_load(&s->loop_running);
        if (running)
            pthread_kill(s->loop_thread, TDXF_WAKE_SIGNAL);
        pthread_mutex_unlock(&s->stop_lock);
        if (!running)
            break;
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
