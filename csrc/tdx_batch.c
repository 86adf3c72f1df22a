/*
 * tdx_batch.c - see tdx_batch.h. Runs without the GIL; touches only the process's own task and address
 * space, so batches of different processes run in parallel (the driver's own locks still apply: 6.16's
 * mr_lock serialises them, ref §2.5).
 */
#include "tdx_batch.h"

#include <stdatomic.h>

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
