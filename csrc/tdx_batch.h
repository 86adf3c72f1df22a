/*
 * tdx_batch.h - the driver-path batch: many GET_REPORT ioctls of one process in one call,
 * without the GIL, each with its own fail-nth (ref §7), over the syscall API of tdx_driver.h.
 *
 * Layer 1 (C core). It adds no driver behaviour: every row is exactly one td_ioctl(), preceded by
 * writing the row's REPORTDATA into the caller's request buffer and followed by reading the TDREPORT
 * back, as a user-space client of the device would do between its ioctls.
 */
#ifndef TDX_BATCH_H
#define TDX_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "tdx_driver.h"

/* The request buffer of one batch: the ioctl's `arg`, and where REPORTDATA goes in and the TDREPORT
 * comes out (v4: both at 0, in place, ref §2.2; v6.2+: 0 and 64 of struct tdx_report_req, ref §2.4). */
typedef struct {
    uint32_t cmd;
    uint64_t arg;
    uint32_t reportdata_off;
    uint32_t tdreport_off;
} tdb_request;

/* For i in 0..n-1: poke reportdata[i*64..] at arg+reportdata_off; if fail_nth != NULL and
 * fail_nth[i] > 0, arm the task's fail-nth with it; rets[i] = td_ioctl(); disarm fail-nth (a schedule
 * entry is for its own row only); if rets[i] == 0, peek the TDREPORT into reports[i*1024..] (rows that
 * fail are left as the caller initialised them).
 * Returns the number of rows done: n; or the index i of the row that stopped the batch: its ioctl ended
 * in a TD exit (rets[i] == TD_RET_TD_EXIT; the caller raises it), or the request buffer was unmapped
 * under it by another thread (rets[i] == -TDXM_EFAULT, no ioctl issued); or -TDXM_EFAULT (nothing done)
 * when the request buffer is not mapped at the start. */
long tdb_ioctl_batch(td_process *p, int fd, const tdb_request *req, const uint8_t *reportdata, size_t n,
                     const uint32_t *fail_nth, long *rets, uint8_t *reports);

/* The configfs-tsm quote as tdxmodel.client.TdxGuest.get_quote makes it (quote.md §1.4-§1.5), in one
 * call: mkdir dir (-EEXIST is an item already there), open inblob write-only, poke the 64 bytes of
 * reportdata at addr, write them, close (the commit; its result ignored), open outblob read-only, read
 * `chunk` bytes at addr until a read returns 0, peeking each read's bytes into *out (grown with
 * realloc; the caller frees it, also on failure), close. The same syscalls in the same order as the
 * Python sequence, nothing else: fail-nth, signals and the last trace run on across them as there.
 * Returns the quote's length, or the failed step's result (a -errno, TD_RET_TD_EXIT, TSM_RET_OOPS, or
 * -TDXM_EFAULT for a poke outside the mapping, the read's count for a peek outside it, -TDXM_ENOMEM
 * when *out cannot grow) with *step
 * set to that step (TDB_STEP_*); the fd a failed step leaves open is closed first, as the Python
 * sequence's finally does. */
enum { TDB_STEP_NONE, TDB_STEP_MKDIR, TDB_STEP_OPEN_IN, TDB_STEP_POKE, TDB_STEP_WRITE, TDB_STEP_OPEN_OUT,
       TDB_STEP_READ, TDB_STEP_PEEK, TDB_STEP_NOMEM };
long tdb_tsm_quote(td_process *p, const char *dir, const char *inblob, const char *outblob, uint64_t addr,
                   const uint8_t reportdata[64], size_t chunk, uint8_t **out, size_t *out_cap, int *step);

#endif /* TDX_BATCH_H */
