# Declarations of csrc/tdx_batch.h: only what the Cython layer uses.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from tdxmodel._core.tdx_driver cimport td_process

cdef extern from "tdx_batch.h" nogil:
    ctypedef struct tdb_request:
        uint32_t cmd
        uint64_t arg
        uint32_t reportdata_off
        uint32_t tdreport_off

    long tdb_ioctl_batch(td_process *p, int fd, const tdb_request *req, const uint8_t *reportdata, size_t n,
                         const uint32_t *fail_nth, long *rets, uint8_t *reports)

    enum:
        TDB_STEP_NONE, TDB_STEP_MKDIR, TDB_STEP_OPEN_IN, TDB_STEP_POKE, TDB_STEP_WRITE, TDB_STEP_OPEN_OUT,
        TDB_STEP_READ, TDB_STEP_PEEK, TDB_STEP_NOMEM
    long tdb_tsm_quote(td_process *p, const char *dir, const char *inblob, const char *outblob, uint64_t addr,
                       const uint8_t *reportdata, size_t chunk, uint8_t **out, size_t *out_cap, int *step)
