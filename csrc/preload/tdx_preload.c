/*
 * tdx_preload.c - LD_PRELOAD library: forward the emulated device's open/ioctl/close to the socket of
 * `tdxmodel serve --socket PATH` (layer 4). `tdxmodel preload-path` prints where it is built.
 *
 *   TDXMODEL_SOCKET=/run/tdxmodel.sock LD_PRELOAD=$(tdxmodel preload-path) ./client
 *
 * On the first open-family call the library asks the daemon (TDXW_OP_HELLO) which device node it
 * serves (`/dev/tdx_guest` or `/dev/tdx-attest`, overridable with TDXMODEL_DEVICE) and which window
 * of user memory each known ioctl command touches. An open of that exact path connects a new socket:
 * its fd is the file descriptor the program gets (so fds stay unique and > 0). ioctl on such an fd
 * sends a mirror of the caller's memory from arg on - the bytes readable and writable, found with
 * process_vm_readv/process_vm_writev on our own pid, which fail at the first bad page instead of
 * crashing - and writes back the bytes the emulated kernel changed, so partial copies and -EFAULT
 * are as the emulated driver makes them. close ends the connection (the daemon closes the emulated
 * file).
 *
 * It cannot reach: statically linked programs and Go binaries (they make raw syscalls, no libc),
 * fopen/freopen (glibc opens internally without the exported symbols), fcntl(F_DUPFD) copies (dup,
 * dup2 and dup3 are followed), io_uring, and paths that name the device differently (relative paths,
 * symlinks). Use the FUSE file (`tdxmodel serve --mount`,
 * with `--bind /dev/tdx_guest`) for those.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "tdx_usercopy.h"
#include "tdx_wire.h"

#define MAX_FDS 65536

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char device_path[TDXW_MAX_PATH];
static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static struct tdxw_window windows[TDXW_MAX_WINDOWS];
static uint32_t nwindows;
static int enabled;
/* fd -> id of the connection (the open file) it refers to, 0 if the fd is not ours. dup'd fds share
 * the id, as they share the open file. Calls on one connection are serialised by a striped lock on
 * the id, so two threads never interleave messages on one socket. */
static atomic_uint conn_of[MAX_FDS];
static atomic_uint next_conn = 1;
static pthread_mutex_t stripes[64] = {[0 ... 63] = PTHREAD_MUTEX_INITIALIZER};

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real___open_2)(const char *, int);
static int (*real___open64_2)(const char *, int);
static int (*real___openat_2)(int, const char *, int);
static int (*real___openat64_2)(int, const char *, int);
static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_close)(int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);

static void resolve(void)
{
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_openat64 = dlsym(RTLD_NEXT, "openat64");
    real___open_2 = dlsym(RTLD_NEXT, "__open_2");
    real___open64_2 = dlsym(RTLD_NEXT, "__open64_2");
    real___openat_2 = dlsym(RTLD_NEXT, "__openat_2");
    real___openat64_2 = dlsym(RTLD_NEXT, "__openat64_2");
    real_ioctl = dlsym(RTLD_NEXT, "ioctl");
    real_close = dlsym(RTLD_NEXT, "close");
    real_dup = dlsym(RTLD_NEXT, "dup");
    real_dup2 = dlsym(RTLD_NEXT, "dup2");
    real_dup3 = dlsym(RTLD_NEXT, "dup3");
}

static int full_io(int fd, void *buf, size_t len, int writing)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = writing ? send(fd, (char *)buf + done, len - done, MSG_NOSIGNAL)
                            : recv(fd, (char *)buf + done, len - done, 0);
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

