/*
 * report_batch_threads.c - tdxm_report_batch (csrc/tdx_module.c) from 1 and 2 pthreads, no Python.
 *
 * Question: does the C module itself scale, or do its shared atomics (the RTMR try-lock word
 * and the debug counters) cost CPU when two cores report at once? Prints, per thread count, the CPU
 * time per report (thread CPU clocks), the wall throughput and the parallelism the machine granted
 * (CPU / wall); on a shared machine the wall figure alone says little.
 *
 * Build and run from the repository root (see benchmarks/RESULTS.md):
 *   cc -O2 -std=gnu11 -pthread -Wno-deprecated-declarations -Icsrc benchmarks/c/report_batch_threads.c \
 *      csrc/tdx_module.c csrc/tdx_crypto.c -lcrypto -o /tmp/report_batch_threads && /tmp/report_batch_threads
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tdx_module.h"

static tdxm_module *M;
static size_t N = 256, ROUNDS = 4000;
static double now(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double cpu_used[2];
static void *worker(void *arg) {
    long id = (long)arg;
    uint8_t *rd = calloc(N, 64), *out = malloc(N * 1024);
    uint64_t *st = malloc(N * 8);
    double c0 = now(CLOCK_THREAD_CPUTIME_ID);
    for (size_t r = 0; r < ROUNDS; r++) tdxm_report_batch(M, rd, out, st, N);
    cpu_used[id] = now(CLOCK_THREAD_CPUTIME_ID) - c0;
    return NULL;
}
int main(int argc, char **argv) {
    tdxm_config cfg; memset(&cfg, 0, sizeof cfg);
    cfg.version_minor = 5; cfg.memory_pages = 64;
    M = tdxm_create(&cfg);
    for (int threads = 1; threads <= 2; threads++) {
        pthread_t t[2];
        double w0 = now(CLOCK_MONOTONIC);
        for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)i);
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
        double wall = now(CLOCK_MONOTONIC) - w0, cpu = cpu_used[0] + (threads == 2 ? cpu_used[1] : 0);
        double reports = (double)threads * N * ROUNDS;
        printf("%d thread(s): %.0f ns/report of CPU, %.2fM reports/s wall, parallelism %.2f\n",
               threads, cpu / reports * 1e9, reports / wall / 1e6, cpu / wall);
    }
    return 0;
}
