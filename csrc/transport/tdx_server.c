/* tdx_server.c - the served device's tables, counters and log (see tdx_server.h). */
#define _GNU_SOURCE
#include "tdx_server.h"
#include "tdx_abi.h"
#include "tdx_usercopy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    pthread_mutex_init(&s->vnode_lock, NULL);
    pthread_mutex_init(&s->conn_lock, NULL);
    pthread_mutex_init(&s->log_lock, NULL);
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
    for (size_t i = 0; i < s->nvnodes; i++)
        free(s->vnodes[i].path);
    free(s->vnodes);
    pthread_mutex_destroy(&s->vnode_lock);
    pthread_mutex_destroy(&s->conn_lock);
    pthread_mutex_destroy(&s->log_lock);
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

int tdxf_set_buffer(tdxf_server *s, uint64_t cmd, uint32_t ptr_off, uint32_t len_off)
{
    if (ptr_off > TDXW_MAX_WINDOW - 8 || len_off > TDXW_MAX_WINDOW - 8)
        return -EINVAL;
    for (uint32_t i = 0; i < s->nbuffers; i++)
        if (s->buffers[i].cmd == cmd) {
            s->buffers[i].ptr_off = ptr_off;
            s->buffers[i].len_off = len_off;
            return 0;
        }
    if (s->nbuffers == TDXW_MAX_WINDOWS)
        return -ENOSPC;
    s->buffers[s->nbuffers].cmd = cmd;
    s->buffers[s->nbuffers].ptr_off = ptr_off;
    s->buffers[s->nbuffers].len_off = len_off;
    s->nbuffers++;
    return 0;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void tdxf_buffer_begin(tdxf_server *s, tdxf_ioctl_call *call)
{
    call->buf_image = NULL;
    call->buf = 0;
    call->buf_window = call->buf_readable = call->buf_writable = call->buf_ptr_off = 0;
    for (uint32_t i = 0; i < s->nbuffers; i++) {
        if (s->buffers[i].cmd != call->cmd)
            continue;
        uint32_t po = s->buffers[i].ptr_off, lo = s->buffers[i].len_off;
        if (po + 8 > call->readable || lo + 8 > call->readable)
            return; /* the driver's copy of the request faults first */
        uint64_t ptr = le64(call->image + po), len = le64(call->image + lo);
        uint64_t extent = (len + TDX_PAGE_SIZE - 1) & ~(uint64_t)(TDX_PAGE_SIZE - 1);
        if (len == 0 || extent < len || extent > TDXF_MAX_BUFFER || ptr + extent < ptr)
            return; /* -EINVAL / -ENOMEM before the driver reads the buffer */
        uint8_t *img = calloc(2, extent); /* the mirror, then the bytes as read */
        if (!img)
            return;
        call->buf = ptr;
        call->buf_ptr_off = po;
        call->buf_window = (uint32_t)extent;
        call->buf_readable = tdxu_vm_read(call->pid, ptr, img, call->buf_window);
        call->buf_writable = tdxu_vm_write(call->pid, ptr, img, call->buf_readable);
        memcpy(img + extent, img, extent);
        call->buf_image = img;
        atomic_fetch_add(&s->c_vm_reads, 1);
        return;
    }
}

void tdxf_buffer_end(tdxf_server *s, tdxf_ioctl_call *call)
{
    if (!call->buf_image)
        return;
    uint32_t first = 0, count = 0;
    tdxu_changed_range(call->buf_image + call->buf_window, call->buf_image, call->buf_writable, &first,
                       &count);
    if (count) {
        atomic_fetch_add(&s->c_vm_writes, 1);
        if (tdxu_vm_write(call->pid, call->buf + first, call->buf_image + first, count) == 0)
            atomic_fetch_add(&s->c_client_gone, 1);
    }
    free(call->buf_image);
    call->buf_image = NULL;
}

uint32_t tdxf_window(const tdxf_server *s, uint64_t cmd)
{
    for (uint32_t i = 0; i < s->nwindows; i++)
        if (s->windows[i].cmd == cmd)
            return s->windows[i].window;
    return 0;
}

void tdxf_set_rdev(tdxf_server *s, uint32_t major, uint32_t minor)
{
    s->rdev_major = major;
    s->rdev_minor = minor;
}

int tdxf_add_map(tdxf_server *s, const char *client, const char *served, int exact)
{
    if (s->nmaps == TDXW_MAX_MAPS || strlen(client) >= TDXW_MAX_PATH || strlen(served) >= TDXW_MAX_SERVED ||
        client[0] != '/')
        return -EINVAL;
    struct tdxw_map *m = &s->maps[s->nmaps++];
    memset(m, 0, sizeof(*m));
    snprintf(m->client, sizeof(m->client), "%s", client);
    snprintf(m->served, sizeof(m->served), "%s", served);
    m->exact = exact ? 1 : 0;
    return 0;
}

void tdxf_fill_hello(const tdxf_server *s, struct tdxw_hello *out)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->device_path, sizeof(out->device_path), "%s", s->device_path);
    for (int i = 1; i < s->nnodes; i++)
        if (s->nodes[i].kind == TDXF_NODE_DEVICE) {
            out->mode = s->nodes[i].mode;
            break;
        }
    out->rdev_major = s->rdev_major;
    out->rdev_minor = s->rdev_minor;
    out->mtime = (int64_t)s->started.tv_sec;
    out->nwindows = s->nwindows;
    memcpy(out->windows, s->windows, sizeof(out->windows));
    out->nmaps = s->handler.vfs_stat ? s->nmaps : 0;
    memcpy(out->maps, s->maps, sizeof(out->maps));
}

