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
 * file). The stat and access families answer for the path (and fstat for our fds) as for the
 * character device the daemon serves (node_stat below), so clients that check first find it.
 *
 * The served tree (the daemon's HELLO lists its paths: /sys/kernel/config/tsm and below, the two CCEL
 * files, the 6.16 measurement directories) is forwarded too: an open of such a path connects a new
 * socket that becomes one open file of the daemon's tree (VOPEN; its last close, dup'd and inherited
 * fds included, is the release, which commits a configfs inblob), and read, write, pread, pwrite and
 * lseek on it are requests; mkdir, rmdir, unlink, the stat and access families and
 * opendir/readdir/closedir of those paths ask the daemon on a short connection each. So the errnos
 * are the emulated kernel's (a zero-length write included).
 *
 * It cannot reach: statically linked programs and Go binaries (they make raw syscalls, no libc),
 * fopen/freopen (glibc opens internally without the exported symbols), fcntl(F_DUPFD) copies (dup,
 * dup2 and dup3 are followed), io_uring, readv/writev/sendfile/mmap on the tree's files, fdopendir,
 * getdents, *at calls relative to a directory fd of the tree, and paths that name the device or the
 * tree differently (relative paths, symlinks, ".."). Use the FUSE files (`tdxmodel serve --mount`,
 * `--bind`, `--bind-tsm`, `--bind-acpi`, or `tdxmodel run`) for those.
 */
#define _GNU_SOURCE
#include <dirent.h>
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
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include <grp.h>

#include "tdx_abi.h"
#include "tdx_usercopy.h"
#include "tdx_wire.h"

#define MAX_FDS 65536
/* st_dev of the served tree's files: an anonymous device, as configfs's and sysfs's are (ours to pick) */
#define TREE_DEV_MAJOR 0u
#define TREE_DEV_MINOR 0x2du

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char device_path[TDXW_MAX_PATH];
static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static struct tdxw_window windows[TDXW_MAX_WINDOWS];
static uint32_t nwindows;
static int enabled;
/* what stat answers for the node (HELLO): its permission bits, device number and times */
static uint32_t node_mode, node_rdev_major, node_rdev_minor;
static int64_t node_mtime;
/* the served tree's paths (HELLO) */
static struct tdxw_map maps[TDXW_MAX_MAPS];
static uint32_t nmaps;
/* what an fd of ours is: 0 none, FD_DEVICE, FD_TREE (with what stat said of its path at open) */
enum { FD_DEVICE = 1, FD_TREE = 2 };
static atomic_uchar kind_of[MAX_FDS];
static struct tdxw_vstat tree_stat_of[MAX_FDS];
static uint64_t tree_ino_of[MAX_FDS];
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
static int (*real_stat)(const char *, struct stat *);
static int (*real_lstat)(const char *, struct stat *);
static int (*real_fstat)(int, struct stat *);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_stat64)(const char *, struct stat64 *);
static int (*real_lstat64)(const char *, struct stat64 *);
static int (*real_fstat64)(int, struct stat64 *);
static int (*real_fstatat64)(int, const char *, struct stat64 *, int);
static int (*real___xstat)(int, const char *, struct stat *);
static int (*real___lxstat)(int, const char *, struct stat *);
static int (*real___fxstat)(int, int, struct stat *);
static int (*real___fxstatat)(int, int, const char *, struct stat *, int);
static int (*real___xstat64)(int, const char *, struct stat64 *);
static int (*real___lxstat64)(int, const char *, struct stat64 *);
static int (*real___fxstat64)(int, int, struct stat64 *);
static int (*real___fxstatat64)(int, int, const char *, struct stat64 *, int);
static int (*real_statx)(int, const char *, int, unsigned int, struct statx *);
static int (*real_access)(const char *, int);
static int (*real_faccessat)(int, const char *, int, int);
static int (*real_euidaccess)(const char *, int);
static int (*real_eaccess)(const char *, int);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pread64)(int, void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static off_t (*real_lseek)(int, off_t, int);
static off_t (*real_lseek64)(int, off_t, int);
static int (*real_mkdir)(const char *, mode_t);
static int (*real_mkdirat)(int, const char *, mode_t);
static int (*real_rmdir)(const char *);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static DIR *(*real_opendir)(const char *);
static struct dirent *(*real_readdir)(DIR *);
static struct dirent64 *(*real_readdir64)(DIR *);
static int (*real_closedir)(DIR *);
static void (*real_rewinddir)(DIR *);
static int (*real_dirfd)(DIR *);

static void *resolve_compat(const char *name)
{
    void *f = dlsym(RTLD_NEXT, name);
    return f ? f : dlvsym(RTLD_NEXT, name, "GLIBC_2.2.5"); /* x86-64's first symbol version */
}

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
    real_stat = dlsym(RTLD_NEXT, "stat");
    real_lstat = dlsym(RTLD_NEXT, "lstat");
    real_fstat = dlsym(RTLD_NEXT, "fstat");
    real_fstatat = dlsym(RTLD_NEXT, "fstatat");
    real_stat64 = dlsym(RTLD_NEXT, "stat64");
    real_lstat64 = dlsym(RTLD_NEXT, "lstat64");
    real_fstat64 = dlsym(RTLD_NEXT, "fstat64");
    real_fstatat64 = dlsym(RTLD_NEXT, "fstatat64");
    /* glibc < 2.33 exports only these (the stat family was inline wrappers around them); newer glibc
     * keeps them as compat symbols for old binaries, which dlsym does not return by default */
    real___xstat = resolve_compat("__xstat");
    real___lxstat = resolve_compat("__lxstat");
    real___fxstat = resolve_compat("__fxstat");
    real___fxstatat = resolve_compat("__fxstatat");
    real___xstat64 = resolve_compat("__xstat64");
    real___lxstat64 = resolve_compat("__lxstat64");
    real___fxstat64 = resolve_compat("__fxstat64");
    real___fxstatat64 = resolve_compat("__fxstatat64");
    real_statx = dlsym(RTLD_NEXT, "statx");
    real_access = dlsym(RTLD_NEXT, "access");
    real_faccessat = dlsym(RTLD_NEXT, "faccessat");
    real_euidaccess = dlsym(RTLD_NEXT, "euidaccess");
    real_eaccess = dlsym(RTLD_NEXT, "eaccess");
    real_read = dlsym(RTLD_NEXT, "read");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pread = dlsym(RTLD_NEXT, "pread");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pread64 = dlsym(RTLD_NEXT, "pread64");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_lseek = dlsym(RTLD_NEXT, "lseek");
    real_lseek64 = dlsym(RTLD_NEXT, "lseek64");
    real_mkdir = dlsym(RTLD_NEXT, "mkdir");
    real_mkdirat = dlsym(RTLD_NEXT, "mkdirat");
    real_rmdir = dlsym(RTLD_NEXT, "rmdir");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    real_unlinkat = dlsym(RTLD_NEXT, "unlinkat");
    real_opendir = dlsym(RTLD_NEXT, "opendir");
    real_readdir = dlsym(RTLD_NEXT, "readdir");
    real_readdir64 = dlsym(RTLD_NEXT, "readdir64");
    real_closedir = dlsym(RTLD_NEXT, "closedir");
    real_rewinddir = dlsym(RTLD_NEXT, "rewinddir");
    real_dirfd = dlsym(RTLD_NEXT, "dirfd");
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
        node_mode = hello.mode & 07777;
        node_rdev_major = hello.rdev_major;
        node_rdev_minor = hello.rdev_minor;
        node_mtime = hello.mtime;
        nmaps = hello.nmaps < TDXW_MAX_MAPS ? hello.nmaps : TDXW_MAX_MAPS;
        for (uint32_t i = 0; i < nmaps; i++) {
            maps[i] = hello.maps[i];
            maps[i].client[TDXW_MAX_PATH - 1] = 0;
            maps[i].served[TDXW_MAX_SERVED - 1] = 0;
        }
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
    atomic_store(&kind_of[fd], FD_DEVICE);
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

/* ------------------------------------------------------------------------------- the served tree */

/* The served path of an absolute client path (doubled and trailing slashes and "." components
 * dropped), into out: 1 when the daemon serves it, else 0. dirfd is ignored, as for the device. */
static int served_of(int dirfd, const char *path, char *out)
{
    (void)dirfd;
    pthread_once(&once, init);
    if (!enabled || !nmaps || !path || path[0] != '/' || strlen(path) >= TDXW_MAX_PATH)
        return 0;
    char norm[TDXW_MAX_PATH];
    size_t n = 0;
    for (const char *p = path; *p;) {
        while (*p == '/')
            p++;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0)
            break;
        if (len == 2 && p[0] == '.' && p[1] == '.')
            return 0; /* not resolved here: the real path decides */
        if (!(len == 1 && p[0] == '.')) {
            norm[n++] = '/';
            memcpy(norm + n, p, len);
            n += len;
        }
        p += len;
    }
    norm[n] = 0;
    for (uint32_t i = 0; i < nmaps; i++) {
        size_t cl = strlen(maps[i].client);
        if (strncmp(norm, maps[i].client, cl) != 0)
            continue;
        if (norm[cl] == 0) {
            snprintf(out, TDXW_MAX_PATH, "%s", maps[i].served);
            return 1;
        }
        if (norm[cl] == '/' && !maps[i].exact) {
            if (snprintf(out, TDXW_MAX_PATH, "%s%s", maps[i].served, norm + cl) >= (int)TDXW_MAX_PATH)
                return 0;
            return 1;
        }
    }
    return 0;
}

