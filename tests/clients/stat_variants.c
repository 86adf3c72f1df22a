/*
 * stat_variants.c - ask about the device node through every stat/access entry point the LD_PRELOAD
 * library interposes, including the glibc-internal __xstat family (found with dlsym, as a binary
 * built against glibc < 2.33 calls them), and fstat/statx of an open fd of the device.
 *
 *   stat_variants DEVICE_PATH    prints one line per entry point:
 *                                "name mode=<octal st_mode> rdev=<major>:<minor>" or "name <ret> <errno>"
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static void show(const char *name, int r, const struct stat *st)
{
    if (r != 0)
        printf("%s %d %d\n", name, r, errno);
    else
        printf("%s mode=%o rdev=%u:%u\n", name, (unsigned)st->st_mode, major(st->st_rdev),
               minor(st->st_rdev));
}

static void show_rc(const char *name, int r) { printf("%s %d %d\n", name, r, r ? errno : 0); }

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    const char *p = argv[1];
    struct stat st;
    struct stat64 st64;
    int (*xstat)(int, const char *, struct stat *) = dlsym(RTLD_DEFAULT, "__xstat");
    int (*lxstat)(int, const char *, struct stat *) = dlsym(RTLD_DEFAULT, "__lxstat");
    int (*fxstat)(int, int, struct stat *) = dlsym(RTLD_DEFAULT, "__fxstat");
    int (*fxstatat)(int, int, const char *, struct stat *, int) = dlsym(RTLD_DEFAULT, "__fxstatat");
    int (*xstat64)(int, const char *, struct stat64 *) = dlsym(RTLD_DEFAULT, "__xstat64");
    int (*lxstat64)(int, const char *, struct stat64 *) = dlsym(RTLD_DEFAULT, "__lxstat64");

    show("stat", stat(p, &st), &st);
    show("lstat", lstat(p, &st), &st);
    show("fstatat", fstatat(AT_FDCWD, p, &st, 0), &st);
    show("fstatat_nofollow", fstatat(AT_FDCWD, p, &st, AT_SYMLINK_NOFOLLOW), &st);
    show("stat64", stat64(p, &st64), (struct stat *)&st64);
    show("lstat64", lstat64(p, &st64), (struct stat *)&st64);
    show("fstatat64", fstatat64(AT_FDCWD, p, &st64, 0), (struct stat *)&st64);
    show("__xstat", xstat ? xstat(1, p, &st) : -2, &st);
    show("__lxstat", lxstat ? lxstat(1, p, &st) : -2, &st);
    show("__fxstatat", fxstatat ? fxstatat(1, AT_FDCWD, p, &st, 0) : -2, &st);
    show("__xstat64", xstat64 ? xstat64(1, p, (struct stat64 *)&st) : -2, &st);
    show("__lxstat64", lxstat64 ? lxstat64(1, p, (struct stat64 *)&st) : -2, &st);
    struct statx stx;
    int r = statx(AT_FDCWD, p, 0, STATX_BASIC_STATS, &stx);
    if (r == 0) {
        st.st_mode = stx.stx_mode;
        st.st_rdev = makedev(stx.stx_rdev_major, stx.stx_rdev_minor);
    }
    show("statx", r, &st);
    show_rc("access_rw", access(p, R_OK | W_OK));
    show_rc("access_x", access(p, X_OK));
    show_rc("faccessat", faccessat(AT_FDCWD, p, R_OK | W_OK, 0));
    show_rc("faccessat_eaccess", faccessat(AT_FDCWD, p, R_OK | W_OK, AT_EACCESS));
    show_rc("euidaccess", euidaccess(p, R_OK | W_OK));
    int fd = open(p, O_RDWR);
    if (fd < 0) {
        printf("open %d %d\n", fd, errno);
        return 1;
    }
    show("fstat", fstat(fd, &st), &st);
    show("fstat64", fstat64(fd, &st64), (struct stat *)&st64);
    show("__fxstat", fxstat ? fxstat(1, fd, &st) : -2, &st);
    show("fstatat_empty", fstatat(fd, "", &st, AT_EMPTY_PATH), &st);
    r = statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx);
    if (r == 0) {
        st.st_mode = stx.stx_mode;
        st.st_rdev = makedev(stx.stx_rdev_major, stx.stx_rdev_minor);
    }
    show("statx_empty", r, &st);
    close(fd);
    return 0;
}
