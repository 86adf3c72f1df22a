/*
 * vmm_tdqe.c - the TDQE model's per-quote path (see vmm_tdqe.h; quote.md §5.1-§5.4).
 */
#include "vmm_tdqe.h"

#include <pthread.h>
#include <stdatomic.h>
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
    uint64_t id; /* never reused, so a thread's copy of a freed context's key is never taken for a new one's */
    EVP_PKEY *key;
    EC_KEY *ec; /* the same key, for the ECDSA_* calls (deprecated in OpenSSL 3, kept; see tdx_crypto.h) */
    uint8_t header[Q_HEADER_LEN];
    uint8_t *tail;
    size_t tail_len;
};

/* Per-thread signing state. Two callers never share a signing context: each thread signs with its own
 * copy of the attestation key and its own BN_CTX, so nothing of ours is written by two cores per quote.
 * The thread also remembers the last TEE_TCB_INFO and TDINFO whose SHA-384 it computed: a TD's
 * TDINFO changes only with an RTMR extend, so the TDQE's two hash re-checks (quote.md §5.2) cost a
 * 751-byte compare instead of seven SHA-512 blocks, with the same answer. */
typedef struct {
    uint64_t owner; /* tdqe_ctx.id that ec was copied from, 0 for none */
    EC_KEY *ec;
    BN_CTX *bn;
    int have_tcb, have_info;
    uint8_t tcb[TDX_TEE_TCB_INFO_LEN], tcb_digest[TDX_SHA384_LEN];
    uint8_t info[TDX_TDINFO_LEN], info_digest[TDX_SHA384_LEN];
} tdqe_thread;

static _Atomic uint64_t next_ctx_id;
static pthread_key_t thread_key;
static pthread_once_t thread_key_once = PTHREAD_ONCE_INIT;
static int thread_key_ok;

static void thread_free(void *p)
{
    tdqe_thread *t = p;
    if (t == NULL)
        return;
    EC_KEY_free(t->ec);
    BN_CTX_free(t->bn);
    free(t);
}

static void thread_key_init(void)
{
    thread_key_ok = pthread_key_create(&thread_key, thread_free) == 0;
}

/* This thread's state for q (its key copied on first use), or NULL when memory runs out. */
static tdqe_thread *thread_state(tdqe_ctx *q)
{
    tdqe_thread *t;

    pthread_once(&thread_key_once, thread_key_init);
    if (!thread_key_ok)
        return NULL;
    t = pthread_getspecific(thread_key);
    if (t == NULL) {
        t = calloc(1, sizeof *t);
        if (t == NULL)
            return NULL;
        t->bn = BN_CTX_new();
        if (t->bn == NULL || pthread_setspecific(thread_key, t) != 0) {
            thread_free(t);
            return NULL;
        }
    }
    if (t->owner != q->id) {
        EC_KEY *ec = EC_KEY_dup(q->ec);
        if (ec == NULL)
            return NULL;
        EC_KEY_free(t->ec);
        t->ec = ec;
        t->owner = q->id;
    }
    return t;
}

tdqe_ctx *tdqe_new(const uint8_t *der, size_t der_len, const uint8_t header48[48], const uint8_t *tail,
                   size_t tail_len)
{
    const unsigned char *p = der;
    tdqe_ctx *q = calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    q->id = atomic_fetch_add(&next_ctx_id, 1) + 1;
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

/* SHA-256 through the low-level API: the one-shot SHA256() of OpenSSL 3 fetches the algorithm from the
 * method store on every call (EVP_Q_digest: a name lookup under a shared lock). */
static void sha256(const uint8_t *msg, size_t len, uint8_t digest[SHA256_DIGEST_LENGTH])
{
    SHA256_CTX c;

    SHA256_Init(&c);
    SHA256_Update(&c, msg, len);
    SHA256_Final(digest, &c);
}

/* ECDSA-P256 of a SHA-256 digest with this thread's key copy, r||s big-endian (quote.md §5.3).
 * ECDSA_sign_setup draws k from OpenSSL's per-thread private DRBG and computes k^-1 and r = (kG).x;
 * ECDSA_do_sign_ex then computes s: one whole signature, every call. ECDSA_do_sign would derive k
 * from SHA-512(counter, key, digest, random) with an EVP_MD fetched from the global method store on
 * every call (a shared rwlock and reference count per signature); EVP_DigestSign also builds a
 * context per call. This route was the fastest of the three here (benchmarks/RESULTS.md). */
static int sign_digest(tdqe_thread *t, const uint8_t digest[SHA256_DIGEST_LENGTH], uint8_t rs[64])
{
    BIGNUM *kinv = NULL, *r_in = NULL;
    const BIGNUM *r, *s;
    ECDSA_SIG *sig;
    int rc = -1;

    if (!ECDSA_sign_setup(t->ec, t->bn, &kinv, &r_in))
        return -1;
    sig = ECDSA_do_sign_ex(digest, SHA256_DIGEST_LENGTH, kinv, r_in, t->ec);
    BN_clear_free(kinv);
    BN_clear_free(r_in);
    if (sig == NULL)
        return -1;
    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_bn2binpad(r, rs, 32) == 32 && BN_bn2binpad(s, rs + 32, 32) == 32)
        rc = 0;
    ECDSA_SIG_free(sig);
    return rc;
}

int tdqe_sign(tdqe_ctx *q, const uint8_t *msg, size_t len, uint8_t rs[64])
{
    uint8_t digest[SHA256_DIGEST_LENGTH];
    tdqe_thread *t = thread_state(q);

    if (t == NULL)
        return -1;
    sha256(msg, len, digest);
    return sign_digest(t, digest, rs);
}

