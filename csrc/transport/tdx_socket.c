/* tdx_socket.c - the Unix-socket server of `tdxmodel serve --socket` (see tdx_socket.h). */
#define _GNU_SOURCE
#include "tdx_socket.h"
#include "tdx_usercopy.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* 0 when all `len` bytes arrived; otherwise -1, with *got the bytes that did (0: a clean end). */
static int read_full(int fd, void *buf, size_t len, size_t *got)
{
    size_t done = 0;
    int r = 0;
    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n == 0) {
            r = -1;
            break;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r = -1;
            break;
        }
        done += (size_t)n;
    }
    if (got)
        *got = done;
    return r;
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
    uint8_t small[sizeof(struct tdxw_header) + sizeof(struct tdxw_reply) + TDXW_MAX_WINDOW];
    size_t total = sizeof(struct tdxw_header) + sizeof(struct tdxw_reply) + len;
    struct tdxw_header h = {TDXW_MAGIC, TDXW_VERSION, 0, (uint32_t)sizeof(struct tdxw_reply) + len};
    struct tdxw_reply r = {result, off, len};
    if (len > TDXW_MAX_IO)
        return -1;
    uint8_t *msg = total <= sizeof(small) ? small : malloc(total);
    if (!msg)
        return -1;
    memcpy(msg, &h, sizeof(h));
    memcpy(msg + sizeof(h), &r, sizeof(r));
    if (len)
        memcpy(msg + sizeof(h) + sizeof(r), data, len);
    int ret = write_full(fd, msg, total);
    if (msg != small)
        free(msg);
    return ret;
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

static const char *op_name(uint16_t op)
{
    static const char *names[] = {"HELLO", "OPEN", "IOCTL", "VSTAT", "MKDIR", "RMDIR", "READDIR", "VOPEN",
                                  "READ", "WRITE", "LSEEK", "FLUSH"};
    return op <= TDXW_OP_LAST ? names[op] : "?";
}

/* The payload of a path op: its header and the NUL-terminated path. 0, or -1 when malformed. */
static int parse_path(const uint8_t *payload, uint32_t length, struct tdxw_path *p, char *path)
{
    if (length < sizeof(*p))
        return -1;
    memcpy(p, payload, sizeof(*p));
    if (p->length >= TDXW_MAX_PATH || length != sizeof(*p) + p->length)
        return -1;
    memcpy(path, payload + sizeof(*p), p->length);
    path[p->length] = 0;
    return strlen(path) == p->length ? 0 : -1;
}

/* One op of the served tree on connection `c`; -1 ends the connection. *vopened: the connection's
 * open file of the tree (VOPEN), *vhandle its handle. */
