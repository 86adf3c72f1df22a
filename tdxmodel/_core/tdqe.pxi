# The TDQE's per-quote path in C (csrc/vmm_tdqe.c): checks, body copy and the ECDSA signature without
# the GIL. tdxmodel/host/qe.py owns the model; this is its fast path on the core backend.

from libc.stdint cimport int32_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from tdxmodel._core.gk_sched cimport gk_block_begin, gk_block_end
from tdxmodel._core.tdx_abi cimport TDX_REPORT_LEN
from tdxmodel._core.vmm_tdqe cimport (tdqe_ctx, tdqe_new, tdqe_free, tdqe_max_quote_len, tdqe_quote_len,
                                       tdqe_produce, tdqe_produce_batch, tdqe_sign, tdqe_sign_floor, TDQE_C_OK,
                                       TDQE_C_REPORT_FORMAT_NOT_SUPPORTED)


class TdqeRefused(Exception):
    """The C path refused a TDREPORT; ``.code`` is the TDQE error code (see ``TdqeCore``)."""

    def __init__(self, code):
        super().__init__(f"the TDQE refused the report (code {code})")
        self.code = code


cdef struct _tdqe_native:
    # What the host's C producer needs, reachable without the GIL: the TDQE context and the address
    # of the Module's pointer (NULL once the Module is closed).
    tdqe_ctx *q
    tdxm_module **module_ptr


cdef class TdqeCore:
    """TdqeCore(pkcs8_der: bytes, header48: bytes, tail: bytes, module: Module)

    ``module`` checks the TDREPORT MAC (TDG.MR.VERIFYREPORT, or its key on TDX 1.0).
    ``produce(report) -> quote bytes``, or ``TdqeRefused`` with the TDQE error code (1 format not
    supported, 2 invalid report (MAC), 3 invalid hash, 4 crypto); TypeError if report is not bytes-like.
    ``produce_batch(reports (N, 1024) uint8) -> (codes (N,) int32, list of quotes or None)``.
    ``sign(msg) -> r||s``; ``sign_floor(msg, n)``: n signatures in a C loop, signed as quotes are.
    As the host's quote producer (``Host``) it runs in C, the GIL released for the whole quote."""

    cdef tdqe_ctx *q
    cdef size_t cap
    cdef readonly Module module
    cdef _tdqe_native native
    cdef object _fallback

    def __cinit__(self, bytes der, bytes header48, bytes tail, Module module not None):
        if len(header48) != 48:
            raise ValueError("header must be 48 bytes")
        self.q = tdqe_new(<const uint8_t *><const char *>der, len(der), <const uint8_t *><const char *>header48,
                          <const uint8_t *><const char *>tail, len(tail))
        if self.q == NULL:
            raise ValueError("not a P-256 private key (PKCS#8 DER)")
        self.cap = tdqe_max_quote_len(self.q)
        self.module = module
        self.native.q = self.q
        self.native.module_ptr = &module.ptr

    def __dealloc__(self):
        tdqe_free(self.q)

    cdef object _quote(self, bytes rep, int *code):
        # The quote for rep, or None with *code the TDQE error code.
        cdef tdxm_module *m = self.module._live()
        cdef const uint8_t *r = <const uint8_t *><const char *>rep
        cdef size_t n = 0, want
        if len(rep) != TDX_REPORT_LEN:  # the C constant: no module attribute read per quote
            code[0] = TDQE_C_REPORT_FORMAT_NOT_SUPPORTED
            return None
        want = tdqe_quote_len(self.q, r)
        if want == 0:
            code[0] = TDQE_C_REPORT_FORMAT_NOT_SUPPORTED
            return None
        # The quote is written straight into the bytes object returned: no copy, no other object.
        cdef bytes out = PyBytes_FromStringAndSize(NULL, want)
        cdef uint8_t *o = <uint8_t *>PyBytes_AS_STRING(out)
        with nogil:
            code[0] = tdqe_produce(self.q, m, r, o, want, &n)
        return out if code[0] == TDQE_C_OK else None

    def produce(self, report):
        cdef int code = TDQE_C_OK
        out = self._quote(report if type(report) is bytes else _as_bytes(report, "report"), &code)
        if out is None:
            raise TdqeRefused(code)
        return out

    def bind_fallback(self, fallback):
        """bind_fallback(fallback(report, code) -> bytes): what ``produce_or_fallback`` answers with
        when the C path refuses a report (its TDQE error code) or cannot read it (code 0)."""
        self._fallback = fallback

    def produce_or_fallback(self, report):
        """produce_or_fallback(report) -> quote bytes: ``produce``, but a refusal or a report that is
        not bytes-like goes to the bound fallback instead of raising (``QuotingEnclave.produce``
        without a Python frame per quote)."""
        cdef int code = TDQE_C_OK
        cdef bytes rep
        if type(report) is bytes:
            rep = report
        else:
            try:
                rep = _as_bytes(report, "report")
            except TypeError:
                return self._fallback(report, 0)
        out = self._quote(rep, &code)
        return out if out is not None else self._fallback(report, code)

    def produce_batch(self, reports):
        import numpy as np
        cdef tdxm_module *m = self.module._live()
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


cdef int _tdqe_host_produce(void *ctx, const uint8_t *inp, size_t in_len, uint8_t *out, size_t cap,
                            size_t *out_len) noexcept nogil:
    """The host's quote service calling the TDQE in C (a vmm_produce_fn): no Python object per quote.
    The guest task that waits for the quote may hold the GIL (emulated syscalls keep it): the wait
    releases it (gk_sched.h), so other threads run while this one signs."""
    cdef _tdqe_native *native = <_tdqe_native *>ctx
    cdef tdxm_module *m = native.module_ptr[0]
    cdef void *token
    cdef int code
    if m == NULL or in_len != TDX_REPORT_LEN:
        return 1
    token = gk_block_begin()
    code = tdqe_produce(native.q, m, inp, out, cap, out_len)
    gk_block_end(token)
    return code != TDQE_C_OK


cdef object _native_tdqe(object producer):
    """The TdqeCore a Host may call in C for ``producer`` (its ``native_producer()``), or None."""
    get = getattr(producer, "native_producer", None)
    core = get() if get is not None else None
    return core if isinstance(core, TdqeCore) else None
