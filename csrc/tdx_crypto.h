/*
 * tdx_crypto.h - the hashes and the MAC of the TDX module model, over OpenSSL libcrypto.
 *
 * Layer 1 (C core). ref §4.5: SHA-384 for TEE_TCB_INFO_HASH, TEE_INFO_HASH and RTMR extends; the MAC
 * is HMAC-SHA-256 over REPORTMACSTRUCT bytes 0..223 with a per-platform key (a tdxmodel design choice,
 * not ground truth: real hardware cannot verify it).
 *
 * Why the low-level SHA256_CTX / SHA512_CTX API: a hash midstate is a plain struct, so it can be copied
 * by value (no allocation, a few dozen bytes) - the report path copies the HMAC inner state after the
 * constant prefix of REPORTMACSTRUCT and hashes only the rest. OpenSSL 3 deprecates this API (hence
 * -Wno-deprecated-declarations in setup.py) but keeps it; EVP_MD_CTX_copy allocates on every copy.
 * No home-made SHA or HMAC: every compression function call is OpenSSL's.
 */
#ifndef TDX_CRYPTO_H
#define TDX_CRYPTO_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/sha.h>

#include "tdx_abi.h"

/* HMAC-SHA-256 key schedule: the inner and outer hash states after their one padded key block. */
typedef struct {
    SHA256_CTX inner; /* SHA-256 state after (key ^ ipad) */
    SHA256_CTX outer; /* SHA-256 state after (key ^ opad) */
} tdxc_hmac_key;

/* tdxc_hmac_key_init(k, key, key_len): key_len <= SHA256_CBLOCK (our keys are TDX_MAC_KEY_LEN). */
void tdxc_hmac_key_init(tdxc_hmac_key *k, const uint8_t *key, size_t key_len);

/* Finish an HMAC whose inner state (started from k->inner) has absorbed the whole message. */
void tdxc_hmac_finish(const tdxc_hmac_key *k, SHA256_CTX *inner, uint8_t mac[TDX_MAC_LEN]);

/* One-shot HMAC-SHA-256 of msg with a prepared key. */
void tdxc_hmac(const tdxc_hmac_key *k, const uint8_t *msg, size_t len, uint8_t mac[TDX_MAC_LEN]);

/* One-shot SHA-384. */
void tdxc_sha384(const uint8_t *msg, size_t len, uint8_t out[TDX_SHA384_LEN]);

/* SHA-384(a || b), the RTMR extend shape (ref §4.5). */
void tdxc_sha384_2(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                   uint8_t out[TDX_SHA384_LEN]);

/* Constant-time equality of two MACs (0 when equal), so VERIFYREPORT leaks no timing. */
int tdxc_mac_differs(const uint8_t a[TDX_MAC_LEN], const uint8_t b[TDX_MAC_LEN]);

#endif /* TDX_CRYPTO_H */