static int vfs_op(tdxf_server *s, int fd, uint32_t pid, const struct tdxw_header *h, const uint8_t *payload,
                  int opened, int *vopened, uint64_t *vhandle)
{
    const tdxf_handler *d = &s->handler;
#define BADV(...) do { tdxf_log_client_error(s, pid, __VA_ARGS__); return -1; } while (0)
    if (!d->vfs_stat)
        BADV("%s: this daemon serves no tree", op_name(h->op));
    if (h->op <= TDXW_OP_VOPEN) {
        struct tdxw_path p;
        char path[TDXW_MAX_PATH];
        if (parse_path(payload, h->length, &p, path) < 0)
            BADV("%s payload of %u bytes is not a path header and path", op_name(h->op), h->length);
        if (h->op == TDXW_OP_VSTAT) {
            tdxf_vstat v;
            memset(&v, 0, sizeof(v));
            int r = d->vfs_stat(d->ctx, path, &v);
            struct tdxw_vstat w = {v.type, v.mode, v.size};
            return send_reply(fd, r, 0, r == 0 ? (const uint8_t *)&w : NULL, r == 0 ? sizeof(w) : 0);
        }
        if (h->op == TDXW_OP_MKDIR)
            return send_reply(fd, d->vfs_mkdir(d->ctx, path, p.mode, pid), 0, NULL, 0);
        if (h->op == TDXW_OP_RMDIR)
            return send_reply(fd, d->vfs_rmdir(d->ctx, path, pid), 0, NULL, 0);
        if (h->op == TDXW_OP_READDIR) {
            char *buf = malloc(TDXW_MAX_IO);
            if (!buf)
                return send_reply(fd, -ENOMEM, 0, NULL, 0);
            long r = d->vfs_readdir(d->ctx, path, buf, TDXW_MAX_IO);
            int ret = send_reply(fd, r < 0 ? r : 0, 0, (const uint8_t *)buf, r < 0 ? 0 : (uint32_t)r);
            free(buf);
            return ret;
        }
        /* VOPEN */
        if (opened || *vopened)
            BADV("VOPEN on a connection already open");
        int r = d->vfs_open(d->ctx, path, p.flags, pid, vhandle);
        if (r == 0)
            *vopened = 1;
        return send_reply(fd, r, 0, NULL, 0) < 0 || r < 0 ? -1 : 0;
    }
    struct tdxw_rw q;
    if (!*vopened)
        BADV("%s before VOPEN", op_name(h->op));
    if (h->op == TDXW_OP_FLUSH) {
        if (d->vfs_flush)
            d->vfs_flush(d->ctx, *vhandle);
        return send_reply(fd, 0, 0, NULL, 0);
    }
    if (h->length < sizeof(q))
        BADV("%s payload of %u bytes (at least %zu)", op_name(h->op), h->length, sizeof(q));
    memcpy(&q, payload, sizeof(q));
    if (h->op == TDXW_OP_LSEEK)
        return send_reply(fd, d->vfs_lseek(d->ctx, *vhandle, q.offset, q.whence), 0, NULL, 0);
    if (q.count > TDXW_MAX_IO)
        BADV("%s of %u bytes (at most %u)", op_name(h->op), q.count, TDXW_MAX_IO);
    if (h->op == TDXW_OP_WRITE) {
        if (h->length != sizeof(q) + q.count)
            BADV("WRITE payload of %u bytes for %u bytes (expected %zu)", h->length, q.count,
                 sizeof(q) + q.count);
        return send_reply(fd, d->vfs_write(d->ctx, *vhandle, (const char *)payload + sizeof(q), q.count,
                                           q.offset), 0, NULL, 0);
    }
    if (h->length != sizeof(q))
        BADV("READ payload of %u bytes, not %zu", h->length, sizeof(q));
    char *buf = malloc(q.count ? q.count : 1);
    if (!buf)
        return send_reply(fd, -ENOMEM, 0, NULL, 0);
    long r = d->vfs_read(d->ctx, *vhandle, buf, q.count, q.offset);
    int ret = send_reply(fd, r, 0, (const uint8_t *)buf, r < 0 ? 0 : (uint32_t)r);
    free(buf);
    return ret;
#undef BADV
}

/* One connection: HELLO and the served tree's path ops any number of times, then OPEN and IOCTLs,
 * or VOPEN and READ/WRITE/LSEEK, until the client closes (the last close of its fd: the release). A
 * malformed message ends the connection (the client sees EIO) and is logged, never the daemon's
 * end: bad input from a client is reported as QEMU reports bad guest input (LOG_GUEST_ERROR). */
