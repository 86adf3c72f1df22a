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
