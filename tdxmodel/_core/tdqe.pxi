# The TDQE's per-quote path in C (csrc/vmm_tdqe.c): checks, body copy and the ECDSA signature without
# the GIL. tdxmodel/host/qe.py owns the model; this is its fast path on the core backend.

from libc.stdint cimport int32_t
from tdxmodel._core.vmm_tdqe cimport (tdqe_ctx, tdqe_new, tdqe_free, tdqe_max_quote_len, tdqe_produce,
                                       tdqe_produce_batch, tdqe_sign, tdqe_sign_floor, TDQE_C_OK)


cdef class TdqeCore:
    """TdqeCore(pkcs8_der: bytes, header48: bytes, tail: bytes)

    ``produce(module, report) -> (code, quote)``: code 0 and the quote, or the TDQE error code
    (1 format not supported, 2 invalid report (MAC), 3 invalid hash, 4 crypto) and None.
    ``produce_batch(module, reports (N, 1024) uint8) -> (codes (N,) int32, list of quotes or None)``.
    ``sign(msg) -> r||s``; ``sign_floor(msg, n)``: n signatures in a C loop."""

    cdef tdqe_ctx *q
    cdef size_t cap

    def __cinit__(self, bytes der, bytes header48, bytes tail):
        if len(header48) != 48:
            raise ValueError("header must be 48 bytes")
        self.q = tdqe_new(<const uint8_t *><const char *>der, len(der), <const uint8_t *><const char *>header48,
                          <const uint8_t *><const char *>tail, len(tail))
        if self.q == NULL:
            raise ValueError("not a P-256 private key (PKCS#8 DER)")
        self.cap = tdqe_max_quote_len(self.q)

    def __dealloc__(self):
        tdqe_free(self.q)

    def produce(self, Module module, report):
        cdef tdxm_module *m = module._live()
        cdef bytes rep = _as_bytes(report, "report")
        cdef const uint8_t *r
        cdef bytearray out = bytearray(self.cap)
        cdef uint8_t *o = <uint8_t *>(<char *>out)
        cdef size_t n = 0
        cdef int code
        if len(rep) != _abi.TDX_REPORT_LEN:
            return 1, None
        r = <const uint8_t *><const char *>rep
        with nogil:
            code = tdqe_produce(self.q, m, r, o, self.cap, &n)
        if code != TDQE_C_OK:
            return code, None
        return 0, bytes(out[:n])

    def produce_batch(self, Module module, reports):
        import numpy as np
        cdef tdxm_module *m = module._live()
        arr = np.ascontiguousarray(reports, dtype=np.uint8)
        if arr.ndim != 2 or arr.shape[1] != _abi.TDX_REPORT_LEN:
            raise ValueError(f"expected an (N, {_abi.TDX_REPORT_LEN}) uint8 array, got shape {arr.shape}")
        cdef size_t rows = arr.shape[0]
        out = np.empty((rows, self.cap), dtype=np.uint8)
        lens = np.zeros(rows, dtype=np.uint32)
        codes = np.zeros(rows, dtype=np.int32)
        cdef const uint8_t[:, ::1] rv = arr
        cdef uint8_t[:, ::1] ov = out
        cdef uint32_t[::1] lv = lens
        cdef int32_t[::1] cv = codes
        if rows:
            with nogil:
                tdqe_produce_batch(self.q, m, &rv[0, 0], rows, &ov[0, 0], self.cap, &lv[0], &cv[0])
        quotes = [out[i, :lens[i]].tobytes() if codes[i] == 0 else None for i in range(rows)]
        return codes, quotes

    def sign(self, msg):
        cdef bytes data = _as_bytes(msg, "msg")
        cdef bytearray rs = bytearray(64)
        cdef int rc
        cdef const uint8_t *p = <const uint8_t *><const char *>data
        cdef size_t n = len(data)
        cdef uint8_t *o = <uint8_t *>(<char *>rs)
        with nogil:
            rc = tdqe_sign(self.q, p, n, o)
        if rc != 0:
            raise RuntimeError("OpenSSL ECDSA signing failed")
        return bytes(rs)

    def sign_floor(self, msg, size_t n):
        cdef bytes data = _as_bytes(msg, "msg")
        cdef const uint8_t *p = <const uint8_t *><const char *>data
        cdef size_t ln = len(data)
        cdef int rc
        with nogil:
            rc = tdqe_sign_floor(self.q, p, ln, n)
        if rc != 0:
            raise RuntimeError("OpenSSL ECDSA signing failed")
