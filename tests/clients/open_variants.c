/*
 * open_variants.c - open the device through every libc entry point the LD_PRELOAD library
 * interposes (open, open64, openat, openat64 and the _FORTIFY_SOURCE variants __open_2, __open64_2,
 * __openat_2, __openat64_2) and dup/dup2/dup3 of such an fd, run TDX_CMD_GET_REPORT0 on each fd
 * and close it.
 *
 *   open_variants DEVICE_PATH     prints one line per entry point: "name ok" or "name FAIL ..."
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "tdx_abi.h"

int __open_2(const char *, int);
int __open64_2(const char *, int);
int __openat_2(int, const char *, int);
int __openat64_2(int, const char *, int);
int open64(const char *, int, ...);
int openat64(int, const char *, int, ...);

static int check(const char *name, int fd)
{
    static unsigned char req[TDX_REPORT_REQ_LEN];
    if (fd <= 0) {
        printf("%s FAIL open errno %d\n", name, errno);
        return 1;
    }
    memset(req, 0, sizeof(req));
    req[0] = 0x5a;
    if (ioctl(fd, TDX_CMD_GET_REPORT0, req) != 0) {
        printf("%s FAIL ioctl errno %d\n", name, errno);
        return 1;
    }
    if (req[TDX_REPORT_REQ_OFF_TDREPORT + TDR_OFF_REPORTDATA] != 0x5a) {
        printf("%s FAIL reportdata\n", name);
        return 1;
    }
    if (close(fd) != 0) {
        printf("%s FAIL close errno %d\n", name, errno);
        return 1;
    }
    printf("%s ok\n", name);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    const char *p = argv[1];
    int bad = 0;
    bad |= check("open", open(p, O_RDWR));
    bad |= check("open64", open64(p, O_RDWR));
    bad |= check("openat", openat(AT_FDCWD, p, O_RDWR));
    bad |= check("openat64", openat64(AT_FDCWD, p, O_RDWR));
    bad |= check("__open_2", __open_2(p, O_RDWR));
    bad |= check("__open64_2", __open64_2(p, O_RDWR));
    bad |= check("__openat_2", __openat_2(AT_FDCWD, p, O_RDWR));
    bad |= check("__openat64_2", __openat64_2(AT_FDCWD, p, O_RDWR));
    /* dup'd fds are the same open file: they keep working after the original is closed */
    int fd = open(p, O_RDWR), copy = dup(fd);
    close(fd);
    bad |= check("dup", copy);
    fd = open(p, O_RDWR);
    copy = dup2(fd, 100);
    close(fd);
    bad |= check("dup2", copy);
    fd = open(p, O_RDWR);
    copy = dup3(fd, 101, O_CLOEXEC);
    close(fd);
    bad |= check("dup3", copy);
    return bad;
}
