/*
 * interrupted.c - issue TDX_CMD_GET_REPORT0 with a SIGUSR1 handler installed without SA_RESTART, and
 * print "ret errno" when the ioctl returns: a signal that arrives while the driver waits for 6.16's
 * mr_lock must end the call with EINTR (ref §2.5 step 1). Prints "waiting" first, once the handler is
 * in place.
 *
 *   interrupted DEVICE_PATH
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "tdx_abi.h"

static void on_signal(int sig) { (void)sig; }

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART */
    sigaction(SIGUSR1, &sa, NULL);
    static unsigned char req[TDX_REPORT_REQ_LEN];
    int fd = open(argv[1], O_RDWR);
    if (fd < 0)
        return 1;
    printf("waiting\n");
    fflush(stdout);
    int r = ioctl(fd, TDX_CMD_GET_REPORT0, req);
    printf("%d %d\n", r, r < 0 ? errno : 0);
    close(fd);
    return 0;
}
