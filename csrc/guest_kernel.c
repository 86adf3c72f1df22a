/*
 * guest_kernel.c - allocators, user address spaces, user copies and fault injection (see the header).
 */
#include "guest_kernel.h"

#include <stdlib.h>
#include <string.h>

#define PAGE TDX_PAGE_SIZE

/* ---- names ---------------------------------------------------------------------------------------- */

const char *gk_point_name(int point) { return (point >= 0 && point < GK_NUM_POINTS) ? TDXM_POINT_NAMES[point] : "?"; }
int gk_point_capability(int point) { return (point >= 0 && point < GK_NUM_POINTS) ? TDXM_POINT_CAPS[point] : -1; }
const char *gk_capability_name(int cap) { return (cap >= 0 && cap < GK_NUM_CAPS) ? TDXM_CAPABILITY_NAMES[cap] : "?"; }

#define CACHE_LINE 64

void *gk_zalloc_aligned(size_t size)
{
    size_t rounded = (size + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    void *p = NULL;
    if (posix_memalign(&p, CACHE_LINE, rounded) != 0)
        return NULL;
    memset(p, 0, rounded);
    return p;
}

/* ---- slab size classes (abi.SLAB_CLASSES): 8..4096 powers of two plus 96 and 192 ------------------- */

#define slab_sizes TDXM_SLAB_CLASSES
#define NCLASSES TDXM_NUM_SLAB_CLASSES

static int slab_class(size_t size)
{
    for (int i = 0; i < NCLASSES; i++)
        if (size <= slab_sizes[i])
            return i;
    return -1;
}

/* A process's allocation cache (see "per-process caches" below). */
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

/* ---- the kernel ---------------------------------------------------------------------------------- */

enum { PG_FREE = 0, PG_HEAD = 1, PG_TAIL = 2, PG_SLAB = 3 };

struct gk_kernel {
    tdxm_module *m;
    uint8_t *mem;      /* host pointer of GPA first_page * PAGE */
    uint64_t base_gpa;
    size_t npages;     /* pages owned by the allocator */

    /* allocator state, under alloc_lock (held only for bitmap / freelist updates) */
    pthread_mutex_t alloc_lock;
    uint64_t *free_bits; /* bit set = page free */
    uint8_t *page_kind;
    uint8_t *page_info;  /* PG_HEAD: order; PG_SLAB: class */
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

/* SplitMix64 (state += golden gamma, two xor-shift-multiply rounds): see gk_kernel_create. */
static uint32_t splitmix_below_100(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return (uint32_t)((z ^ (z >> 31)) % 100);
}

void gk_fault_attr_defaults(int cap, gk_fault_attr *out)
{
    /* ref §7 "Knobs" and "Filters applied first"; generated from abi.FAULT_DEFAULTS */
    memset(out, 0, sizeof *out);
    out->probability = TDXM_FAULT_DEFAULT_PROBABILITY;
    out->interval = TDXM_FAULT_DEFAULT_INTERVAL;
    out->times = TDXM_FAULT_DEFAULT_TIMES;
    out->space = TDXM_FAULT_DEFAULT_SPACE;
    out->verbose = TDXM_FAULT_DEFAULT_VERBOSE;
    out->ignore_gfp_wait = TDXM_FAULT_IGNORE_GFP_WAIT_DEFAULT[cap];
    out->min_order = (cap == GK_FAIL_PAGE_ALLOC) ? TDXM_FAULT_PAGE_MIN_ORDER_DEFAULT : 0;
    out->task_filter = 0;
}

gk_kernel *gk_kernel_create(tdxm_module *m, uint64_t seed)
{
    gk_kernel *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->m = m;
    size_t total = tdxm_memory_pages(m);
    k->npages = total > GK_FIRST_PAGE ? total - GK_FIRST_PAGE : 0;
    k->base_gpa = (uint64_t)GK_FIRST_PAGE * PAGE;
    size_t words = (k->npages + 63) / 64;
    k->free_bits = calloc(words ? words : 1, sizeof(uint64_t));
    k->page_kind = calloc(k->npages ? k->npages : 1, 1);
    k->page_info = calloc(k->npages ? k->npages : 1, 1);
    if (!k->free_bits || !k->page_kind || !k->page_info)
        goto fail;
    if (k->npages) {
        if (tdxm_set_page_state(m, k->base_gpa, k->npages, TDXM_PAGE_PRIVATE) != 0)
            goto fail;
        k->mem = tdxm_host_ptr(m, k->base_gpa, k->npages * PAGE);
        if (!k->mem)
            goto fail;
        for (size_t p = 0; p < k->npages; p++)
            k->free_bits[p / 64] |= 1ULL << (p % 64);
    }
    pthread_mutex_init(&k->alloc_lock, NULL);
    pthread_mutex_init(&k->cache_registry_lock, NULL);
    pthread_mutex_init(&k->fault_lock, NULL);
    pthread_mutex_init(&k->force_lock, NULL);
    for (int c = 0; c < GK_NUM_CAPS; c++) {
        gk_fault_attr_defaults(c, &k->attr[c]);
        k->rng[c] = seed + (uint64_t)c;
    }
    return k;
fail:
    free(k->free_bits);
    free(k->page_kind);
    free(k->page_info);
    free(k);
    return NULL;
}

void gk_kernel_destroy(gk_kernel *k)
{
    if (!k)
        return;
    for (int i = 0; i < NCLASSES; i++)
        free(k->slab_free[i].off);
    pthread_mutex_destroy(&k->alloc_lock);
    pthread_mutex_destroy(&k->cache_registry_lock);
    pthread_mutex_destroy(&k->fault_lock);
    pthread_mutex_destroy(&k->force_lock);
    free(k->free_bits);
    free(k->page_kind);
    free(k->page_info);
    free(k);
}

tdxm_module *gk_kernel_module(gk_kernel *k) { return k->m; }

void gk_get_counters(gk_kernel *k, gk_counters *out)
{
    /* under the registry lock with every cache locked in turn: a cache's hits move to the kernel's
     * totals only when the cache retires, which takes the same lock */
    pthread_mutex_lock(&k->cache_registry_lock);
    /* releases first: each free follows its alloc, so a racing snapshot never shows more frees */
    out->frees = atomic_load(&k->frees);
    out->allocs = atomic_load(&k->allocs);
    out->slab_allocs = atomic_load(&k->slab_allocs);
    out->page_allocs = atomic_load(&k->page_allocs);
    for (gk_cache *cc = k->caches; cc; cc = cc->next) {
        pthread_mutex_lock(&cc->lock);
        out->frees += cc->frees;
        out->allocs += cc->allocs;
        out->slab_allocs += cc->slab_allocs;
        out->page_allocs += cc->page_allocs;
        pthread_mutex_unlock(&cc->lock);
    }
    pthread_mutex_unlock(&k->cache_registry_lock);
    out->outstanding = out->allocs - out->frees;
    out->resident = atomic_load(&k->resident);
    out->locks_released = atomic_load(&k->locks_released);
    out->locks_taken = atomic_load(&k->locks_taken);
    out->locks_held = out->locks_taken - out->locks_released;
}

void gk_set_resident(gk_kernel *k, uint64_t resident) { atomic_store(&k->resident, resident); }

void gk_count_lock(gk_kernel *k, int taken)
{
    if (taken)
        atomic_fetch_add_explicit(&k->locks_taken, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&k->locks_released, 1, memory_order_relaxed);
}

/* ---- fault injection ------------------------------------------------------------------------------- */

void gk_fault_attr_get(gk_kernel *k, int cap, gk_fault_attr *out)
{
    pthread_mutex_lock(&k->fault_lock);
    *out = k->attr[cap];
    pthread_mutex_unlock(&k->fault_lock);
}

void gk_fault_attr_set(gk_kernel *k, int cap, const gk_fault_attr *in)
{
    pthread_mutex_lock(&k->fault_lock);
    uint64_t count = k->attr[cap].count;
    k->attr[cap] = *in;
    k->attr[cap].count = count;
    atomic_store(&k->armed[cap], in->probability != 0);
    pthread_mutex_unlock(&k->fault_lock);
}

static void trace_add(gk_ctx *c, int point, int cap, int failed)
{
    if (c->ntrace < GK_TRACE_MAX) {
        gk_trace_entry *e = &c->trace[c->ntrace++];
        e->point = (uint8_t)point;
        e->capability = (uint8_t)cap;
        e->failed = (uint8_t)failed;
    }
}

/* The capability's own filters, applied before should_fail (ref §7 "Filters applied first"): they hide
 * the point from fail-nth too. All of this driver's allocations are GFP_KERNEL (they may sleep). */
static int filtered_out(gk_ctx *c, int cap, int order)
{
    if (c->bypass_filters)
        return 0;
    gk_kernel *k = c->k;
    if (cap == GK_FAILSLAB || cap == GK_FAIL_PAGE_ALLOC) {
        int ignore = __atomic_load_n(&k->attr[cap].ignore_gfp_wait, __ATOMIC_RELAXED);
        if (ignore)
            return 1;
    }
    if (cap == GK_FAIL_PAGE_ALLOC && order < __atomic_load_n(&k->attr[cap].min_order, __ATOMIC_RELAXED))
        return 1;
    return 0;
}

/* should_fail (ref §7 "Check order"): 1 fail-nth, 2 probability 0, 3 task filter, 4 times 0,
 * 6 space, 7 interval, 8 random draw; a failure decrements times unless -1 (never below 0). */
static int should_fail_attr(gk_ctx *c, int cap, int64_t size)
{
    gk_kernel *k = c->k;
    gk_fault_attr *a = &k->attr[cap];
    unsigned nth = atomic_load_explicit(&c->task->fail_nth, memory_order_relaxed);
    /* a CAS, so two threads of one Process never both consume the same count */
    while (nth && !atomic_compare_exchange_weak(&c->task->fail_nth, &nth, nth - 1))
        ;
    if (nth) {
        /* 1: fail-nth counts every eligible call and bypasses the knobs below */
        if (nth - 1 != 0)
            return 0;
        pthread_mutex_lock(&k->fault_lock);
        goto fail;
    }
    if (!atomic_load_explicit(&k->armed[cap], memory_order_relaxed))
        return 0; /* 2: probability 0 (the fast path when nothing is armed) */
    pthread_mutex_lock(&k->fault_lock);
    if (a->probability == 0)
        goto no;
    if (a->task_filter && !atomic_load(&c->task->make_it_fail))
        goto no; /* 3 */
    if (a->times == 0)
        goto no; /* 4 */
    if (a->space > size) { /* 6 */
        a->space -= size;
        goto no;
    }
    if (a->interval > 1) { /* 7 */
        a->count++;
        if (a->count % (uint64_t)a->interval)
            goto no;
    }
    if ((uint32_t)a->probability <= splitmix_below_100(&k->rng[cap]))
        goto no; /* 8 */
fail:
    if (a->times != -1 && a->times > 0)
        a->times--;
    pthread_mutex_unlock(&k->fault_lock);
    return 1;
no:
    pthread_mutex_unlock(&k->fault_lock);
    return 0;
}

int gk_should_fail(gk_ctx *c, int point, int cap, int64_t size, int order)
{
    int failed = 0;
    if (!filtered_out(c, cap, order))
        failed = should_fail_attr(c, cap, size);
    trace_add(c, point, cap, failed);
    return failed;
}

void gk_force_tdcall(gk_kernel *k, uint64_t status, int leaf, int64_t count)
{
    pthread_mutex_lock(&k->force_lock);
    k->forced_status = status;
    k->forced_leaf = leaf;
    atomic_store(&k->forced_count, count);
    pthread_mutex_unlock(&k->force_lock);
}

int gk_take_forced_tdcall(gk_kernel *k, int leaf, uint64_t *status)
{
    if (atomic_load_explicit(&k->forced_count, memory_order_relaxed) <= 0)
        return 0; /* fast path: nothing forced */
    int taken = 0;
    pthread_mutex_lock(&k->force_lock);
    if (k->forced_count > 0 && (k->forced_leaf < 0 || k->forced_leaf == leaf)) {
        k->forced_count--;
        *status = k->forced_status;
        taken = 1;
    }
    pthread_mutex_unlock(&k->force_lock);
    return taken;
}

/* ---- page allocator: a bitmap of free pages, first fit at natural alignment ------------------------ */

static int64_t find_free_run(gk_kernel *k, int order)
{
    size_t run = (size_t)1 << order;
    if (order < 6) {
        uint64_t mask = (run == 64) ? ~0ULL : ((1ULL << run) - 1);
        for (size_t w = 0; w * 64 < k->npages; w++) {
            uint64_t bits = k->free_bits[w];
            if (!bits)
                continue;
            for (size_t off = 0; off < 64; off += run) {
                if (((bits >> off) & mask) == mask && w * 64 + off + run <= k->npages)
                    return (int64_t)(w * 64 + off);
            }
        }
        return -1;
    }
    size_t wrun = run / 64;
    for (size_t w = 0; (w + wrun) * 64 <= k->npages; w += wrun) {
        size_t i;
        for (i = 0; i < wrun && k->free_bits[w + i] == ~0ULL; i++)
            ;
        if (i == wrun)
            return (int64_t)(w * 64);
    }
    return -1;
}

static void mark_pages(gk_kernel *k, size_t first, size_t n, int free)
{
    for (size_t p = first; p < first + n; p++) {
        if (free)
            k->free_bits[p / 64] |= 1ULL << (p % 64);
        else
            k->free_bits[p / 64] &= ~(1ULL << (p % 64));
    }
}

/* under alloc_lock */
static int64_t pages_get_locked(gk_kernel *k, int order, int kind)
{
    int64_t first = find_free_run(k, order);
    if (first < 0)
        return -1;
    size_t n = (size_t)1 << order;
    mark_pages(k, (size_t)first, n, 0);
    k->page_kind[first] = (uint8_t)kind;
    k->page_info[first] = (uint8_t)order;
    for (size_t p = 1; p < n; p++)
        k->page_kind[first + p] = PG_TAIL;
    return first;
}

/* Return order-0 page `first` (or an order-n block) to the bitmap. Under alloc_lock. */
static void pages_put_locked(gk_kernel *k, size_t first, int order)
{
    if (k->page_kind[first] == PG_HEAD && k->page_info[first] == order) {
        size_t n = (size_t)1 << order;
        for (size_t p = 0; p < n; p++)
            k->page_kind[first + p] = PG_FREE;
        mark_pages(k, first, n, 1);
    }
}

/* ---- slab allocator: one freelist per size class, linked through the free objects ----------------- */

static int slab_refill_locked(gk_kernel *k, int cls)
{
    uint32_t size = slab_sizes[cls];
    size_t nobj = PAGE / size;
    /* room for every object of every slab first, so kfree never needs to grow the stack and a host
     * realloc failure changes nothing */
    size_t need = k->slab_free[cls].total + nobj;
    if (k->slab_free[cls].cap < need) {
        uint64_t *grown = realloc(k->slab_free[cls].off, need * sizeof *grown);
        if (!grown)
            return -1;
        k->slab_free[cls].off = grown;
        k->slab_free[cls].cap = need;
    }
    int64_t page = pages_get_locked(k, 0, PG_SLAB);
    if (page < 0)
        return -1;
    k->page_info[page] = (uint8_t)cls;
    size_t base = (size_t)page * PAGE;
    for (size_t i = nobj; i-- > 0;) /* lowest address on top */
        k->slab_free[cls].off[k->slab_free[cls].n++] = base + i * size;
    k->slab_free[cls].total += nobj;
    return 0;
}

/* ---- per-process caches (Linux's per-CPU caches, one per emulated task) --------------------------

 * A process keeps a few freed slab objects per class and order-0 pages for itself, so threads that
 * use separate processes allocate without touching the shared allocator lock, the shared counters or
 * each other's cache lines. Nothing observable changes: contents are re-poisoned / re-zeroed on every
 * allocation, and when the shared allocator runs dry every cache is drained into it before an
 * allocation may fail, so memory is exhausted exactly when it would be without the caches. */

static void cache_drain_locked(gk_kernel *k, gk_cache *cc) /* alloc_lock and cc->lock held */
{
    for (int cls = 0; cls < NCLASSES; cls++) {
        while (cc->slab[cls].n)
            k->slab_free[cls].off[k->slab_free[cls].n++] = cc->slab[cls].off[--cc->slab[cls].n];
    }
    while (cc->pages.n)
        pages_put_locked(k, (size_t)cc->pages.first[--cc->pages.n], 0);
}

/* Give every cached object and page back to the shared allocator; 1 if any came back. The caller
 * holds no cache lock (lock order: registry, cache, alloc). */
static int drain_all_caches(gk_kernel *k)
{
    int any = 0;
    pthread_mutex_lock(&k->cache_registry_lock);
    for (gk_cache *cc = k->caches; cc; cc = cc->next) {
        pthread_mutex_lock(&cc->lock);
        pthread_mutex_lock(&k->alloc_lock);
        for (int cls = 0; cls < NCLASSES; cls++)
            any |= cc->slab[cls].n != 0;
        any |= cc->pages.n != 0;
        cache_drain_locked(k, cc);
        pthread_mutex_unlock(&k->alloc_lock);
        pthread_mutex_unlock(&cc->lock);
    }
    pthread_mutex_unlock(&k->cache_registry_lock);
    return any;
}

gk_cache *gk_cache_create(gk_kernel *k)
{
    gk_cache *cc = gk_zalloc_aligned(sizeof *cc);
    if (!cc)
        return NULL;
    pthread_mutex_init(&cc->lock, NULL);
    pthread_mutex_lock(&k->cache_registry_lock);
    cc->next = k->caches;
    if (k->caches)
        k->caches->prev = cc;
    k->caches = cc;
    pthread_mutex_unlock(&k->cache_registry_lock);
    return cc;
}

void gk_cache_destroy(gk_kernel *k, gk_cache *cc)
{
    if (!cc)
        return;
    pthread_mutex_lock(&k->cache_registry_lock);
    pthread_mutex_lock(&cc->lock);
    pthread_mutex_lock(&k->alloc_lock);
    cache_drain_locked(k, cc);
    pthread_mutex_unlock(&k->alloc_lock);
    /* its hits join the kernel's totals, under the registry lock so no snapshot counts them twice */
    atomic_fetch_add(&k->allocs, cc->allocs);
    atomic_fetch_add(&k->frees, cc->frees);
    atomic_fetch_add(&k->slab_allocs, cc->slab_allocs);
    atomic_fetch_add(&k->page_allocs, cc->page_allocs);
    pthread_mutex_unlock(&cc->lock);
    if (cc->prev)
        cc->prev->next = cc->next;
    else
        k->caches = cc->next;
    if (cc->next)
        cc->next->prev = cc->prev;
    pthread_mutex_unlock(&k->cache_registry_lock);
    pthread_mutex_destroy(&cc->lock);
    free(cc);
}

/* ---- the allocator entry points ------------------------------------------------------------------- */

static void count_alloc(gk_ctx *c, int slab)
{
    if (c->cache) {
        pthread_mutex_lock(&c->cache->lock);
        c->cache->allocs++;
        if (slab)
            c->cache->slab_allocs++;
        else
            c->cache->page_allocs++;
        pthread_mutex_unlock(&c->cache->lock);
    } else {
        atomic_fetch_add_explicit(&c->k->allocs, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(slab ? &c->k->slab_allocs : &c->k->page_allocs, 1, memory_order_relaxed);
    }
}

/* 2^order pages from the process cache (order 0) or the shared bitmap; -1 when memory is exhausted. */
static int64_t take_pages(gk_ctx *c, int order)
{
    gk_kernel *k = c->k;
    gk_cache *cc = c->cache;
    if (cc && order == 0) {
        pthread_mutex_lock(&cc->lock);
        if (cc->pages.n) {
            int64_t first = (int64_t)cc->pages.first[--cc->pages.n];
            cc->allocs++;
            cc->page_allocs++;
            pthread_mutex_unlock(&cc->lock);
            return first;
        }
        pthread_mutex_unlock(&cc->lock);
    }
    for (int attempt = 0;; attempt++) {
        pthread_mutex_lock(&k->alloc_lock);
        int64_t first = pages_get_locked(k, order, PG_HEAD);
        pthread_mutex_unlock(&k->alloc_lock);
        if (first >= 0) {
            count_alloc(c, 0);
            return first;
        }
        if (attempt || !drain_all_caches(k))
            return -1;
    }
}

void *gk_alloc_pages(gk_ctx *c, int point, int order, int flags)
{
    gk_kernel *k = c->k;
    /* the space budget counts pages here: mm/fail_page_alloc.c passes 1 << order (ref §7 [21]) */
    if (gk_should_fail(c, point, GK_FAIL_PAGE_ALLOC, (int64_t)1 << order, order))
        return NULL;
    if (order < 0 || order > GK_MAX_ORDER)
        return NULL;
    int64_t first = take_pages(c, order);
    if (first < 0)
        return NULL;
    uint8_t *p = k->mem + (size_t)first * PAGE;
    if (flags & GK_ZERO)
        memset(p, 0, ((size_t)PAGE) << order);
    /* a page is 4096-aligned; 8 bytes past it breaks every alignment the leaves check */
    return (flags & GK_MISALIGN) ? p + 8 : p;
}

void gk_free_pages(gk_ctx *c, void *ptr, int order)
{
    gk_kernel *k = c->k;
    if (!ptr)
        return;
    size_t first = (size_t)((uint8_t *)ptr - k->mem) / PAGE;
    if (first >= k->npages)
        return;
    gk_cache *cc = c->cache;
    if (cc && order == 0) {
        pthread_mutex_lock(&cc->lock);
        if (cc->pages.n < GK_CACHE_DEPTH) {
            cc->pages.first[cc->pages.n++] = first;
            cc->frees++;
            pthread_mutex_unlock(&cc->lock);
            return;
        }
        pthread_mutex_unlock(&cc->lock);
    }
    pthread_mutex_lock(&k->alloc_lock);
    pages_put_locked(k, first, order);
    pthread_mutex_unlock(&k->alloc_lock);
    atomic_fetch_add_explicit(&k->frees, 1, memory_order_relaxed);
}

/* One free object of class cls (byte offset), or -1 when memory is exhausted. */
static int64_t take_object(gk_ctx *c, int cls)
{
    gk_kernel *k = c->k;
    gk_cache *cc = c->cache;
    if (cc) {
        pthread_mutex_lock(&cc->lock);
        if (cc->slab[cls].n) {
            int64_t off = (int64_t)cc->slab[cls].off[--cc->slab[cls].n];
            cc->allocs++;
            cc->slab_allocs++;
            pthread_mutex_unlock(&cc->lock);
            return off;
        }
        pthread_mutex_unlock(&cc->lock);
    }
    for (int attempt = 0;; attempt++) {
        pthread_mutex_lock(&k->alloc_lock);
        if (k->slab_free[cls].n || slab_refill_locked(k, cls) == 0) {
            int64_t off = (int64_t)k->slab_free[cls].off[--k->slab_free[cls].n];
            pthread_mutex_unlock(&k->alloc_lock);
            count_alloc(c, 1);
            return off;
        }
        pthread_mutex_unlock(&k->alloc_lock);
        if (attempt || !drain_all_caches(k))
            return -1;
    }
}

void *gk_kmalloc(gk_ctx *c, int point, size_t size, int flags)
{
    gk_kernel *k = c->k;
    int cls = slab_class(size ? size : 1);
    /* a misaligned object needs room for the offset and the same natural alignment: the next
     * power-of-two class of at least twice the size */
    if (cls >= 0 && (flags & GK_MISALIGN)) {
        uint32_t want = 2 * slab_sizes[cls];
        for (cls = 0; cls < NCLASSES && (slab_sizes[cls] < want || (slab_sizes[cls] & (slab_sizes[cls] - 1))); cls++)
            ;
        if (cls == NCLASSES)
            cls = -1;
    }
    /* the space budget counts the cache's object size, as failslab passes s->object_size */
    if (gk_should_fail(c, point, GK_FAILSLAB, cls >= 0 ? (int64_t)slab_sizes[cls] : (int64_t)size, 0))
        return NULL;
    if (cls < 0)
        return NULL;
    int64_t off = take_object(c, cls);
    if (off < 0)
        return NULL;
    uint8_t *p = k->mem + off;
    memset(p, (flags & GK_ZERO) ? 0 : SLAB_POISON_INUSE, slab_sizes[cls]);
    return (flags & GK_MISALIGN) ? p + 8 : p;
}

void gk_kfree(gk_ctx *c, void *ptr)
{
    gk_kernel *k = c->k;
    if (!ptr)
        return;
    size_t off = (size_t)((uint8_t *)ptr - k->mem);
    size_t page = off / PAGE;
    if (page >= k->npages || k->page_kind[page] != PG_SLAB)
        return;
    int cls = k->page_info[page];
    uint32_t size = slab_sizes[cls];
    size_t obj = page * PAGE + ((off % PAGE) / size) * size; /* round a misaligned pointer down */
    gk_cache *cc = c->cache;
    if (cc) {
        pthread_mutex_lock(&cc->lock);
        if (cc->slab[cls].n < GK_CACHE_DEPTH) {
            cc->slab[cls].off[cc->slab[cls].n++] = obj;
            cc->frees++;
            pthread_mutex_unlock(&cc->lock);
            return;
        }
        pthread_mutex_unlock(&cc->lock);
    }
    pthread_mutex_lock(&k->alloc_lock);
    k->slab_free[cls].off[k->slab_free[cls].n++] = obj; /* room reserved at refill */
    pthread_mutex_unlock(&k->alloc_lock);
    atomic_fetch_add_explicit(&k->frees, 1, memory_order_relaxed);
}

uint64_t gk_pa(gk_kernel *k, const void *ptr)
{
    return k->base_gpa + (uint64_t)((const uint8_t *)ptr - k->mem);
}

/* ---- user address spaces: sorted VMAs, lazily allocated zero-filled pages ------------------------- */

typedef struct {
    uint64_t start; /* page number */
    uint64_t npages;
    int prot;
    uint8_t **pages; /* npages entries, NULL = still all zero */
} gk_vma;

struct gk_mm {
    pthread_rwlock_t lock; /* read: copies and peek/poke; write: map/protect/unmap */
    gk_vma *vmas;
    size_t n, cap;
};

gk_mm *gk_mm_create(void)
{
    gk_mm *mm = gk_zalloc_aligned(sizeof *mm);
    if (mm)
        pthread_rwlock_init(&mm->lock, NULL);
    return mm;
}

static void vma_free_pages(gk_vma *v, uint64_t from, uint64_t to)
{
    for (uint64_t i = from; i < to; i++) {
        free(v->pages[i]);
        v->pages[i] = NULL;
    }
}

void gk_mm_destroy(gk_mm *mm)
{
    if (!mm)
        return;
    for (size_t i = 0; i < mm->n; i++) {
        vma_free_pages(&mm->vmas[i], 0, mm->vmas[i].npages);
        free(mm->vmas[i].pages);
    }
    free(mm->vmas);
    pthread_rwlock_destroy(&mm->lock);
    free(mm);
}

/* index of the VMA containing page pn, or -1 */
static int64_t vma_find(const gk_mm *mm, uint64_t pn)
{
    size_t lo = 0, hi = mm->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const gk_vma *v = &mm->vmas[mid];
        if (pn < v->start)
            hi = mid;
        else if (pn >= v->start + v->npages)
            lo = mid + 1;
        else
            return (int64_t)mid;
    }
    return -1;
}

static int range_ok(uint64_t addr, uint64_t len)
{
    return addr % PAGE == 0 && len > 0 && len - 1 <= UINT64_MAX - addr; /* addr + len <= 2**64 */
}

static uint64_t pages_of(uint64_t len) { return len / PAGE + (len % PAGE != 0); }

static int insert_vma(gk_mm *mm, size_t at, const gk_vma *v)
{
    if (mm->n == mm->cap) {
        size_t cap = mm->cap ? mm->cap * 2 : 8;
        gk_vma *nv = realloc(mm->vmas, cap * sizeof *nv);
        if (!nv)
            return -TDXM_ENOMEM;
        mm->vmas = nv;
        mm->cap = cap;
    }
    memmove(&mm->vmas[at + 1], &mm->vmas[at], (mm->n - at) * sizeof *v);
    mm->vmas[at] = *v;
    mm->n++;
    return 0;
}

int gk_mm_map(gk_mm *mm, uint64_t addr, uint64_t len, int prot)
{
    if (!range_ok(addr, len) || (prot & ~(GK_PROT_READ | GK_PROT_WRITE)))
        return -TDXM_EINVAL;
    uint64_t start = addr / PAGE, npages = pages_of(len);
    if (npages > GK_MAX_MAP_PAGES)
        return -TDXM_EINVAL;
    gk_vma v = {start, npages, prot, calloc(npages, sizeof(uint8_t *))};
    if (!v.pages)
        return -TDXM_ENOMEM;
    pthread_rwlock_wrlock(&mm->lock);
    size_t at = 0;
    while (at < mm->n && mm->vmas[at].start < start)
        at++;
    int overlap = (at > 0 && mm->vmas[at - 1].start + mm->vmas[at - 1].npages > start) ||
                  (at < mm->n && mm->vmas[at].start < start + npages);
    int rc = overlap ? -TDXM_EINVAL : insert_vma(mm, at, &v);
    pthread_rwlock_unlock(&mm->lock);
    if (rc)
        free(v.pages);
    return rc;
}

/* Make page pn a VMA boundary (split the VMA containing it). Under the write lock. */
static int split_at(gk_mm *mm, uint64_t pn)
{
    int64_t i = vma_find(mm, pn);
    if (i < 0 || mm->vmas[i].start == pn)
        return 0;
    gk_vma *v = &mm->vmas[i];
    uint64_t head = pn - v->start;
    gk_vma tail = {pn, v->npages - head, v->prot, calloc(v->npages - head, sizeof(uint8_t *))};
    if (!tail.pages)
        return -TDXM_ENOMEM;
    memcpy(tail.pages, v->pages + head, tail.npages * sizeof(uint8_t *));
    v->npages = head; /* the head keeps its (now partly unused) table */
    int rc = insert_vma(mm, (size_t)i + 1, &tail);
    if (rc) {
        mm->vmas[i].npages += tail.npages;
        free(tail.pages);
    }
    return rc;
}

int gk_mm_protect(gk_mm *mm, uint64_t addr, uint64_t len, int prot)
{
    if (!range_ok(addr, len) || (prot & ~(GK_PROT_READ | GK_PROT_WRITE)))
        return -TDXM_EINVAL;
    uint64_t start = addr / PAGE, end = start + pages_of(len);
    pthread_rwlock_wrlock(&mm->lock);
    int rc = 0;
    /* every page must be mapped (Linux: -ENOMEM), checked before anything changes */
    for (uint64_t pn = start; pn < end;) {
        int64_t i = vma_find(mm, pn);
        if (i < 0) {
            rc = -TDXM_ENOMEM;
            goto out;
        }
        pn = mm->vmas[i].start + mm->vmas[i].npages;
    }
    if ((rc = split_at(mm, start)) || (rc = split_at(mm, end)))
        goto out;
    for (size_t i = 0; i < mm->n; i++)
        if (mm->vmas[i].start >= start && mm->vmas[i].start < end)
            mm->vmas[i].prot = prot;
out:
    pthread_rwlock_unlock(&mm->lock);
    return rc;
}

int gk_mm_unmap(gk_mm *mm, uint64_t addr, uint64_t len)
{
    if (!range_ok(addr, len))
        return -TDXM_EINVAL;
    uint64_t start = addr / PAGE, end = start + pages_of(len);
    pthread_rwlock_wrlock(&mm->lock);
    int rc;
    if ((rc = split_at(mm, start)) || (rc = split_at(mm, end)))
        goto out;
    size_t w = 0;
    for (size_t i = 0; i < mm->n; i++) {
        gk_vma *v = &mm->vmas[i];
        if (v->start >= start && v->start < end) {
            vma_free_pages(v, 0, v->npages);
            free(v->pages);
        } else {
            mm->vmas[w++] = *v;
        }
    }
    mm->n = w;
out:
    pthread_rwlock_unlock(&mm->lock);
    return rc;
}

/* Walk [uaddr, uaddr+n) page by page. For each accessible chunk call fn; stop at the first page that is
 * unmapped or lacks `need`. Returns the bytes not visited. Under the read lock. */
typedef void (*chunk_fn)(uint8_t **slot, size_t pgoff, size_t len, void *arg, size_t done);

static size_t walk(gk_mm *mm, uint64_t uaddr, size_t n, int need, chunk_fn fn, void *arg)
{
    size_t done = 0;
    int64_t vi = -1;
    while (done < n) {
        uint64_t a = uaddr + done;
        if (a < uaddr)
            break; /* wrapped past 2**64 */
        uint64_t pn = a / PAGE;
        if (vi < 0 || pn < mm->vmas[vi].start || pn >= mm->vmas[vi].start + mm->vmas[vi].npages)
            vi = vma_find(mm, pn);
        if (vi < 0 || (mm->vmas[vi].prot & need) != need)
            break;
        size_t pgoff = a % PAGE, len = PAGE - pgoff;
        if (len > n - done)
            len = n - done;
        fn(&mm->vmas[vi].pages[pn - mm->vmas[vi].start], pgoff, len, arg, done);
        done += len;
    }
    return n - done;
}

static void read_chunk(uint8_t **slot, size_t pgoff, size_t len, void *arg, size_t done)
{
    uint8_t *page = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (page)
        memcpy((uint8_t *)arg + done, page + pgoff, len);
    else
        memset((uint8_t *)arg + done, 0, len);
}

/* Backing pages appear on first write; two writers racing for the same page agree through a CAS. */
static uint8_t *page_for_write(uint8_t **slot)
{
    uint8_t *page = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (page)
        return page;
    uint8_t *fresh = calloc(1, PAGE);
    if (!fresh)
        return NULL;
    uint8_t *expected = NULL;
    if (__atomic_compare_exchange_n(slot, &expected, fresh, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return fresh;
    free(fresh);
    return expected;
}

static void write_chunk(uint8_t **slot, size_t pgoff, size_t len, void *arg, size_t done)
{
    uint8_t *page = page_for_write(slot);
    if (page)
        memcpy(page + pgoff, (const uint8_t *)arg + done, len);
}

static void noop_chunk(uint8_t **slot, size_t pgoff, size_t len, void *arg, size_t done)
{
    (void)slot, (void)pgoff, (void)len, (void)arg, (void)done;
}

int gk_mm_poke(gk_mm *mm, uint64_t addr, const void *src, size_t n)
{
    pthread_rwlock_rdlock(&mm->lock);
    int rc = -TDXM_EFAULT;
    if (walk(mm, addr, n, 0, noop_chunk, NULL) == 0) {
        walk(mm, addr, n, 0, write_chunk, (void *)src);
        rc = 0;
    }
    pthread_rwlock_unlock(&mm->lock);
    return rc;
}

int gk_mm_peek(gk_mm *mm, uint64_t addr, void *dst, size_t n)
{
    pthread_rwlock_rdlock(&mm->lock);
    int rc = -TDXM_EFAULT;
    if (walk(mm, addr, n, 0, noop_chunk, NULL) == 0) {
        walk(mm, addr, n, 0, read_chunk, dst);
        rc = 0;
    }
    pthread_rwlock_unlock(&mm->lock);
    return rc;
}

int gk_mm_mapped(gk_mm *mm, uint64_t addr, uint64_t n)
{
    pthread_rwlock_rdlock(&mm->lock);
    int ok = walk(mm, addr, (size_t)n, 0, noop_chunk, NULL) == 0;
    pthread_rwlock_unlock(&mm->lock);
    return ok;
}

size_t gk_copy_from_user(gk_ctx *c, int point, void *dst, uint64_t uaddr, size_t n)
{
    size_t left = n;
    if (!gk_should_fail(c, point, GK_FAIL_USERCOPY, 1, 0) && c->mm) {
        pthread_rwlock_rdlock(&c->mm->lock);
        left = walk(c->mm, uaddr, n, GK_PROT_READ, read_chunk, dst);
        pthread_rwlock_unlock(&c->mm->lock);
    }
    if (left)
        memset((uint8_t *)dst + (n - left), 0, left); /* Linux zero-fills the kernel tail */
    return left;
}

size_t gk_copy_to_user(gk_ctx *c, int point, uint64_t uaddr, const void *src, size_t n)
{
    if (gk_should_fail(c, point, GK_FAIL_USERCOPY, 1, 0) || !c->mm)
        return n;
    size_t limit = n;
    /* model-only genuine mid-copy fault: a prefix of `partial_at` bytes lands, then the copy stops */
    if (c->partial_armed && atomic_load_explicit(c->partial_armed, memory_order_relaxed) &&
        atomic_exchange(c->partial_armed, 0) && atomic_load(c->partial_at) < n)
        limit = atomic_load(c->partial_at);
    pthread_rwlock_rdlock(&c->mm->lock);
    size_t left = walk(c->mm, uaddr, limit, GK_PROT_WRITE, write_chunk, (void *)src);
    pthread_rwlock_unlock(&c->mm->lock);
    return left + (n - limit);
}

int gk_put_user_u64(gk_ctx *c, int point, uint64_t uaddr, uint64_t value)
{
    if (gk_should_fail(c, point, GK_FAIL_USERCOPY, 1, 0) || !c->mm)
        return -TDXM_EFAULT;
    int rc = -TDXM_EFAULT;
    pthread_rwlock_rdlock(&c->mm->lock);
    /* one 8-byte store: it faults before writing anything if any byte is not writable */
    if (walk(c->mm, uaddr, sizeof value, GK_PROT_WRITE, noop_chunk, NULL) == 0) {
        walk(c->mm, uaddr, sizeof value, GK_PROT_WRITE, write_chunk, &value);
        rc = 0;
    }
    pthread_rwlock_unlock(&c->mm->lock);
    return rc;
}
