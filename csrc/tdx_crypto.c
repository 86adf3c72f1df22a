/*
 * tdx_crypto.c - HMAC-SHA-256 key schedule and SHA-384 helpers over OpenSSL (see tdx_crypto.h).
 */
#include "tdx_crypto.h"

#include <string.h>
#include <openssl/crypto.h>

/* RFC 2104 pads: the key block XORed with these bytes starts the inner and outer hashes. */
#define HMAC_IPAD_BYTE 0x36
#define HMAC_OPAD_BYTE 0x5c

void tdxc_hmac_key_init(tdxc_hmac_key *k, const uint8_t *key, size_t key_len)
{
    uint8_t block[SHA256_CBLOCK];

    /* Keys longer than a block would be hashed first (RFC 2104); ours are 32 bytes, so never. */
    if (key_len > SHA256_CBLOCK)
        key_len = SHA256_CBLOCK;
    memset(block, 0, sizeof block);
    memcpy(block, key, key_len);
    for (size_t i = 0; i < sizeof block; i++)
        block[i] ^= HMAC_IPAD_BYTE;
    SHA256_Init(&k->inner);
    SHA256_Update(&k->inner, block, sizeof block);

    memset(block, 0, sizeof block);
    memcpy(block, key, key_len);
    for (size_t i = 0; i < sizeof block; i++)
        block[i] ^= HMAC_OPAD_BYTE;
    SHA256_Init(&k->outer);
    SHA256_Update(&k->outer, block, sizeof block);
    OPENSSL_cleanse(block, sizeof block);
}

void tdxc_hmac_finish(const tdxc_hmac_key *k, SHA256_CTX *inner, uint8_t mac[TDX_MAC_LEN])
{
    uint8_t inner_digest[SHA256_DIGEST_LENGTH];
    SHA256_CTX outer = k->outer; /* midstate copied by value: the reason for the low-level API */

    SHA256_Final(inner_digest, inner);
    SHA256_Update(&outer, inner_digest, sizeof inner_digest);
    SHA256_Final(mac, &outer);
}

void tdxc_hmac(const tdxc_hmac_key *k, const uint8_t *msg, size_t len, uint8_t mac[TDX_MAC_LEN])
{
    SHA256_CTX inner = k->inner;

    SHA256_Update(&inner, msg, len);
    tdxc_hmac_finish(k, &inner, mac);
}

void tdxc_sha384(const uint8_t *msg, size_t len, uint8_t out[TDX_SHA384_LEN])
{
    SHA512_CTX c;

    SHA384_Init(&c);
    SHA384_Update(&c, msg, len);
    SHA384_Final(out, &c);
}

void tdxc_sha384_2(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                   uint8_t out[TDX_SHA384_LEN])
{
    SHA512_CTX c;

    SHA384_Init(&c);
    SHA384_Update(&c, a, alen);
    SHA384_Update(&c, b, blen);
    SHA384_Final(out, &c);
}

int tdxc_mac_differs(const uint8_t a[TDX_MAC_LEN], const uint8_t b[TDX_MAC_LEN])
{
    return CRYPTO_memcmp(a, b, TDX_MAC_LEN) != 0;
}
