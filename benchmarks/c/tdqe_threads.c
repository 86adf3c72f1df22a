/*
 * tdqe_threads.c - the TDQE's C path (csrc/vmm_tdqe.c) from 1 and 2 pthreads, no Python.
 *
 * Questions: how much does a quote cost beyond its one signature (the sign floor, tdqe_sign in a loop),
 * and do two signing threads cost each other CPU (shared OpenSSL state, shared lines)? Prints, per
 * mode and thread count, the CPU time per operation (thread CPU clocks), the wall rate and the
 * parallelism the machine granted (CPU / wall); on a shared machine the wall figure alone says little.
 * Modes: sign (tdqe_sign: SHA-256 of the 632-byte v4 signed region, then ECDSA-P256, as the bench's
 * floor), quote (tdqe_produce on a TDREPORT of the module), ecdsa_do_sign (OpenSSL's ECDSA_do_sign on
 * one shared EC_KEY, the route the floor used before: for comparison).
 *
 * Build and run from the repository root (see benchmarks/RESULTS.md):
 *   cc -O2 -std=gnu11 -pthread -Wno-deprecated-declarations -Icsrc benchmarks/c/tdqe_threads.c \
 *      csrc/vmm_tdqe.c csrc/tdx_module.c csrc/tdx_crypto.c -lcrypto -o /tmp/tdqe_threads && /tmp/tdqe_threads
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "tdx_module.h"
#include "vmm_tdqe.h"

enum { MODE_SIGN, MODE_QUOTE, MODE_DO_SIGN, NMODES };
static const char *const NAMES[NMODES] = {"sign", "quote", "ecdsa_do_sign"};
static tdxm_module *M;
static tdqe_ctx *Q;
static EC_KEY *EC;
static uint8_t REPORT[TDX_REPORT_LEN];
static size_t ROUNDS = 3000;
static int MODE;
static double cpu_used[2];

static double now(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *worker(void *arg)
{
    long id = (long)arg;
    size_t cap = tdqe_max_quote_len(Q), n;
    uint8_t *out = calloc(1, cap), rs[64], digest[SHA256_DIGEST_LENGTH];
    double c0 = now(CLOCK_THREAD_CPUTIME_ID);

    for (size_t i = 0; i < ROUNDS; i++) {
        if (MODE == MODE_SIGN) {
            if (tdqe_sign(Q, out, 632, rs) != 0)
                abort();
        } else if (MODE == MODE_QUOTE) {
            if (tdqe_produce(Q, M, REPORT, out, cap, &n) != TDQE_C_OK)
                abort();
        } else {
            SHA256(out, 632, digest);
            ECDSA_SIG *sig = ECDSA_do_sign(digest, sizeof digest, EC);
            if (sig == NULL)
                abort();
            ECDSA_SIG_free(sig);
        }
    }
    cpu_used[id] = now(CLOCK_THREAD_CPUTIME_ID) - c0;
    free(out);
    return NULL;
}

int main(int argc, char **argv)
{
    tdxm_config cfg;
    uint8_t rd[TDX_REPORTDATA_LEN] = {0}, header[48] = {0}, tail[4100] = {0};
    unsigned char *der = NULL;
    EVP_PKEY *key;
    int der_len;

    if (argc > 1)
        ROUNDS = strtoul(argv[1], NULL, 10);
    memset(&cfg, 0, sizeof cfg);
    cfg.version_minor = 5;
    cfg.memory_pages = 64;
    cfg.tee_tcb_info[0] = 0xFF, cfg.tee_tcb_info[1] = 0x01; /* VALID = 0x1FF (quote.md §5.2) */
    M = tdxm_create(&cfg);
    key = EVP_EC_gen("P-256");
    der_len = i2d_PrivateKey(key, &der);
    Q = tdqe_new(der, (size_t)der_len, header, tail, sizeof tail);
    EC = EVP_PKEY_get1_EC_KEY(key);
    if (M == NULL || Q == NULL || EC == NULL || tdxm_report_direct(M, REPORT, rd, 0) != TDX_SUCCESS) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    for (MODE = 0; MODE < NMODES; MODE++) {
        for (int threads = 1; threads <= 2; threads++) {
            pthread_t t[2];
            double w0 = now(CLOCK_MONOTONIC), wall, cpu;
            for (long i = 0; i < threads; i++)
                pthread_create(&t[i], NULL, worker, (void *)i);
            for (int i = 0; i < threads; i++)
                pthread_join(t[i], NULL);
            wall = now(CLOCK_MONOTONIC) - w0;
            cpu = cpu_used[0] + (threads == 2 ? cpu_used[1] : 0);
            printf("%-13s %d thread(s): %6.2f us CPU each, %7.0f /s wall, parallelism %.2f\n", NAMES[MODE],
                   threads, cpu / ((double)threads * ROUNDS) * 1e6, threads * ROUNDS / wall, cpu / wall);
        }
    }
    return 0;
}
