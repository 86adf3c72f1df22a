/* tdx_usercopy.c - see tdx_usercopy.h. */
#define _GNU_SOURCE
#include "tdx_usercopy.h"
#include "tdx_abi.h"

#include <sys/uio.h>

/* x86-64 host pages are the TDX page size (ref §4.3): the fault position is page-granular */
#define PAGE ((uint32_t)TDX_PAGE_SIZE)

static uint32_t vm_copy(pid_t pid, uint64_t addr, uint8_t *buf, uint32_t len, int writing)
{
    uint32_t done = 0;
    while (done < len) {
        uint32_t chunk = PAGE - (uint32_t)((addr + done) % PAGE);
        if (chunk > len - done)
            chunk = len - done;
        struct iovec local = {buf + done, chunk};
        struct iovec remote = {(void *)(uintptr_t)(addr + done), chunk};
        ssize_t n = writing ? process_vm_writev(pid, &local, 1, &remote, 1, 0)
                            : process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n <= 0)
            break;
        done += (uint32_t)n;
        if ((uint32_t)n < chunk)
            break;
    }
    return done;
}

uint32_t tdxu_vm_read(pid_t pid, uint64_t addr, uint8_t *out, uint32_t len)
{
    return vm_copy(pid, addr, out, len, 0);
}

uint32_t tdxu_vm_write(pid_t pid, uint64_t addr, const uint8_t *data, uint32_t len)
{
    return vm_copy(pid, addr, (uint8_t *)data, len, 1); /* the local side is only read */
}

void tdxu_changed_range(const uint8_t *before, const uint8_t *after, uint32_t limit, uint32_t *first,
                        uint32_t *count)
{
    uint32_t lo = 0, hi = limit;
    while (lo < limit && before[lo] == after[lo])
        lo++;
    while (hi > lo && before[hi - 1] == after[hi - 1])
        hi--;
    *first = lo;
    *count = hi - lo;
}
