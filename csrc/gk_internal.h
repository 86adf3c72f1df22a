/*
 * gk_internal.h - the guest kernel's private state, shared by its four files (not for drivers or Cython):
 * guest_kernel.c (the kernel object: lifecycle, counters), gk_fault.c (knobs, should_fail, forced TDCALLs),
 * gk_alloc.c (page and slab allocators, per-process caches), gk_usermem.c (address spaces, user copies).
 */
#ifndef GK_INTERNAL_H
#define GK_INTERNAL_H

#include "guest_kernel.h"

#define PAGE TDX_PAGE_SIZE
#define CACHE_LINE 64

/* Slab size classes (gk_alloc.c): 8..4096 powers of two plus 96 and 192, like Linux's kmalloc caches. */
#define NCLASSES TDXM_NUM_SLAB_CLASSES

/* A process's allocation cache (gk_alloc.c "per-process caches"). */
#define GK_CACHE_DEPTH 4
struct gk_cache {
    pthread_mutex_t lock; /* the owner's, uncontended except while a drain or a snapshot runs */
    struct {
        uint64_t off[GK_CACHE_DEPTH];
        unsigned n;
    } slab[NCLASSES];
    struct {
        uint64_t first[GK_CACHE_DEPTH];
        unsigned n;
    } pages; /* order 0 */
    uint64_t allocs, frees, slab_allocs, page_allocs; /* hits served by this cache */
    gk_cache *prev, *next;
};

enum { PG_FREE = 0, PG_HEAD = 1, PG_TAIL = 2, PG_SLAB = 3 };

struct gk_kernel {
    tdxm_module *m;
    uint8_t *mem;      /* host pointer of GPA first_page * PAGE */
    uint64_t base_gpa;
    size_t npages;     /* pages owned by the allocator */

    /* allocator state, under alloc_lock (held only for bitmap / freelist updates) */
    int alloc_ready;   /* alloc_lock and cache_registry_lock initialised */
    pthread_mutex_t alloc_lock;
    uint64_t *free_bits; /* bit set = page free */
    uint8_t *page_kind;
    uint8_t *page_info;  /* PG_HEAD: order; PG_SLAB: class */
    uint16_t *slab_inuse; /* PG_SLAB: objects not in the shared free stack (handed out or cached) */
    /* per class, a stack of free object offsets kept outside guest memory, so kfree leaves the
     * object's bytes as they were (a freed report stays visible, as in the reference) */
    struct {
        uint64_t *off;
        size_t n, cap, total; /* total: objects in all slabs of the class */
    } slab_free[NCLASSES];

    /* debug counters of the global path and of retired per-process caches; each live cache counts
     * its own hits (gk_get_counters sums them), so the hot path shares no counter cache line */
    _Atomic uint64_t allocs, frees, resident, slab_allocs, page_allocs;
    pthread_mutex_t cache_registry_lock;
    gk_cache *caches; /* live per-process caches (doubly linked) */
    _Atomic uint64_t locks_taken, locks_released;

    /* fault injection: knobs under fault_lock; `armed[cap]` mirrors probability != 0 for the fast path */
    pthread_mutex_t fault_lock;
    gk_fault_attr attr[GK_NUM_CAPS];
    _Atomic int armed[GK_NUM_CAPS];
    uint64_t rng[GK_NUM_CAPS];

    /* forced TDCALL results */
    pthread_mutex_t force_lock;
    _Atomic int64_t forced_count;
    uint64_t forced_status;
    int forced_leaf;
};

/* gk_fault.c: knobs at their defaults, one SplitMix64 state per capability (see gk_kernel_create). */
void gk_fault_init(gk_kernel *k, uint64_t seed);
void gk_fault_fini(gk_kernel *k);
/* gk_alloc.c: the allocator over the guest pages the kernel owns (k->mem, k->npages set); 0 or -1. */
int gk_alloc_init(gk_kernel *k);
void gk_alloc_fini(gk_kernel *k);

#endif /* GK_INTERNAL_H */