/* One request on connection fd: header, `a`, `b`; the reply and up to `cap` data bytes into data.
 * Returns the result (>= 0 or -errno), -EIO when the daemon went away; *got: the data's length. */
static int64_t request(int fd, uint16_t op, const void *a, size_t alen, const void *b, size_t blen,
                       void *data, size_t cap, uint32_t *got)
{
    struct tdxw_header h = {TDXW_MAGIC, TDXW_VERSION, op, (uint32_t)(alen + blen)};
    struct reply reply;
    if (got)
        *got = 0;
    if (full_io(fd, &h, sizeof(h), 1) < 0 || (alen && full_io(fd, (void *)a, alen, 1) < 0) ||
        (blen && full_io(fd, (void *)b, blen, 1) < 0) || recv_reply(fd, &reply) < 0 ||
        reply.r.wb_length > cap || full_io(fd, data, reply.r.wb_length, 0) < 0)
        return -EIO;
    if (got)
        *got = reply.r.wb_length;
    return reply.r.result;
}

/* A path op on a short connection of its own. */
static int64_t path_op(uint16_t op, const char *served, int flags, unsigned mode, void *data, size_t cap,
                       uint32_t *got)
{
    int fd = connect_daemon();
    if (fd < 0)
        return -ENODEV; /* the daemon is gone */
    struct tdxw_path p = {flags, mode, (uint32_t)strlen(served), 0};
    int64_t r = request(fd, op, &p, sizeof(p), served, p.length, data, cap, got);
    real_close(fd);
    return r;
}

static int fail(int64_t r)
{
    errno = (int)-r;
    return -1;
}

static int tree_vstat(const char *served, struct tdxw_vstat *v)
{
    uint32_t got = 0;
    int64_t r = path_op(TDXW_OP_VSTAT, served, 0, 0, v, sizeof(*v), &got);
    if (r == 0 && got != sizeof(*v))
        r = -EIO;
    return (int)r;
}

static void tree_stat(const struct tdxw_vstat *v, const char *served, struct stat *st);

