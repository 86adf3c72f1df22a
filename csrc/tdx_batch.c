/*
 * tdx_batch.c - see tdx_batch.h. Runs without the GIL; touches only the process's own task and address
 * space, so batches of different processes run in parallel (the driver's own locks still apply: 6.16's
 * mr_lock serialises them, ref §2.5).
 */
#include "tdx_batch.h"

#include <stdatomic.h>
#include <stdlib.h>

#include "guest_kernel.h"
#include "tdx_abi.h"

long tdb_ioctl_batch(td_process *p, int fd, const tdb_request *req, const uint8_t *reportdata, size_t n,
                     const uint32_t *fail_nth, long *rets, uint8_t *reports)
{
    gk_mm *mm = td_process_mm(p);
    gk_task *task = td_process_task(p);
    const uint64_t rd_addr = req->arg + req->reportdata_off;
    const uint64_t tr_addr = req->arg + req->tdreport_off;

    if (!gk_mm_mapped(mm, rd_addr, TDX_REPORTDATA_LEN) || !gk_mm_mapped(mm, tr_addr, TDX_REPORT_LEN))
        return -TDXM_EFAULT;
    for (size_t i = 0; i < n; i++) {
        const int armed = fail_nth != NULL && fail_nth[i] != 0;

        /* Mapped was checked above; only another thread unmapping it meanwhile can fail this. */
        if (gk_mm_poke(mm, rd_addr, reportdata + i * TDX_REPORTDATA_LEN, TDX_REPORTDATA_LEN) != 0) {
            rets[i] = -TDXM_EFAULT;
            return (long)i;
        }
        if (armed)
            atomic_store(&task->fail_nth, fail_nth[i]);
        rets[i] = td_ioctl(p, fd, req->cmd, req->arg);
        if (armed)
            atomic_store(&task->fail_nth, 0);
        if (rets[i] == TD_RET_TD_EXIT)
            return (long)i;
        if (rets[i] == 0)
            (void)gk_mm_peek(mm, tr_addr, reports + i * TDX_REPORT_LEN, TDX_REPORT_LEN);
    }
    return (long)n;
}

long tdb_tsm_quote(td_process *p, const char *dir, const char *inblob, const char *outblob, uint64_t addr,
                   const uint8_t reportdata[64], size_t chunk, uint8_t **out, size_t *out_cap, int *step)
{
    gk_mm *mm = td_process_mm(p);
    size_t len = 0;
    long n;
    int fd, rc;

    *step = TDB_STEP_NONE;
    rc = td_mkdir(p, dir);
    if (rc != 0 && rc != -TDXM_EEXIST) {
        *step = TDB_STEP_MKDIR;
        return rc;
    }
    fd = td_open(p, inblob, 1 /* O_WRONLY */);
    if (fd < 0) {
        *step = TDB_STEP_OPEN_IN;
        return fd;
    }
    if (!gk_mm_mapped(mm, addr, TDX_REPORTDATA_LEN) || gk_mm_poke(mm, addr, reportdata, TDX_REPORTDATA_LEN)) {
        *step = TDB_STEP_POKE, n = -TDXM_EFAULT;
    } else {
        n = td_write(p, fd, addr, TDX_REPORTDATA_LEN);
        if (n < 0)
            *step = TDB_STEP_WRITE;
    }
    (void)td_close(p, fd); /* the commit (quote.md §1.4), also after a failed write */
    if (*step != TDB_STEP_NONE)
        return n;
    fd = td_open(p, outblob, 0 /* O_RDONLY */);
    if (fd < 0) {
        *step = TDB_STEP_OPEN_OUT;
        return fd;
    }
    for (;;) {
        n = td_read(p, fd, addr, (int64_t)chunk);
        if (n < 0) {
            *step = TDB_STEP_READ;
            break;
        }
        if (n == 0) {
            n = (long)len;
            break;
        }
        if (len + (size_t)n > *out_cap) {
            size_t cap = *out_cap ? *out_cap : (size_t)n;
            while (cap < len + (size_t)n)
                cap *= 2;
            uint8_t *grown = realloc(*out, cap);
            if (grown == NULL) {
                *step = TDB_STEP_NOMEM, n = -TDXM_ENOMEM;
                break;
            }
            *out = grown, *out_cap = cap;
        }
        if (!gk_mm_mapped(mm, addr, (uint64_t)n) || gk_mm_peek(mm, addr, *out + len, (size_t)n)) {
            *step = TDB_STEP_PEEK; /* n: the count read */
            break;
        }
        len += (size_t)n;
    }
    (void)td_close(p, fd);
    return n;
}
