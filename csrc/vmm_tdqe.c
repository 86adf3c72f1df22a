/*
 * vmm_tdqe.c - the TDQE model's per-quote path (see vmm_tdqe.h; quote.md §5.1-§5.4).
 */
#include "vmm_tdqe.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "tdx_crypto.h"

/* Quote layout (quote.md §5.1-§5.4; the Python constants are tdxmodel/quote_abi.py). */
#define Q_HEADER_LEN 48
#define Q_TD10_BODY 584
#define Q_TD15_BODY 648
#define Q_SIG_LEN 64
/* TDREPORT offsets (ref §4.4) and the TDQE's version rule (quote.md §5.2). */
#define R_VERSION 2
#define R_VALID 256
#define R_TDINFO_RESERVED_V0 (512 + 400)
#define R_TDINFO_RESERVED_V0_LEN 112
#define R_TDINFO_RESERVED_V1 (512 + 448)
#define R_TDINFO_RESERVED_V1_LEN 64

struct tdqe_ctx {
    EVP_PKEY *key;
    EC_KEY *ec; /* the same key, for ECDSA_do_sign (deprecated in OpenSSL 3, kept; see tdx_crypto.h) */
    uint8_t header[Q_HEADER_LEN];
    uint8_t *tail;
    size_t tail_len;
};

tdqe_ctx *tdqe_new(const uint8_t *der, size_t der_len, const uint8_t header48[48], const uint8_t *tail,
                   size_t tail_len)
{
    const unsigned char *p = der;
    tdqe_ctx *q = calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    q->key = d2i_AutoPrivateKey(NULL, &p, (long)der_len);
    q->tail = malloc(tail_len ? tail_len : 1);
    if (q->key == NULL || q->tail == NULL || EVP_PKEY_get_base_id(q->key) != EVP_PKEY_EC
        || EVP_PKEY_get_bits(q->key) != 256) {
        tdqe_free(q);
        return NULL;
    }
    q->ec = EVP_PKEY_get1_EC_KEY(q->key);
    if (q->ec == NULL) {
        tdqe_free(q);
        return NULL;
    }
    memcpy(q->header, header48, Q_HEADER_LEN);
    memcpy(q->tail, tail, tail_len);
    q->tail_len = tail_len;
    return q;
}

void tdqe_free(tdqe_ctx *q)
{
    if (q == NULL)
        return;
    EC_KEY_free(q->ec);
    EVP_PKEY_free(q->key);
    free(q->tail);
    free(q);
}

size_t tdqe_max_quote_len(const tdqe_ctx *q)
{
    return Q_HEADER_LEN + 6 + Q_TD15_BODY + 4 + Q_SIG_LEN + q->tail_len;
}

int tdqe_sign(tdqe_ctx *q, const uint8_t *msg, size_t len, uint8_t rs[64])
{
    /* SHA-256, then ECDSA on the digest with the EC_KEY fetched once: the EVP_DigestSign route
     * fetches the algorithm and builds a context per call, which cost ~40% of the signature here. */
    uint8_t digest[SHA256_DIGEST_LENGTH];
    const BIGNUM *r, *s;
    ECDSA_SIG *sig;
    int rc = -1;

    SHA256(msg, len, digest);
    sig = ECDSA_do_sign(digest, sizeof digest, q->ec);
    if (sig == NULL)
        return -1;
    ECDSA_SIG_get0(sig, &r, &s);
    /* r||s, 32 + 32 bytes big-endian (quote.md §5.3) */
    if (BN_bn2binpad(r, rs, 32) == 32 && BN_bn2binpad(s, rs + 32, 32) == 32)
        rc = 0;
    ECDSA_SIG_free(sig);
    return rc;
}

int tdqe_sign_floor(tdqe_ctx *q, const uint8_t *msg, size_t len, size_t n)
{
    uint8_t rs[64];
    for (size_t i = 0; i < n; i++)
        if (tdqe_sign(q, msg, len, rs) != 0)
            return -1;
    return 0;
}

static int any_nonzero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 1;
    return 0;
}

/* The MAC as TDG.MR.VERIFYREPORT checks it (ref §4.7); TDX 1.0 lacks the leaf, so the same HMAC with
 * the platform key (the Python model does the same, tdxmodel/report.py). */
static int mac_ok(tdxm_module *m, const uint8_t *report)
{
    if (tdxm_version_minor(m) == 0) {
        uint8_t key[TDX_MAC_KEY_LEN], mac[TDX_MAC_LEN];
        tdxc_hmac_key k;
        tdxm_read_mac_key(m, key);
        tdxc_hmac_key_init(&k, key, sizeof key);
        tdxc_hmac(&k, report, TDX_MAC_COVERED_LEN, mac);
        return !tdxc_mac_differs(mac, report + TDR_OFF_MAC);
    }
    return tdxm_verify_direct(m, report) == TDX_SUCCESS;
}

