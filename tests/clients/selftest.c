/*
 * selftest.c - the kernel selftest's TDREPORT check (ref §3), as an unmodified client would run it.
 * Compiled by tests/test_transport_*.py with cc against csrc/tdx_abi.h (no ABI literal here).
 *
 *   selftest DEVICE_PATH v6|v4 [UNKNOWN_CMD_HEX]
 *
 * v6: struct tdx_report_req (REPORTDATA at 0, TDREPORT at 64) with TDX_CMD_GET_REPORT0;
 * v4: one in-place 1024-byte buffer with TDX_CMD_GET_TDREPORT (ref §2.2).
 * Exit 0 when every check holds; otherwise it names the failing check and exits 1.
 * With UNKNOWN_CMD_HEX it instead issues that command and prints "ret errno".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "tdx_abi.h"

#define FAIL(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } while (0)

int main(int argc, char **argv)
{
    if (argc < 3)
        FAIL("usage: selftest DEVICE_PATH v6|v4 [UNKNOWN_CMD_HEX]");
    int v4 = strcmp(argv[2], "v4") == 0;
    static unsigned char buf[TDX_REPORT_REQ_LEN + 4096];
    int fd = open(argv[1], O_RDWR | O_SYNC);
    if (fd <= 0)
        FAIL("open %s: fd %d errno %d", argv[1], fd, errno);
    if (argc > 3) {
        unsigned long cmd = strtoul(argv[3], NULL, 16);
        int r = ioctl(fd, cmd, buf);
        printf("%d %d\n", r, r < 0 ? errno : 0);
        return close(fd) == 0 ? 0 : 1;
    }
    unsigned char *reportdata = buf; /* both layouts put REPORTDATA at offset 0 */
    for (int i = 0; i < TDX_REPORTDATA_LEN; i++)
        reportdata[i] = (unsigned char)i;
    unsigned char expect[TDX_REPORTDATA_LEN];
    memcpy(expect, reportdata, sizeof(expect));
    int r = ioctl(fd, v4 ? TDX_CMD_GET_TDREPORT : TDX_CMD_GET_REPORT0, buf);
    if (r != 0)
        FAIL("ioctl: %d errno %d", r, errno);
    const unsigned char *tdreport = v4 ? buf : buf + TDX_REPORT_REQ_OFF_TDREPORT;
    if (memcmp(tdreport + TDR_OFF_REPORTDATA, expect, TDX_REPORTDATA_LEN) != 0)
        FAIL("TDREPORT bytes %d..%d differ from REPORTDATA", TDR_OFF_REPORTDATA,
             TDR_OFF_REPORTDATA + TDX_REPORTDATA_LEN - 1);
    if (close(fd) != 0)
        FAIL("close: errno %d", errno);
    printf("ok\n");
    return 0;
}
