/*
 * vmm_tdqe.h - the quoting enclave (TDQE) model's per-quote path in C, over OpenSSL libcrypto.
 *
 * Host side (layer 1h). tdxmodel/host/qe.py builds everything that does not change per quote (the QE
 * report, its PCK signature, the certification data: the "tail") and hands it here once; each quote
 * is then the TDQE's checks (quote.md §5.2: version choice, the MAC as TDG.MR.VERIFYREPORT checks it,
 * both hashes), the header and body copy (§5.1, §5.2) and one ECDSA-P256/SHA-256 signature (§5.3),
 * all without the GIL. Each thread signs with its own copy of the key (no lock or line shared between
 * two callers). On an error the Python model re-runs its own checks for the message; the codes
 * below only say which TDQE error it is.
 */
#ifndef VMM_TDQE_H
#define VMM_TDQE_H

#include <stddef.h>
#include <stdint.h>

#include "tdx_module.h"

enum {
    TDQE_C_OK = 0,
    TDQE_C_REPORT_FORMAT_NOT_SUPPORTED = 1, /* quote.md §5.2 */
    TDQE_C_INVALID_REPORT = 2,              /* the MAC does not verify on this platform */
    TDQE_C_INVALID_HASH = 3,                /* TEE_TCB_INFO_HASH or TEE_INFO_HASH */
    TDQE_C_CRYPTO = 4,                      /* OpenSSL failed */
    TDQE_C_NOSPACE = 5,                     /* the output buffer is too small */
};

typedef struct tdqe_ctx tdqe_ctx;

/* tdqe_new(pkcs8_der, der_len, header48, tail, tail_len): NULL if the key is not a P-256 private key
 * or on allocation failure. header48 is the v4/v5 header with bytes 0..1 (the version) set per quote;
 * tail is everything after the quote signature (attestation key, certification data). */
tdqe_ctx *tdqe_new(const uint8_t *pkcs8_der, size_t der_len, const uint8_t header48[48],
                   const uint8_t *tail, size_t tail_len);
void tdqe_free(tdqe_ctx *q);
/* The largest quote tdqe_produce writes (a v5 type-3 body). */
size_t tdqe_max_quote_len(const tdqe_ctx *q);

/* The length tdqe_produce gives report's quote (v4 or v5 by quote.md §5.2), 0 when the TDQE refuses its
 * format; the caller can allocate the output exactly. */
size_t tdqe_quote_len(const tdqe_ctx *q, const uint8_t *report);

/* One quote from a 1024-byte TDREPORT. Returns TDQE_C_OK and sets *out_len, or an error code. The MAC
 * is checked with m's platform key (TDG.MR.VERIFYREPORT on TDX 1.5; the same HMAC on 1.0). */
int tdqe_produce(tdqe_ctx *q, tdxm_module *m, const uint8_t *report, uint8_t *out,
                 size_t cap, size_t *out_len);

/* n quotes: reports[i*1024] -> out[i*stride], lens[i] (0 for a refused row), codes[i]. Returns the
 * number of quotes made. */
size_t tdqe_produce_batch(tdqe_ctx *q, tdxm_module *m, const uint8_t *reports, size_t n, uint8_t *out,
                          size_t stride, uint32_t *lens, int32_t *codes);

/* ECDSA-P256/SHA-256 of msg with the attestation key, r||s big-endian, exactly as tdqe_produce signs.
 * 0 on success. */
int tdqe_sign(tdqe_ctx *q, const uint8_t *msg, size_t len, uint8_t rs[64]);

/* The sign floor: n signatures of msg in a C loop (the key loaded once). 0 on success. */
int tdqe_sign_floor(tdqe_ctx *q, const uint8_t *msg, size_t len, size_t n);

#endif /* VMM_TDQE_H */