long tdxf_add_node(tdxf_server *s, uint64_t parent, const char *name, int kind, unsigned mode,
                   uint64_t size, int node_id)
{
    if (parent < 1 || parent > (uint64_t)s->nnodes || s->nodes[parent - 1].kind != TDXF_NODE_DIR)
        return -ENOTDIR;
    if (!name || !*name || strlen(name) >= TDXF_NAME_MAX || strchr(name, '/'))
        return -EINVAL;
    if (kind < TDXF_NODE_DIR || kind > TDXF_NODE_VFS)
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
    out->malformed = atomic_load(&s->c_malformed);
}

/* ------------------------------------------------------------------------------------------ log */

/* One write(2) per line, so lines from threads (and from Python's stderr) never interleave. */
static void log_line(const char *text)
{
    size_t len = strlen(text), done = 0;
    while (done < len) {
        ssize_t n = write(STDERR_FILENO, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        done += (size_t)n;
    }
}

void tdxf_log_client_error(tdxf_server *s, uint32_t pid, const char *fmt, ...)
{
    char what[256], line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    atomic_fetch_add(&s->c_malformed, 1);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    pthread_mutex_lock(&s->log_lock);
    if (s->log_lines == 0 || now.tv_sec - s->log_window.tv_sec >= TDXF_LOG_WINDOW) {
        if (s->log_suppressed) {
            snprintf(line, sizeof(line), "tdxmodel serve: %llu more bad client messages were not "
                     "logged\n", (unsigned long long)s->log_suppressed);
            log_line(line);
        }
        s->log_window = now;
        s->log_lines = 0;
        s->log_suppressed = 0;
    }
    if (s->log_lines < TDXF_LOG_BURST) {
        s->log_lines++;
        int n = snprintf(line, sizeof(line), "tdxmodel serve: bad message from client pid %u: %s",
                         pid, what);
        if (s->log_lines == TDXF_LOG_BURST && n > 0 && (size_t)n < sizeof(line))
            snprintf(line + n, sizeof(line) - (size_t)n, " (at most %u lines per %d s: further ones "
                     "are counted, not logged)", TDXF_LOG_BURST, TDXF_LOG_WINDOW);
        strncat(line, "\n", sizeof(line) - strlen(line) - 1);
        log_line(line);
    } else {
        s->log_suppressed++;
    }
    pthread_mutex_unlock(&s->log_lock);
}
