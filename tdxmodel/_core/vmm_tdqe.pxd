# Declarations of csrc/vmm_tdqe.h (the host layer's TDQE per-quote path): only what the Cython layer uses.

from libc.stdint cimport uint8_t, uint32_t, int32_t
from tdxmodel._core.tdx_module cimport tdxm_module

cdef extern from "vmm_tdqe.h" nogil:
    ctypedef struct tdqe_ctx:
        pass
    enum:
        TDQE_C_OK
        TDQE_C_NOSPACE
        TDQE_C_REPORT_FORMAT_NOT_SUPPORTED
    tdqe_ctx *tdqe_new(const uint8_t *der, size_t der_len, const uint8_t *header48, const uint8_t *tail,
                       size_t tail_len)
    void tdqe_free(tdqe_ctx *q)
    size_t tdqe_max_quote_len(const tdqe_ctx *q)
    size_t tdqe_quote_len(const tdqe_ctx *q, const uint8_t *report)
    int tdqe_produce(tdqe_ctx *q, tdxm_module *m, const uint8_t *report, uint8_t *out, size_t cap,
                     size_t *out_len)
    size_t tdqe_produce_batch(tdqe_ctx *q, tdxm_module *m, const uint8_t *reports, size_t n, uint8_t *out,
                              size_t stride, uint32_t *lens, int32_t *codes)
    int tdqe_sign(tdqe_ctx *q, const uint8_t *msg, size_t len, uint8_t *rs)
    int tdqe_sign_floor(tdqe_ctx *q, const uint8_t *msg, size_t len, size_t n)