static int open_tree(const char *served, int flags, mode_t mode)
{
    int fd = connect_daemon();
    if (fd < 0) {
        errno = ENODEV;
        return -1;
    }
    if (fd >= MAX_FDS) {
        real_close(fd);
        errno = EMFILE;
        return -1;
    }
    struct tdxw_vstat v;
    int64_t r;
    struct tdxw_path p = {flags, (unsigned)mode, (uint32_t)strlen(served), 0};
    r = request(fd, TDXW_OP_VOPEN, &p, sizeof(p), served, p.length, NULL, 0, NULL);
    if (r == 0 && (r = tree_vstat(served, &v)) == 0) {
        struct stat st;
        tree_stat(&v, served, &st);
        tree_stat_of[fd] = v;
        tree_ino_of[fd] = st.st_ino;
    }
    if (r < 0) {
        real_close(fd);
        return fail(r);
    }
    if (!(flags & O_CLOEXEC)) {
        int fdfl = fcntl(fd, F_GETFD);
        fcntl(fd, F_SETFD, fdfl & ~FD_CLOEXEC);
    }
    unsigned id = atomic_fetch_add(&next_conn, 1);
    atomic_store(&kind_of[fd], FD_TREE);
    atomic_store(&conn_of[fd], id ? id : atomic_fetch_add(&next_conn, 1));
    return fd;
}

static int is_tree_fd(int fd) { return fd >= 0 && fd < MAX_FDS && atomic_load(&kind_of[fd]) == FD_TREE && conn(fd); }

/* READ, WRITE or LSEEK on a tree fd, under the connection's stripe lock. */
static int64_t tree_io(int fd, uint16_t op, int64_t offset, void *buf, size_t count, int whence)
{
    if (count > TDXW_MAX_IO)
        count = TDXW_MAX_IO; /* a shorter read or write, as read(2) and write(2) may return */
    struct tdxw_rw q = {offset, (uint32_t)count, whence};
    pthread_mutex_t *lock = &stripes[conn(fd) % 64];
    pthread_mutex_lock(lock);
    int64_t r;
    if (op == TDXW_OP_WRITE) {
        /* the bytes the caller can read go; a fault in its buffer is the kernel's -EFAULT */
        uint8_t *copy = malloc(count ? count : 1);
        uint32_t readable = copy ? self_copy((uint64_t)(uintptr_t)buf, copy, (uint32_t)count, 0) : 0;
        if (!copy)
            r = -ENOMEM;
        else if (readable < count && readable == 0)
            r = -EFAULT;
        else {
            q.count = readable;
            r = request(fd, op, &q, sizeof(q), copy, readable, NULL, 0, NULL);
        }
        free(copy);
    } else if (op == TDXW_OP_READ) {
        uint8_t *data = malloc(count ? count : 1);
        uint32_t got = 0;
        r = data ? request(fd, op, &q, sizeof(q), NULL, 0, data, count, &got) : -ENOMEM;
        if (r >= 0 && got) {
            uint32_t done = self_copy((uint64_t)(uintptr_t)buf, data, got, 1);
            if (done < got)
                r = done ? (int64_t)done : -EFAULT;
        }
        free(data);
    } else if (op == TDXW_OP_FLUSH) {
        r = request(fd, op, NULL, 0, NULL, 0, NULL, 0, NULL);
    } else {
        r = request(fd, op, &q, sizeof(q), NULL, 0, NULL, 0, NULL);
    }
    pthread_mutex_unlock(lock);
    return r;
}

static void tree_stat(const struct tdxw_vstat *v, const char *served, struct stat *st)
{
    uint64_t ino = 1469598103934665603ull; /* FNV-1a of the served path: ours to pick, stable */
    for (const char *p = served; *p; p++)
        ino = (ino ^ (unsigned char)*p) * 1099511628211ull;
    memset(st, 0, sizeof(*st));
    st->st_dev = makedev(TREE_DEV_MAJOR, TREE_DEV_MINOR);
    st->st_ino = ino ? ino : 1;
    st->st_mode = (v->type == 1 ? S_IFDIR : S_IFREG) | (v->mode & 07777);
    st->st_nlink = v->type == 1 ? 2 : 1;
    st->st_size = (off_t)v->size;
    st->st_blksize = 4096;
    st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = (time_t)node_mtime;
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
    char sp[TDXW_MAX_PATH];
    if (is_device(AT_FDCWD, path))
        return open_device(flags);
    if (served_of(AT_FDCWD, path, sp))
        return open_tree(sp, flags, mode);
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
    char sp[TDXW_MAX_PATH];
    if (is_device(AT_FDCWD, path))
        return open_device(flags);
    if (served_of(AT_FDCWD, path, sp))
        return open_tree(sp, flags, mode);
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
    char sp[TDXW_MAX_PATH];
    if (is_device(dirfd, path))
        return open_device(flags);
    if (served_of(dirfd, path, sp))
        return open_tree(sp, flags, mode);
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
    char sp[TDXW_MAX_PATH];
    if (is_device(dirfd, path))
        return open_device(flags);
    if (served_of(dirfd, path, sp))
        return open_tree(sp, flags, mode);
    return real_openat64(dirfd, path, flags, mode);
}

/* _FORTIFY_SOURCE builds call these when the flags are not a compile-time constant. */
int __open_2(const char *path, int flags)
{
    char sp[TDXW_MAX_PATH];
    if (is_device(AT_FDCWD, path))
        return open_device(flags);
    if (served_of(AT_FDCWD, path, sp))
        return open_tree(sp, flags, 0);
    return real___open_2(path, flags);
}