static void *conn_main(void *p)
{
    conn_arg a = *(conn_arg *)p;
    free(p);
    tdxf_server *s = a.s;
    int opened = 0, vopened = 0;
    uint64_t handle = 0, vhandle = 0;
    const size_t payload_max = sizeof(struct tdxw_rw) + TDXW_MAX_IO;
    uint8_t *payload = malloc(payload_max);
    uint8_t before[TDXW_MAX_WINDOW];
    if (!payload)
        goto done;
#define BAD(...) do { tdxf_log_client_error(s, a.pid, __VA_ARGS__); goto done; } while (0)
    for (;;) {
        struct tdxw_header h;
        size_t got;
        if (read_full(a.fd, &h, sizeof(h), &got) < 0) {
            if (got && !atomic_load(&s->socket_stopping))
                BAD("truncated header (%zu of %zu bytes)", got, sizeof(h));
            break;
        }
        if (h.magic != TDXW_MAGIC)
            BAD("magic 0x%08x, not 0x%08x", h.magic, TDXW_MAGIC);
        if (h.version != TDXW_VERSION)
            BAD("protocol version %u, not %u", h.version, TDXW_VERSION);
        if (h.op > TDXW_OP_LAST)
            BAD("unknown op %u", h.op);
        if (h.length > (h.op == TDXW_OP_WRITE ? payload_max : sizeof(struct tdxw_ioctl) + TDXW_MAX_WINDOW))
            BAD("%s payload of %u bytes (at most %zu)", op_name(h.op), h.length,
                h.op == TDXW_OP_WRITE ? payload_max : sizeof(struct tdxw_ioctl) + TDXW_MAX_WINDOW);
        if (read_full(a.fd, payload, h.length, &got) < 0) {
            if (!atomic_load(&s->socket_stopping))
                BAD("%s payload truncated (%zu of %u bytes)", op_name(h.op), got, h.length);
            break;
        }
        if (h.op == TDXW_OP_HELLO) {
            struct tdxw_hello hello;
            tdxf_fill_hello(s, &hello);
            struct tdxw_header rh = {TDXW_MAGIC, TDXW_VERSION, TDXW_OP_HELLO, sizeof(hello)};
            if (write_full(a.fd, &rh, sizeof(rh)) < 0 || write_full(a.fd, &hello, sizeof(hello)) < 0)
                break;
        } else if (h.op >= TDXW_OP_VSTAT) {
            if (vfs_op(s, a.fd, a.pid, &h, payload, opened, &vopened, &vhandle) < 0)
                goto done;
        } else if (h.op == TDXW_OP_OPEN) {
            if (opened || vopened)
                BAD("OPEN on a connection already open");
            if (h.length != sizeof(struct tdxw_open))
                BAD("OPEN payload of %u bytes, not %zu", h.length, sizeof(struct tdxw_open));
            struct tdxw_open o;
            memcpy(&o, payload, sizeof(o));
            int r = s->handler.open(s->handler.ctx, o.flags, a.pid, &handle);
            if (r == 0) {
                opened = 1;
                atomic_fetch_add(&s->c_opens, 1);
            }
            if (send_reply(a.fd, r, 0, NULL, 0) < 0 || r < 0)
                break;
        } else {
            struct tdxw_ioctl q;
            if (!opened)
                BAD("IOCTL before OPEN");
            if (h.length < sizeof(q))
                BAD("IOCTL payload of %u bytes (at least %zu)", h.length, sizeof(q));
            memcpy(&q, payload, sizeof(q));
            if (q.window > TDXW_MAX_WINDOW || q.readable > q.window || q.writable > q.readable)
                BAD("IOCTL window %u, readable %u, writable %u (need writable <= readable <= window "
                    "<= %u)", q.window, q.readable, q.writable, TDXW_MAX_WINDOW);
            if (h.length != sizeof(q) + q.readable)
                BAD("IOCTL payload of %u bytes for %u readable bytes (expected %zu)", h.length,
                    q.readable, sizeof(q) + q.readable);
            uint8_t *image = payload + sizeof(q);
            /* bytes the client could not read are unknown: the mirror maps none of them */
            memset(image + q.readable, 0, q.window - q.readable);
            memcpy(before, image, q.window);
            atomic_fetch_add(&s->c_socket_ioctls, 1);
            tdxf_ioctl_call call = {handle, a.pid, q.cmd, q.arg, image, q.window, q.readable,
                                    q.writable, 0, NULL, 0, 0, 0, 0};
            tdxf_buffer_begin(s, &call); /* the embedded buffer, straight from the client (root) */
            long result = s->handler.ioctl(s->handler.ctx, &call);
            tdxf_buffer_end(s, &call);
            uint32_t first = 0, count = 0;
            tdxu_changed_range(before, image, q.writable, &first, &count);
            if (send_reply(a.fd, result, first, image + first, count) < 0)
                break;
        }
    }
#undef BAD
done:
    if (opened) {
        s->handler.release(s->handler.ctx, handle);
        atomic_fetch_add(&s->c_releases, 1);
    }
    if (vopened)
        s->handler.vfs_release(s->handler.ctx, vhandle);
    free(payload);
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