int tdqe_sign_floor(tdqe_ctx *q, const uint8_t *msg, size_t len, size_t n)
{
    uint8_t rs[64];
    for (size_t i = 0; i < n; i++)
        if (tdqe_sign(q, msg, len, rs) != 0)
            return -1;
    return 0;
}

/* SHA-384(in) == expected, through the thread's memo of the last input of this kind. */
static int hash_matches(int *have, uint8_t *memo_in, uint8_t *memo_digest, const uint8_t *in, size_t len,
                        const uint8_t *expected)
{
    if (!*have || memcmp(memo_in, in, len) != 0) {
        tdxc_sha384(in, len, memo_digest);
        memcpy(memo_in, in, len);
        *have = 1;
    }
    return memcmp(memo_digest, expected, TDX_SHA384_LEN) == 0;
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

/* The TDQE's version choice (determine_quote_version, quote.md §5.2). */
typedef struct {
    int version, body_type;
    const uint8_t *copy_svn, *copy_svn2, *servtd;
} quote_choice;

static int choose_version(const uint8_t *r, quote_choice *c)
{
    const uint8_t *valid = r + R_VALID;
    const uint8_t *svn = r + TDR_OFF_TEE_TCB_SVN, *svn2 = r + TDR_OFF_TEE_TCB_SVN2;
    int valid_ok = valid[0] == 0xFF && valid[1] == 0x01 && (valid[2] == 0 || valid[2] == 3)
                   && !any_nonzero(valid + 3, 5);

    c->copy_svn = svn, c->copy_svn2 = NULL, c->servtd = NULL;
    if (r[R_VERSION] == 0) {
        if (any_nonzero(r + R_TDINFO_RESERVED_V0, R_TDINFO_RESERVED_V0_LEN) || !valid_ok)
            return TDQE_C_REPORT_FORMAT_NOT_SUPPORTED;
        if (valid[2] == 3 && memcmp(svn, svn2, 16) != 0) {
            c->version = 5, c->body_type = 3, c->copy_svn2 = svn2;
        } else {
            c->version = 4, c->body_type = 2;
        }
    } else if (r[R_VERSION] == TDX_REPORTTYPE_VERSION_SERVTD_BOUND) {
        if (any_nonzero(r + R_TDINFO_RESERVED_V1, R_TDINFO_RESERVED_V1_LEN) || !valid_ok)
            return TDQE_C_REPORT_FORMAT_NOT_SUPPORTED;
        c->version = 5, c->body_type = 3, c->servtd = r + TDR_OFF_SERVTD_HASH;
        if (valid[2] == 3)
            c->copy_svn2 = svn2;
        else
            c->copy_svn = svn2; /* quote.md §5.2: the TDQE copies SVN2 into TEE_TCB_SVN here */
    } else {
        return TDQE_C_REPORT_FORMAT_NOT_SUPPORTED;
    }
    return TDQE_C_OK;
}

static size_t quote_len(const tdqe_ctx *q, const quote_choice *c)
{
    return Q_HEADER_LEN + (c->version == 5 ? 6 : 0) + (c->body_type == 3 ? Q_TD15_BODY : Q_TD10_BODY) + 4
           + Q_SIG_LEN + q->tail_len;
}

size_t tdqe_quote_len(const tdqe_ctx *q, const uint8_t *report)
{
    quote_choice c;
    return choose_version(report, &c) == TDQE_C_OK ? quote_len(q, &c) : 0;
}

int tdqe_produce(tdqe_ctx *q, tdxm_module *m, const uint8_t *r, uint8_t *out, size_t cap,
                 size_t *out_len)
{
    const uint8_t *copy_svn, *copy_svn2, *servtd;
    uint8_t digest[SHA256_DIGEST_LENGTH];
    quote_choice c;
    tdqe_thread *t;
    int version, body_type, code;
    size_t body_len, body_off, n;
    uint8_t *b;

    /* 1. determine_quote_version (quote.md §5.2) */
    code = choose_version(r, &c);
    if (code != TDQE_C_OK)
        return code;
    version = c.version, body_type = c.body_type;
    copy_svn = c.copy_svn, copy_svn2 = c.copy_svn2, servtd = c.servtd;
    /* 2. the MAC, 3. both hashes (quote.md §5.2) */
    if (!mac_ok(m, r))
        return TDQE_C_INVALID_REPORT;
    t = thread_state(q);
    if (t == NULL)
        return TDQE_C_CRYPTO;
    if (!hash_matches(&t->have_tcb, t->tcb, t->tcb_digest, r + TDR_OFF_TEE_TCB_INFO, TDX_TEE_TCB_INFO_LEN,
                      r + TDR_OFF_TEE_TCB_INFO_HASH)
        || !hash_matches(&t->have_info, t->info, t->info_digest, r + TDR_OFF_TDINFO, TDX_TDINFO_LEN,
                         r + TDR_OFF_TEE_INFO_HASH))
        return TDQE_C_INVALID_HASH;

    /* 4. header, body (quote.md §5.1, §5.2), signed region (§5.3), signature data (§5.4) */
    body_len = body_type == 3 ? Q_TD15_BODY : Q_TD10_BODY;
    body_off = Q_HEADER_LEN + (version == 5 ? 6 : 0);
    n = quote_len(q, &c);
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
    sha256(out, body_off + body_len, digest);
    if (sign_digest(t, digest, b + body_len + 4) != 0)
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