int __open64_2(const char *path, int flags)
{
    char sp[TDXW_MAX_PATH];
    if (is_device(AT_FDCWD, path))
        return open_device(flags);
    if (served_of(AT_FDCWD, path, sp))
        return open_tree(sp, flags, 0);
    return real___open64_2(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
    char sp[TDXW_MAX_PATH];
    if (is_device(dirfd, path))
        return open_device(flags);
    if (served_of(dirfd, path, sp))
        return open_tree(sp, flags, 0);
    return real___openat_2(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
    char sp[TDXW_MAX_PATH];
    if (is_device(dirfd, path))
        return open_device(flags);
    if (served_of(dirfd, path, sp))
        return open_tree(sp, flags, 0);
    return real___openat64_2(dirfd, path, flags);
}

/* FICLONE's checks on our fd as the kernel makes them on the character device (fs/remap_range.c; the
 * daemon cannot see this process's fds): the source not open -EBADF; another of our device fds, the
 * same superblock: -EINVAL (not a regular file); any other file: -EXDEV (another file system; a real
 * file on the host's devtmpfs would give -EINVAL, which we cannot tell from here). */
static int clone_from(uint64_t srcfd)
{
    int fd = (int)(uint32_t)srcfd; /* fdget takes an unsigned int */
    errno = conn(fd) ? EINVAL : fcntl(fd, F_GETFD) < 0 ? EBADF : EXDEV;
    return -1;
}

/* Commands the VFS answers before any driver (tdxmodel.profiles.VfsCommand): the close-on-exec pair
 * acts on our socket fd, as the kernel would on the device's; FICLONE/FICLONERANGE name fds of this
 * process; the rest go to the daemon's emulated VFS like any command. 1: answered, *ret set. */
static int vfs_local(int fd, unsigned int cmd, void *arg, int *ret)
{
    if (cmd == FIOCLEX || cmd == FIONCLEX) {
        *ret = real_ioctl(fd, (unsigned long)cmd, arg);
        return 1;
    }
    if (cmd == FICLONE) {
        *ret = clone_from((uint64_t)(uintptr_t)arg);
        return 1;
    }
    if (cmd == FICLONERANGE) {
        uint8_t range[FILE_CLONE_RANGE_LEN];
        uint64_t src_fd;
        if (self_copy((uint64_t)(uintptr_t)arg, range, sizeof range, 0) < sizeof range) {
            errno = EFAULT;
            *ret = -1;
            return 1;
        }
        memcpy(&src_fd, range, sizeof src_fd);
        *ret = clone_from(src_fd);
        return 1;
    }
    return 0;
}

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    pthread_once(&once, init);
    if (is_tree_fd(fd)) {
        errno = ENOTTY; /* configfs and sysfs attributes have no ioctl */
        return -1;
    }
    if (conn(fd)) {
        int ret;
        if (vfs_local(fd, (unsigned int)request, arg, &ret))
            return ret;
        return forward_ioctl(fd, request, arg);
    }
    return real_ioctl(fd, request, arg);
}

int close(int fd)
{
    pthread_once(&once, init);
    if (conn(fd)) {
        if (is_tree_fd(fd)) /* as FUSE's FLUSH: the daemon then waits for the release that may follow */
            tree_io(fd, TDXW_OP_FLUSH, 0, NULL, 0, 0);
        atomic_store(&conn_of[fd], 0);
        atomic_store(&kind_of[fd], 0);
    }
    return real_close(fd);
}

/* A dup'd fd is the same open file (the same connection). */
static int note_dup(int oldfd, int newfd)
{
    if (newfd >= 0 && newfd < MAX_FDS) {
        unsigned id = conn(oldfd);
        if (id && atomic_load(&kind_of[oldfd]) == FD_TREE) {
            tree_stat_of[newfd] = tree_stat_of[oldfd];
            tree_ino_of[newfd] = tree_ino_of[oldfd];
        }
        atomic_store(&kind_of[newfd], id ? atomic_load(&kind_of[oldfd]) : 0);
        atomic_store(&conn_of[newfd], id);
    }
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

/* ------------------------------------------------------------------- stat and access of the node */

/* The node, as the kernel would describe a misc device the daemon serves: a character device
 * (S_IFCHR) with the daemon's --mode, owned by root, with the misc device number the daemon sends
 * (tdxmodel.abi.DEVICE_RDEV), on devtmpfs (st_dev 0:5, as /dev usually is), size 0, and the daemon's
 * start as its times. The inode number is ours to pick. fstat of an fd of the device gives the same. */
#define NODE_DEV_MAJOR 0u
#define NODE_DEV_MINOR 5u
#define NODE_INO 1000u

_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "x86-64: struct stat is struct stat64");

static void node_stat(struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_dev = makedev(NODE_DEV_MAJOR, NODE_DEV_MINOR);
    st->st_ino = NODE_INO;
    st->st_mode = S_IFCHR | node_mode;
    st->st_nlink = 1;
    st->st_uid = 0;
    st->st_gid = 0;
    st->st_rdev = makedev(node_rdev_major, node_rdev_minor);
    st->st_size = 0;
    st->st_blksize = 4096;
    st->st_blocks = 0;
    st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = (time_t)node_mtime;
}


static void stat_to_statx(const struct stat *st, struct statx *stx)
{
    /* the basic stats are all known: answer them whatever was asked, as the kernel may */
    memset(stx, 0, sizeof(*stx));
    stx->stx_mask = STATX_BASIC_STATS;
    stx->stx_blksize = (uint32_t)st->st_blksize;
    stx->stx_nlink = (uint32_t)st->st_nlink;
    stx->stx_uid = st->st_uid;
    stx->stx_gid = st->st_gid;
    stx->stx_mode = (uint16_t)st->st_mode;
    stx->stx_ino = st->st_ino;
    stx->stx_size = (uint64_t)st->st_size;
    stx->stx_blocks = (uint64_t)st->st_blocks;
    stx->stx_atime.tv_sec = st->st_atim.tv_sec;
    stx->stx_mtime.tv_sec = st->st_mtim.tv_sec;
    stx->stx_ctime.tv_sec = st->st_ctim.tv_sec;
    stx->stx_rdev_major = major(st->st_rdev);
    stx->stx_rdev_minor = minor(st->st_rdev);
    stx->stx_dev_major = major(st->st_dev);
    stx->stx_dev_minor = minor(st->st_dev);
}

/* stat of one of our fds: 1 and *st, or 0 when the fd is not ours. */
static int fd_stat(int fd, struct stat *st)
{
    pthread_once(&once, init);
    if (!conn(fd))
        return 0;
    if (atomic_load(&kind_of[fd]) == FD_TREE) {
        tree_stat(&tree_stat_of[fd], "", st);
        st->st_ino = tree_ino_of[fd];
    } else {
        node_stat(st);
    }
    return 1;
}

/* What stat says of a path (or of fd dirfd, for "" with AT_EMPTY_PATH): 1 and *st when it is ours,
 * -1 with errno when it is ours and fails (a missing name of the tree, the daemon gone), 0 when the
 * real call should answer. */
static int lookup_stat(int dirfd, const char *path, int flags, struct stat *st)
{
    if (path && !*path && (flags & AT_EMPTY_PATH))
        return fd_stat(dirfd, st);
    if (is_device(dirfd, path)) {
        node_stat(st);
        return 1;
    }
    char sp[TDXW_MAX_PATH];
    if (served_of(dirfd, path, sp)) {
        struct tdxw_vstat v;
        int r = tree_vstat(sp, &v);
        if (r < 0)
            return fail(r);
        tree_stat(&v, sp, st);
        return 1;
    }
    return 0;
}

static int in_group(gid_t gid, int effective)
{
    if ((effective ? getegid() : getgid()) == gid)
        return 1;
    gid_t groups[256];
    int n = getgroups(256, groups);
    for (int i = 0; i < n; i++)
        if (groups[i] == gid)
            return 1;
    return 0;
}

/* access(2) as the kernel checks a root-owned file (the node, the tree's files and directories):
 * root may read and write whatever the mode, and execute (search) a directory or a file with some x
 * bit; others get the group or other bits. The real uid/gid are checked, or the effective ones for
 * AT_EACCESS / euidaccess. */
static int mode_access(int mode, int effective, mode_t st_mode)
{
    if (mode & ~(R_OK | W_OK | X_OK)) {
        errno = EINVAL;
        return -1;
    }
    if (mode == F_OK)
        return 0;
    uid_t uid = effective ? geteuid() : getuid();
    unsigned granted;
    if (uid == 0)
        granted = R_OK | W_OK | ((S_ISDIR(st_mode) || (st_mode & 0111)) ? X_OK : 0);
    else if (in_group(0, effective))
        granted = (st_mode >> 3) & 7;
    else
        granted = st_mode & 7;
    if ((unsigned)mode & ~granted) {
        errno = EACCES;
        return -1;
    }
    return 0;
}

/* 1 / -1 as lookup_stat, with the access check's result in *ret */
static int lookup_access(int dirfd, const char *path, int mode, int flags, int effective, int *ret)
{
    struct stat st;
    int r = lookup_stat(dirfd, path, flags, &st);
    if (r > 0)
        *ret = mode_access(mode, effective, st.st_mode);
    return r;
}

#define STAT_OR(call)                                                                          \
    do {                                                                                       \
        int ours_ = (call);                                                                    \
        if (ours_)                                                                             \
            return ours_ > 0 ? 0 : -1;                                                         \
    } while (0)

int stat(const char *path, struct stat *st)
{
    STAT_OR(lookup_stat(AT_FDCWD, path, 0, st));
    return real_stat(path, st);
}

int lstat(const char *path, struct stat *st)
{
    STAT_OR(lookup_stat(AT_FDCWD, path, 0, st));
    return real_lstat(path, st);
}

int fstat(int fd, struct stat *st)
{
    STAT_OR(fd_stat(fd, st));
    return real_fstat(fd, st);
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    STAT_OR(lookup_stat(dirfd, path, flags, st));
    return real_fstatat(dirfd, path, st, flags);
}

int stat64(const char *path, struct stat64 *st)
{
    STAT_OR(lookup_stat(AT_FDCWD, path, 0, (struct stat *)st));
    return real_stat64(path, st);
}

int lstat64(const char *path, struct stat64 *st)
{
    STAT_OR(lookup_stat(AT_FDCWD, path, 0, (struct stat *)st));
    return real_lstat64(path, st);
}

int fstat64(int fd, struct stat64 *st)
{
    STAT_OR(fd_stat(fd, (struct stat *)st));
    return real_fstat64(fd, st);
}

int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
    STAT_OR(lookup_stat(dirfd, path, flags, (struct stat *)st));
    return real_fstatat64(dirfd, path, st, flags);
}

