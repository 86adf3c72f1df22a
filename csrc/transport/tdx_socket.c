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

static const char *op_name(uint16_t op)
{
    return op == TDXW_OP_HELLO ? "HELLO" : op == TDXW_OP_OPEN ? "OPEN" : op == TDXW_OP_IOCTL ? "IOCTL" : "?";
}

/* One connection: HELLO any number of times, then OPEN, then IOCTLs until the client closes. A
 * malformed message ends the connection (the client sees EIO) and is logged, never the daemon's
 * end: bad input from a client is reported as QEMU reports bad guest input (LOG_GUEST_ERROR). */
static void *conn_main(void *p)
{
    conn_arg a = *(conn_arg *)p;
    free(p);
    tdxf_server *s = a.s;
    int opened = 0;
    uint64_t handle = 0;
    uint8_t payload[sizeof(struct tdxw_ioctl) + TDXW_MAX_WINDOW];
    uint8_t before[TDXW_MAX_WINDOW];
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
        if (h.op > TDXW_OP_IOCTL)
            BAD("unknown op %u", h.op);
        if (h.length > sizeof(payload))
            BAD("%s payload of %u bytes (at most %zu)", op_name(h.op), h.length, sizeof(payload));
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
        } else if (h.op == TDXW_OP_OPEN) {
            if (opened)
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