static int connect_daemon(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, socket_path, sizeof(sa.sun_path) - 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        real_close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

struct reply {
    struct tdxw_header h;
    struct tdxw_reply r;
};

/* The header and the reply arrive packed, one after the other. */
static int recv_reply(int fd, struct reply *out)
{
    if (full_io(fd, &out->h, sizeof(out->h), 0) < 0 || full_io(fd, &out->r, sizeof(out->r), 0) < 0)
        return -1;
    if (out->h.magic != TDXW_MAGIC || out->h.length != sizeof(out->r) + out->r.wb_length)
        return -1;
    return 0;
}

static void init(void)
{
    int saved = errno;
    resolve();
    const char *sock = getenv("TDXMODEL_SOCKET");
    if (!sock || !*sock || strlen(sock) >= sizeof(socket_path))
        goto out;
    strcpy(socket_path, sock);
    int fd = connect_daemon();
    if (fd < 0)
        goto out;
    struct tdxw_header h = {TDXW_MAGIC, TDXW_VERSION, TDXW_OP_HELLO, 0};
    struct tdxw_hello hello;
    if (full_io(fd, &h, sizeof(h), 1) == 0 && full_io(fd, &h, sizeof(h), 0) == 0 &&
        h.magic == TDXW_MAGIC && h.length == sizeof(hello) && full_io(fd, &hello, sizeof(hello), 0) == 0) {
        hello.device_path[TDXW_MAX_PATH - 1] = 0;
        const char *override = getenv("TDXMODEL_DEVICE");
        snprintf(device_path, sizeof(device_path), "%s",
                 override && *override ? override : hello.device_path);
        nwindows = hello.nwindows < TDXW_MAX_WINDOWS ? hello.nwindows : TDXW_MAX_WINDOWS;
        memcpy(windows, hello.windows, sizeof(windows));
        enabled = device_path[0] != 0;
    }
    real_close(fd);
out:
    errno = saved;
}

static int is_device(int dirfd, const char *path)
{
    (void)dirfd; /* only absolute paths name the device; dirfd is then ignored, as openat does */
    pthread_once(&once, init);
    return enabled && path && path[0] == '/' && strcmp(path, device_path) == 0;
}

static int open_device(int flags)
{
    int fd = connect_daemon();
    if (fd < 0) {
        errno = ENODEV; /* the daemon is gone: as if the driver were not loaded */
        return -1;
    }
    if (fd >= MAX_FDS) {
        real_close(fd);
        errno = EMFILE;
        return -1;
    }
    if (!(flags & O_CLOEXEC)) {
        int fdfl = fcntl(fd, F_GETFD);
        fcntl(fd, F_SETFD, fdfl & ~FD_CLOEXEC);
    }
    struct tdxw_header h = {TDXW_MAGIC, TDXW_VERSION, TDXW_OP_OPEN, sizeof(struct tdxw_open)};
    struct tdxw_open o = {flags, 0};
    uint8_t msg[sizeof(h) + sizeof(o)];
    memcpy(msg, &h, sizeof(h));
    memcpy(msg + sizeof(h), &o, sizeof(o));
    struct reply reply;
    if (full_io(fd, msg, sizeof(msg), 1) < 0 || recv_reply(fd, &reply) < 0) {
        real_close(fd);
        errno = EIO;
        return -1;
    }
    if (reply.r.result < 0) {
        real_close(fd);
        errno = (int)-reply.r.result;
        return -1;
    }
    unsigned id = atomic_fetch_add(&next_conn, 1);
    atomic_store(&conn_of[fd], id ? id : atomic_fetch_add(&next_conn, 1));
    return fd;
}

static unsigned conn(int fd) { return fd >= 0 && fd < MAX_FDS ? atomic_load(&conn_of[fd]) : 0; }

static uint32_t window_of(unsigned long cmd)
{
    for (uint32_t i = 0; i < nwindows; i++)
        if (windows[i].cmd == (uint64_t)(unsigned int)cmd)
            return windows[i].window;
    return 0;
}

/* Own memory, without faulting: process_vm_readv/writev on ourselves stop at the first bad page. */
static uint32_t self_copy(uint64_t addr, uint8_t *buf, uint32_t len, int writing)
{
    return writing ? tdxu_vm_write(getpid(), addr, buf, len) : tdxu_vm_read(getpid(), addr, buf, len);
}

static int forward_ioctl(int fd, unsigned long cmd, void *arg)
{
    uint64_t uarg = (uint64_t)(uintptr_t)arg;
    uint32_t window = window_of(cmd);
    uint8_t msg[sizeof(struct tdxw_header) + sizeof(struct tdxw_ioctl) + TDXW_MAX_WINDOW];
    struct tdxw_ioctl q;
    uint8_t *image = msg + sizeof(struct tdxw_header) + sizeof(q);
    q.cmd = (unsigned int)cmd; /* the kernel's ioctl takes an unsigned int command */
    q.arg = uarg;
    q.window = window;
    q.readable = window ? self_copy(uarg, image, window, 0) : 0;
    q.writable = q.readable ? self_copy(uarg, image, q.readable, 1) : 0;
    q.pad = 0;
    struct tdxw_header h = {TDXW_MAGIC, TDXW_VERSION, TDXW_OP_IOCTL, (uint32_t)sizeof(q) + q.readable};
    memcpy(msg, &h, sizeof(h));
    memcpy(msg + sizeof(h), &q, sizeof(q));
    struct reply reply;
    uint8_t data[TDXW_MAX_WINDOW];
    pthread_mutex_t *lock = &stripes[conn(fd) % 64];
    pthread_mutex_lock(lock);
    int bad = full_io(fd, msg, sizeof(h) + h.length, 1) < 0 || recv_reply(fd, &reply) < 0 ||
              reply.r.wb_length > TDXW_MAX_WINDOW ||
              (uint64_t)reply.r.wb_offset + reply.r.wb_length > window ||
              full_io(fd, data, reply.r.wb_length, 0) < 0;
    pthread_mutex_unlock(lock);
    if (bad) {
        errno = EIO; /* the daemon went away mid-call */
        return -1;
    }
    if (reply.r.wb_length)
        self_copy(uarg + reply.r.wb_offset, data, reply.r.wb_length, 1);
    if (reply.r.result < 0) {
        errno = (int)-reply.r.result;
        return -1;
    }
    return (int)reply.r.result;
}

/* ----------------------------------------------------------------------------- interposed symbols */

#define NEEDS_MODE(flags) (((flags) & O_CREAT) || (((flags) & O_TMPFILE) == O_TMPFILE))

int open(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (NEEDS_MODE(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    if (is_device(AT_FDCWD, path))
        return open_device(flags);
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (NEEDS_MODE(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    if (is_device(AT_FDCWD, path))
        return open_device(flags);
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (NEEDS_MODE(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    if (is_device(dirfd, path))
        return open_device(flags);
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (NEEDS_MODE(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    if (is_device(dirfd, path))
        return open_device(flags);
    return real_openat64(dirfd, path, flags, mode);
}

/* _FORTIFY_SOURCE builds call these when the flags are not a compile-time constant. */
int __open_2(const char *path, int flags)
{
    if (is_device(AT_FDCWD, path))
        return open_device(flags);
    return real___open_2(path, flags);
}

int __open64_2(const char *path, int flags)
{
    if (is_device(AT_FDCWD, path))
        return open_device(flags);
    return real___open64_2(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
    if (is_device(dirfd, path))
        return open_device(flags);
    return real___openat_2(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
    if (is_device(dirfd, path))
        return open_device(flags);
    return real___openat64_2(dirfd, path, flags);
}

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    pthread_once(&once, init);
    if (conn(fd))
        return forward_ioctl(fd, request, arg);
    return real_ioctl(fd, request, arg);
}

int close(int fd)
{
    pthread_once(&once, init);
    if (conn(fd))
        atomic_store(&conn_of[fd], 0);
    return real_close(fd);
}

/* A dup'd fd is the same open file (the same connection). */
static int note_dup(int oldfd, int newfd)
{
    if (newfd >= 0 && newfd < MAX_FDS)
        atomic_store(&conn_of[newfd], conn(oldfd));
    return newfd;
}

int dup(int oldfd)
{
    pthread_once(&once, init);
    return note_dup(oldfd, real_dup(oldfd));
}

int dup2(int oldfd, int newfd)
{
    pthread_once(&once, init);
    int r = real_dup2(oldfd, newfd);
    return r < 0 || oldfd == newfd ? r : note_dup(oldfd, r);
}

int dup3(int oldfd, int newfd, int flags)
{
    pthread_once(&once, init);
    int r = real_dup3(oldfd, newfd, flags);
    return r < 0 ? r : note_dup(oldfd, r);
}