/* The glibc-internal entry points of glibc < 2.33 (`ver` is _STAT_VER; on x86-64 one struct layout
 * serves every version). Without the compat symbol, fall back to the plain call. */
int __xstat(int ver, const char *path, struct stat *st)
{
    STAT_OR(lookup_stat(AT_FDCWD, path, 0, st));
    return real___xstat ? real___xstat(ver, path, st) : real_stat(path, st);
}

int __lxstat(int ver, const char *path, struct stat *st)
{
    STAT_OR(lookup_stat(AT_FDCWD, path, 0, st));
    return real___lxstat ? real___lxstat(ver, path, st) : real_lstat(path, st);
}

int __fxstat(int ver, int fd, struct stat *st)
{
    STAT_OR(fd_stat(fd, st));
    return real___fxstat ? real___fxstat(ver, fd, st) : real_fstat(fd, st);
}

int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags)
{
    STAT_OR(lookup_stat(dirfd, path, flags, st));
    return real___fxstatat ? real___fxstatat(ver, dirfd, path, st, flags)
                           : real_fstatat(dirfd, path, st, flags);
}

int __xstat64(int ver, const char *path, struct stat64 *st)
{
    STAT_OR(lookup_stat(AT_FDCWD, path, 0, (struct stat *)st));
    return real___xstat64 ? real___xstat64(ver, path, st) : real_stat64(path, st);
}

