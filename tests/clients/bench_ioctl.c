/*
 * bench_ioctl.c - per-ioctl latency of TDX_CMD_GET_REPORT0 (or v4's TDX_CMD_GET_TDREPORT) on a path,
 * for benchmarks/bench_transport.py. Prints the median and the mean, in nanoseconds, over N calls
 * (after N/10 warm-up calls), as "median_ns mean_ns".
 *
 *   bench_ioctl PATH v6|v4 N
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "tdx_abi.h"

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    int v4 = strcmp(argv[2], "v4") == 0;
    long n = atol(argv[3]);
    if (n <= 0)
        return 2;
    unsigned long cmd = v4 ? TDX_CMD_GET_TDREPORT : TDX_CMD_GET_REPORT0;
    static unsigned char buf[TDX_REPORT_REQ_LEN];
    double *t = malloc(sizeof(double) * (size_t)n);
    int fd = open(argv[1], O_RDWR);
    if (fd < 0 || !t) {
        fprintf(stderr, "open %s: errno %d\n", argv[1], errno);
        return 1;
    }
    for (long i = 0; i < n / 10; i++)
        ioctl(fd, cmd, buf);
    double sum = 0;
    for (long i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int r = ioctl(fd, cmd, buf);
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (r != 0) {
            fprintf(stderr, "ioctl: errno %d\n", errno);
            return 1;
        }
        t[i] = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
        sum += t[i];
    }
    qsort(t, (size_t)n, sizeof(double), cmp);
    printf("%.0f %.0f\n", t[n / 2], sum / (double)n);
    close(fd);
    return 0;
}