int tdqe_produce(tdqe_ctx *q, tdxm_module *m, const uint8_t *r, uint8_t *out, size_t cap,
                 size_t *out_len)
{
    const uint8_t *valid = r + R_VALID;
    const uint8_t *svn = r + TDR_OFF_TEE_TCB_SVN, *svn2 = r + TDR_OFF_TEE_TCB_SVN2;
    const uint8_t *copy_svn = svn, *copy_svn2 = NULL, *servtd = NULL;
    uint8_t digest[TDX_SHA384_LEN];
    int version, body_type;
    size_t body_len, body_off, n;
    uint8_t *b;

    /* 1. determine_quote_version (quote.md §5.2) */
    int valid_ok = valid[0] == 0xFF && valid[1] == 0x01 && (valid[2] == 0 || valid[2] == 3)
                   && !any_nonzero(valid + 3, 5);
    if (r[R_VERSION] == 0) {
        if (any_nonzero(r + R_TDINFO_RESERVED_V0, R_TDINFO_RESERVED_V0_LEN) || !valid_ok)
            return TDQE_C_REPORT_FORMAT_NOT_SUPPORTED;
        if (valid[2] == 3 && memcmp(svn, svn2, 16) != 0) {
            version = 5, body_type = 3, copy_svn2 = svn2;
        } else {
            version = 4, body_type = 2;
        }
    } else if (r[R_VERSION] == TDX_REPORTTYPE_VERSION_SERVTD_BOUND) {
        if (any_nonzero(r + R_TDINFO_RESERVED_V1, R_TDINFO_RESERVED_V1_LEN) || !valid_ok)
            return TDQE_C_REPORT_FORMAT_NOT_SUPPORTED;
        version = 5, body_type = 3, servtd = r + TDR_OFF_SERVTD_HASH;
        if (valid[2] == 3)
            copy_svn2 = svn2;
        else
            copy_svn = svn2; /* quote.md §5.2: the TDQE copies SVN2 into TEE_TCB_SVN here */
    } else {
        return TDQE_C_REPORT_FORMAT_NOT_SUPPORTED;
    }
    /* 2. the MAC, 3. both hashes (quote.md §5.2) */
    if (!mac_ok(m, r))
        return TDQE_C_INVALID_REPORT;
    tdxc_sha384(r + TDR_OFF_TEE_TCB_INFO, TDX_TEE_TCB_INFO_LEN, digest);
    if (memcmp(digest, r + TDR_OFF_TEE_TCB_INFO_HASH, TDX_SHA384_LEN) != 0)
        return TDQE_C_INVALID_HASH;
    tdxc_sha384(r + TDR_OFF_TDINFO, TDX_TDINFO_LEN, digest);
    if (memcmp(digest, r + TDR_OFF_TEE_INFO_HASH, TDX_SHA384_LEN) != 0)
        return TDQE_C_INVALID_HASH;

    /* 4. header, body (quote.md §5.1, §5.2), signed region (§5.3), signature data (§5.4) */
    body_len = body_type == 3 ? Q_TD15_BODY : Q_TD10_BODY;
    body_off = Q_HEADER_LEN + (version == 5 ? 6 : 0);
    n = body_off + body_len + 4 + Q_SIG_LEN + q->tail_len;
    if (cap < n)
        return TDQE_C_NOSPACE;
    memcpy(out, q->header, Q_HEADER_LEN);
    out[0] = (uint8_t)version, out[1] = 0;
    if (version == 5) {
        uint32_t size = (uint32_t)body_len;
        out[48] = (uint8_t)body_type, out[49] = 0;
        memcpy(out + 50, &size, 4); /* little-endian on x86-64 */
    }
    b = out + body_off;
    memset(b, 0, body_len); /* MRSIGNERSEAM and SEAMATTRIBUTES stay zero */
    memcpy(b + 0, copy_svn, 16);
    memcpy(b + 16, r + TDR_OFF_MRSEAM, 48);
    memcpy(b + 120, r + TDR_OFF_ATTRIBUTES, 8);
    memcpy(b + 128, r + TDR_OFF_XFAM, 8);
    memcpy(b + 136, r + TDR_OFF_MRTD, 48);
    memcpy(b + 184, r + TDR_OFF_MRCONFIGID, 48);
    memcpy(b + 232, r + TDR_OFF_MROWNER, 48);
    memcpy(b + 280, r + TDR_OFF_MROWNERCONFIG, 48);
    memcpy(b + 328, r + TDR_OFF_RTMR0, 192);
    memcpy(b + 520, r + TDR_OFF_REPORTDATA, 64);
    if (body_type == 3) {
        if (copy_svn2 != NULL)
            memcpy(b + 584, copy_svn2, 16);
        if (servtd != NULL)
            memcpy(b + 600, servtd, 48);
    }
    {
        uint32_t sig_len = (uint32_t)(Q_SIG_LEN + q->tail_len);
        memcpy(b + body_len, &sig_len, 4);
    }
    if (tdqe_sign(q, out, body_off + body_len, b + body_len + 4) != 0)
        return TDQE_C_CRYPTO;
    memcpy(b + body_len + 4 + Q_SIG_LEN, q->tail, q->tail_len);
    *out_len = n;
    return TDQE_C_OK;
}

size_t tdqe_produce_batch(tdqe_ctx *q, tdxm_module *m, const uint8_t *reports, size_t n, uint8_t *out,
                          size_t stride, uint32_t *lens, int32_t *codes)
{
    size_t made = 0, len;
    for (size_t i = 0; i < n; i++) {
        codes[i] = tdqe_produce(q, m, reports + i * TDX_REPORT_LEN, out + i * stride, stride, &len);
        lens[i] = codes[i] == TDQE_C_OK ? (uint32_t)len : 0;
        made += codes[i] == TDQE_C_OK;
    }
    return made;
}