int __lxstat64(int ver, const char *path, struct stat64 *st)
{
    STAT_OR(lookup_stat(AT_FDCWD, path, 0, (struct stat *)st));
    return real___lxstat64 ? real___lxstat64(ver, path, st) : real_lstat64(path, st);
}

int __fxstat64(int ver, int fd, struct stat64 *st)
{
    STAT_OR(fd_stat(fd, (struct stat *)st));
    return real___fxstat64 ? real___fxstat64(ver, fd, st) : real_fstat64(fd, st);
}

int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags)
{
    STAT_OR(lookup_stat(dirfd, path, flags, (struct stat *)st));
    return real___fxstatat64 ? real___fxstatat64(ver, dirfd, path, st, flags)
                             : real_fstatat64(dirfd, path, st, flags);
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx)
{
    struct stat st;
    int ours = lookup_stat(dirfd, path, flags, &st);
    if (ours > 0)
        stat_to_statx(&st, stx);
    if (ours)
        return ours > 0 ? 0 : -1;
    if (!real_statx) {
        errno = ENOSYS;
        return -1;
    }
    return real_statx(dirfd, path, flags, mask, stx);
}

int access(const char *path, int mode)
{
    int ret;
    int ours = lookup_access(AT_FDCWD, path, mode, 0, 0, &ret);
    return ours > 0 ? ret : ours < 0 ? -1 : real_access(path, mode);
}

/* glibc's faccessat is the faccessat2 system call (flags included) with a fallback to faccessat */
int faccessat(int dirfd, const char *path, int mode, int flags)
{
    int ret;
    int ours = lookup_access(dirfd, path, mode, flags, (flags & AT_EACCESS) != 0, &ret);
    return ours > 0 ? ret : ours < 0 ? -1 : real_faccessat(dirfd, path, mode, flags);
}

int euidaccess(const char *path, int mode)
{
    int ret;
    int ours = lookup_access(AT_FDCWD, path, mode, 0, 1, &ret);
    return ours > 0 ? ret : ours < 0 ? -1 : real_euidaccess(path, mode);
}

int eaccess(const char *path, int mode)
{
    int ret;
    int ours = lookup_access(AT_FDCWD, path, mode, 0, 1, &ret);
    return ours > 0 ? ret : ours < 0 ? -1 : real_eaccess(path, mode);
}

/* ------------------------------------------------------- read, write and seek on the tree's files */

/* The misc device has no read or write (ref §2: ioctl only): -EINVAL, as the FUSE file gives. */
static ssize_t io_result(int64_t r)
{
    if (r < 0) {
        errno = (int)-r;
        return -1;
    }
    return (ssize_t)r;
}

ssize_t read(int fd, void *buf, size_t count)
{
    pthread_once(&once, init);
    if (is_tree_fd(fd))
        return io_result(tree_io(fd, TDXW_OP_READ, -1, buf, count, 0));
    if (conn(fd))
        return io_result(-EINVAL);
    return real_read(fd, buf, count);
}

ssize_t write(int fd, const void *buf, size_t count)
{
    pthread_once(&once, init);
    if (is_tree_fd(fd))
        return io_result(tree_io(fd, TDXW_OP_WRITE, -1, (void *)buf, count, 0));
    if (conn(fd))
        return io_result(-EINVAL);
    return real_write(fd, buf, count);
}

static ssize_t tree_pio(int fd, uint16_t op, void *buf, size_t count, off_t offset)
{
    if (offset < 0)
        return io_result(-EINVAL); /* ksys_pread64: a negative position, before anything else */
    return io_result(tree_io(fd, op, offset, buf, count, 0));
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset)
{
    pthread_once(&once, init);
    if (is_tree_fd(fd))
        return tree_pio(fd, TDXW_OP_READ, buf, count, offset);
    if (conn(fd))
        return io_result(-EINVAL);
    return real_pread(fd, buf, count, offset);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset)
{
    pthread_once(&once, init);
    if (is_tree_fd(fd))
        return tree_pio(fd, TDXW_OP_READ, buf, count, offset);
    if (conn(fd))
        return io_result(-EINVAL);
    return real_pread64(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
{
    pthread_once(&once, init);
    if (is_tree_fd(fd))
        return tree_pio(fd, TDXW_OP_WRITE, (void *)buf, count, offset);
    if (conn(fd))
        return io_result(-EINVAL);
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset)
{
    pthread_once(&once, init);
    if (is_tree_fd(fd))
        return tree_pio(fd, TDXW_OP_WRITE, (void *)buf, count, offset);
    if (conn(fd))
        return io_result(-EINVAL);
    return real_pwrite64(fd, buf, count, offset);
}

off_t lseek(int fd, off_t offset, int whence)
{
    pthread_once(&once, init);
    if (is_tree_fd(fd))
        return (off_t)io_result(tree_io(fd, TDXW_OP_LSEEK, offset, NULL, 0, whence));
    return real_lseek(fd, offset, whence);
}

off_t lseek64(int fd, off_t offset, int whence)
{
    pthread_once(&once, init);
    if (is_tree_fd(fd))
        return (off_t)io_result(tree_io(fd, TDXW_OP_LSEEK, offset, NULL, 0, whence));
    return real_lseek64(fd, offset, whence);
}

/* ----------------------------------------------------------- directories of the tree, by path */

int mkdir(const char *path, mode_t mode)
{
    char sp[TDXW_MAX_PATH];
    if (served_of(AT_FDCWD, path, sp)) {
        int64_t r = path_op(TDXW_OP_MKDIR, sp, 0, mode, NULL, 0, NULL);
        return r < 0 ? fail(r) : 0;
    }
    return real_mkdir(path, mode);
}

int mkdirat(int dirfd, const char *path, mode_t mode)
{
    char sp[TDXW_MAX_PATH];
    if (served_of(dirfd, path, sp)) {
        int64_t r = path_op(TDXW_OP_MKDIR, sp, 0, mode, NULL, 0, NULL);
        return r < 0 ? fail(r) : 0;
    }
    return real_mkdirat(dirfd, path, mode);
}

static int tree_rmdir(const char *sp)
{
    int64_t r = path_op(TDXW_OP_RMDIR, sp, 0, 0, NULL, 0, NULL);
    return r < 0 ? fail(r) : 0;
}

/* unlink: the VFS's answers for configfs and sysfs, which have no unlink: -EISDIR for a directory,
 * -EPERM for a file (fs/namei.c may_delete, vfs_unlink) */
static int tree_unlink(const char *sp)
{
    struct tdxw_vstat v;
    int r = tree_vstat(sp, &v);
    if (r < 0)
        return fail(r);
    return fail(v.type == 1 ? -EISDIR : -EPERM);
}

int rmdir(const char *path)
{
    char sp[TDXW_MAX_PATH];
    if (served_of(AT_FDCWD, path, sp))
        return tree_rmdir(sp);
    return real_rmdir(path);
}

int unlink(const char *path)
{
    char sp[TDXW_MAX_PATH];
    if (served_of(AT_FDCWD, path, sp))
        return tree_unlink(sp);
    return real_unlink(path);
}

int unlinkat(int dirfd, const char *path, int flags)
{
    char sp[TDXW_MAX_PATH];
    if (served_of(dirfd, path, sp))
        return flags & AT_REMOVEDIR ? tree_rmdir(sp) : tree_unlink(sp);
    return real_unlinkat(dirfd, path, flags);
}

/* A directory stream of the tree: a snapshot of its entries taken at opendir (as getdents reads a
 * configfs directory under its lock), recognised by its address in a list of ours. */
typedef struct tree_dir {
    struct tree_dir *next;
    char *names; /* "<d|f><name>\0" ... */
    uint32_t len, pos;
    int index;   /* 0 ".", 1 "..", then the names */
    char served[TDXW_MAX_PATH];
    struct dirent64 entry;
} tree_dir;

_Static_assert(sizeof(struct dirent) == sizeof(struct dirent64), "x86-64: struct dirent is dirent64");

static pthread_mutex_t dirs_lock = PTHREAD_MUTEX_INITIALIZER;
static tree_dir *dirs;

static tree_dir *ours_dir(DIR *d)
{
    pthread_mutex_lock(&dirs_lock);
    tree_dir *t = dirs;
    while (t && (DIR *)t != d)
        t = t->next;
    pthread_mutex_unlock(&dirs_lock);
    return t;
}

DIR *opendir(const char *path)
{
    char sp[TDXW_MAX_PATH];
    if (!served_of(AT_FDCWD, path, sp))
        return real_opendir(path);
    tree_dir *t = calloc(1, sizeof(*t));
    char *names = malloc(TDXW_MAX_IO);
    if (!t || !names) {
        free(t);
        free(names);
        errno = ENOMEM;
        return NULL;
    }
    uint32_t got = 0;
    int64_t r = path_op(TDXW_OP_READDIR, sp, 0, 0, names, TDXW_MAX_IO, &got);
    if (r < 0) {
        free(t);
        free(names);
        fail(r);
        return NULL;
    }
    t->names = names;
    t->len = got;
    snprintf(t->served, sizeof(t->served), "%s", sp);
    pthread_mutex_lock(&dirs_lock);
    t->next = dirs;
    dirs = t;
    pthread_mutex_unlock(&dirs_lock);
    return (DIR *)t;
}

static struct dirent64 *tree_readdir(tree_dir *t)
{
    struct dirent64 *e = &t->entry;
    memset(e, 0, sizeof(*e));
    if (t->index < 2) {
        snprintf(e->d_name, sizeof(e->d_name), "%s", t->index ? ".." : ".");
        e->d_type = DT_DIR;
    } else {
        while (t->pos < t->len) {
            const char *entry = t->names + t->pos;
            size_t n = strnlen(entry, t->len - t->pos);
            t->pos += (uint32_t)n + 1;
            if (n < 2)
                continue;
            snprintf(e->d_name, sizeof(e->d_name), "%s", entry + 1);
            e->d_type = entry[0] == 'd' ? DT_DIR : DT_REG;
            goto found;
        }
        return NULL; /* the end: errno unchanged */
    }
found:
    t->index++;
    e->d_ino = (ino_t)(t->index + 1);
    e->d_off = t->index;
    e->d_reclen = sizeof(*e);
    return e;
}

struct dirent *readdir(DIR *d)
{
    tree_dir *t = ours_dir(d);
    return t ? (struct dirent *)tree_readdir(t) : real_readdir(d);
}

struct dirent64 *readdir64(DIR *d)
{
    tree_dir *t = ours_dir(d);
    return t ? tree_readdir(t) : real_readdir64(d);
}

void rewinddir(DIR *d)
{
    tree_dir *t = ours_dir(d);
    if (!t) {
        real_rewinddir(d);
        return;
    }
    t->pos = 0;
    t->index = 0;
}

int dirfd(DIR *d)
{
    if (ours_dir(d)) {
        errno = ENOTSUP; /* no fd behind the snapshot */
        return -1;
    }
    return real_dirfd(d);
}

int closedir(DIR *d)
{
    pthread_mutex_lock(&dirs_lock);
    tree_dir **link = &dirs;
    while (*link && (DIR *)*link != d)
        link = &(*link)->next;
    tree_dir *t = *link;
    if (t)
        *link = t->next;
    pthread_mutex_unlock(&dirs_lock);
    if (!t)
        return real_closedir(d);
    free(t->names);
    free(t);
    return 0;
}

/* ------------------------------------------------ AF_VSOCK to the quote service (quote.md §2.7, §4.2)
 *
 * libtdx_attest asks the host's QGS over vsock when /etc/tdx-attest.conf names a port: socket(AF_VSOCK),
 * connect to CID 2 (VMADDR_CID_HOST) and that port, send the framed request, read the answer. With
 * TDXMODEL_QGS_SOCKET=PATH (`tdxmodel serve --qgs PATH`), a connect of any stream socket to CID 2 and
 * TDXMODEL_QGS_PORT (default 4050, qgs.conf's) becomes a connect to that Unix socket: a connected
 * AF_UNIX socket is put in the fd's place (dup3, keeping its O_NONBLOCK and FD_CLOEXEC), so send,
 * recv, poll and close work unchanged. Where the kernel has no vsock, socket(AF_VSOCK) gives a plain
 * AF_UNIX stream socket to be replaced so (while TDXMODEL_QGS_SOCKET is set). Other vsock addresses go
 * to the kernel (on such a stand-in: EINVAL, as an AF_UNIX socket answers a foreign address).
 * TDXMODEL_TDX_ATTEST_CONF=FILE makes fopen of /etc/tdx-attest.conf open FILE (the port to use).
 * Out of reach: getsockname/getpeername on the replaced socket (they show AF_UNIX), and raw syscalls. */
#include <linux/vm_sockets.h>

#define TDX_ATTEST_CONF "/etc/tdx-attest.conf"
#define QGS_DEFAULT_PORT 4050u /* quote_abi.QGS_VSOCK_PORT */

static pthread_once_t qgs_once = PTHREAD_ONCE_INIT;
static char qgs_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static unsigned qgs_port = QGS_DEFAULT_PORT;
static char attest_conf[4096];
static int (*qgs_real_socket)(int, int, int);
static int (*qgs_real_connect)(int, const struct sockaddr *, socklen_t);
static int (*qgs_real_dup3)(int, int, int);
static int (*qgs_real_close)(int);
static FILE *(*qgs_real_fopen)(const char *, const char *);
static FILE *(*qgs_real_fopen64)(const char *, const char *);

static void qgs_init(void)
{
    int saved = errno;
    qgs_real_socket = dlsym(RTLD_NEXT, "socket");
    qgs_real_connect = dlsym(RTLD_NEXT, "connect");
    qgs_real_dup3 = dlsym(RTLD_NEXT, "dup3");
    qgs_real_close = dlsym(RTLD_NEXT, "close");
    qgs_real_fopen = dlsym(RTLD_NEXT, "fopen");
    qgs_real_fopen64 = dlsym(RTLD_NEXT, "fopen64");
    const char *path = getenv("TDXMODEL_QGS_SOCKET");
    if (path && *path && strlen(path) < sizeof(qgs_path))
        strcpy(qgs_path, path);
    const char *port = getenv("TDXMODEL_QGS_PORT");
    if (port && *port) {
        char *end;
        unsigned long v = strtoul(port, &end, 10);
        if (!*end && v > 0 && v <= 0xFFFFFFFFul)
            qgs_port = (unsigned)v;
    }
    const char *conf = getenv("TDXMODEL_TDX_ATTEST_CONF");
    if (conf && *conf && strlen(conf) < sizeof(attest_conf))
        strcpy(attest_conf, conf);
    errno = saved;
}

int socket(int domain, int type, int protocol)
{
    pthread_once(&qgs_once, qgs_init);
    int fd = qgs_real_socket(domain, type, protocol);
    if (fd < 0 && domain == AF_VSOCK && qgs_path[0] && (type & 0xf) == SOCK_STREAM &&
        (errno == EAFNOSUPPORT || errno == ENODEV || errno == EPROTONOSUPPORT)) {
        /* no vsock here: a stand-in that the connect to the QGS replaces */
        return qgs_real_socket(AF_UNIX, type, 0);
    }
    return fd;
}

/* Put a Unix socket connected to the QGS in fd's place. */
static int connect_qgs(int fd)
{
    int type = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return -1;
    if (type != SOCK_STREAM) {
        errno = ESOCKTNOSUPPORT;
        return -1;
    }
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    if (fl < 0 || fdfl < 0)
        return -1;
    int s = qgs_real_socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, qgs_path, sizeof(sa.sun_path) - 1);
    if (qgs_real_connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        fcntl(s, F_SETFL, fl & O_NONBLOCK) < 0 ||
        qgs_real_dup3(s, fd, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
        int e = errno;
        qgs_real_close(s);
        errno = e == ENOENT ? ECONNREFUSED : e; /* no QGS listening: refused, as vsock says */
        return -1;
    }
    qgs_real_close(s);
    return 0;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    pthread_once(&qgs_once, qgs_init);
    if (qgs_path[0] && addr && len >= sizeof(struct sockaddr_vm) && addr->sa_family == AF_VSOCK) {
        const struct sockaddr_vm *vm = (const struct sockaddr_vm *)addr;
        if (vm->svm_cid == VMADDR_CID_HOST && vm->svm_port == qgs_port)
            return connect_qgs(fd);
    }
    return qgs_real_connect(fd, addr, len);
}

static const char *conf_path(const char *path)
{
    pthread_once(&qgs_once, qgs_init);
    return attest_conf[0] && path && strcmp(path, TDX_ATTEST_CONF) == 0 ? attest_conf : path;
}

FILE *fopen(const char *path, const char *mode)
{
    const char *p = conf_path(path);
    return qgs_real_fopen(p, mode);
}

FILE *fopen64(const char *path, const char *mode)
{
    const char *p = conf_path(path);
    return qgs_real_fopen64 ? qgs_real_fopen64(p, mode) : qgs_real_fopen(p, mode);
}
