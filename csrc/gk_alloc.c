/*
 * gk_alloc.c - the kernel's allocators over the guest pages it owns: a page bitmap (first fit at natural
 * alignment), slab size classes carved from one-page slabs, and per-process caches. Declared in
 * guest_kernel.h ("allocators"); paired with tdxmodel/_reference/gk_alloc.py.
 */
#include "gk_internal.h"

#include <stdlib.h>
#include <string.h>

#define slab_sizes TDXM_SLAB_CLASSES /* generated from abi.SLAB_CLASSES */

static int slab_class(size_t size)
{
    for (int i = 0; i < NCLASSES; i++)
        if (size <= slab_sizes[i])
            return i;
    return -1;
}

int gk_alloc_init(gk_kernel *k)
{
    size_t words = (k->npages + 63) / 64;
    k->free_bits = calloc(words ? words : 1, sizeof(uint64_t));
    k->page_kind = calloc(k->npages ? k->npages : 1, 1);
    k->page_info = calloc(k->npages ? k->npages : 1, 1);
    k->slab_inuse = calloc(k->npages ? k->npages : 1, sizeof(uint16_t));
    if (!k->free_bits || !k->page_kind || !k->page_info || !k->slab_inuse) {
        gk_alloc_fini(k);
        return -1;
    }
    for (size_t p = 0; p < k->npages; p++)
        k->free_bits[p / 64] |= 1ULL << (p % 64);
    pthread_mutex_init(&k->alloc_lock, NULL);
    pthread_mutex_init(&k->cache_registry_lock, NULL);
    k->alloc_ready = 1;
    return 0;
}

void gk_alloc_fini(gk_kernel *k)
{
    for (int i = 0; i < NCLASSES; i++)
        free(k->slab_free[i].off);
    if (k->alloc_ready) {
        pthread_mutex_destroy(&k->alloc_lock);
        pthread_mutex_destroy(&k->cache_registry_lock);
    }
    free(k->free_bits);
    free(k->page_kind);
    free(k->page_info);
    free(k->slab_inuse);
}

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

/* ---- page allocator: a bitmap of free pages, first fit at natural alignment ------------------------ */

static int page_free(const gk_kernel *k, size_t i)
{
    return (int)((k->free_bits[i / 64] >> (i % 64)) & 1);
}

static int64_t find_free_run(gk_kernel *k, int order)
{
    size_t run = (size_t)1 << order;
    /* the buddy allocator's blocks are naturally aligned in physical memory: index + first pfn */
    size_t phase = (run - (size_t)(k->base_gpa / PAGE) % run) % run;
    if (phase != 0) {
        for (size_t i = phase; i + run <= k->npages; i += run) {
            size_t j = 0;
            while (j < run && page_free(k, i + j))
                j++;
            if (j == run)
                return (int64_t)i;
        }
        return -1;
    }
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

/* ---- slab allocator: per class, a stack of free object offsets kept outside guest memory ---------- */

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
    k->slab_inuse[page] = 0;
    size_t base = (size_t)page * PAGE;
    for (size_t i = nobj; i-- > 0;) /* lowest address on top */
        k->slab_free[cls].off[k->slab_free[cls].n++] = base + i * size;
    k->slab_free[cls].total += nobj;
    return 0;
}

/* Push / pop one object of the shared free stack of class cls (room reserved at refill). Under
 * alloc_lock. */
static void slab_push_locked(gk_kernel *k, int cls, uint64_t off)
{
    k->slab_free[cls].off[k->slab_free[cls].n++] = off;
    k->slab_inuse[off / PAGE]--;
}

static uint64_t slab_pop_locked(gk_kernel *k, int cls)
{
    uint64_t off = k->slab_free[cls].off[--k->slab_free[cls].n];
    k->slab_inuse[off / PAGE]++;
    return off;
}

/* Give every empty slab's page back to the page allocator; returns how many. Under alloc_lock, with
 * the per-process caches drained first (a cached object keeps its slab in use). The model's SLUB keeps
 * no empty slab once memory runs out (docs/CONTRACT.md "Kernel-model details"), as the reference
 * frees one as soon as it empties: only addresses differ, never whether an allocation fails. */
static size_t slab_reclaim_locked(gk_kernel *k)
{
    size_t pages = 0;
    for (int cls = 0; cls < NCLASSES; cls++) {
        size_t w = 0;
        for (size_t i = 0; i < k->slab_free[cls].n; i++) {
            uint64_t off = k->slab_free[cls].off[i];
            if (k->slab_inuse[off / PAGE] != 0)
                k->slab_free[cls].off[w++] = off;
        }
        if (w == k->slab_free[cls].n)
            continue;
        /* an empty slab has all its objects on the stack: what was dropped is whole slabs */
        k->slab_free[cls].total -= k->slab_free[cls].n - w;
        k->slab_free[cls].n = w;
    }
    for (size_t page = 0; page < k->npages; page++) {
        if (k->page_kind[page] == PG_SLAB && k->slab_inuse[page] == 0) {
            k->page_kind[page] = PG_FREE;
            mark_pages(k, page, 1, 1);
            pages++;
        }
    }
    return pages;
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
            slab_push_locked(k, cls, cc->slab[cls].off[--cc->slab[cls].n]);
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

/* Before an allocation may fail: drain the caches, then free the empty slabs; 1 if anything came back. */
static int reclaim(gk_kernel *k)
{
    int any = drain_all_caches(k);
    pthread_mutex_lock(&k->alloc_lock);
    any |= slab_reclaim_locked(k) != 0;
    pthread_mutex_unlock(&k->alloc_lock);
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
        if (attempt || !reclaim(k))
            return -1;
    }
}

void *gk_alloc_pages(gk_ctx *c, int point, int order, int flags)
{
    gk_kernel *k = c->k;
    /* the space budget counts pages here: mm/fail_page_alloc.c passes 1 << order (ref §7 [21]) */
    if (!(flags & GK_NOFAIL) && gk_should_fail(c, point, GK_FAIL_PAGE_ALLOC, (int64_t)1 << order, order))
        return NULL;
    if (order < 0 || order > GK_MAX_ORDER)
        return NULL;
    int64_t first = take_pages(c, order);
    if (first < 0)
        return NULL;
    uint8_t *p = k->mem + (size_t)first * PAGE;
    /* unzeroed pages hold the slab poison too, as on the reference: their bytes (seen where a copy
     * runs past its buffer, quote.md §2.3 P9) never depend on which pages the allocator picked */
    memset(p, (flags & GK_ZERO) ? 0 : SLAB_POISON_INUSE, ((size_t)PAGE) << order);
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
            int64_t off = (int64_t)slab_pop_locked(k, cls);
            pthread_mutex_unlock(&k->alloc_lock);
            count_alloc(c, 1);
            return off;
        }
        pthread_mutex_unlock(&k->alloc_lock);
        if (attempt || !reclaim(k))
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
    if (!(flags & GK_NOFAIL) && gk_should_fail(c, point, GK_FAILSLAB, cls >= 0 ? (int64_t)slab_sizes[cls] : (int64_t)size, 0))
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
    slab_push_locked(k, cls, obj);
    pthread_mutex_unlock(&k->alloc_lock);
    atomic_fetch_add_explicit(&k->frees, 1, memory_order_relaxed);
}

uint64_t gk_pa(gk_kernel *k, const void *ptr)
{
    return k->base_gpa + (uint64_t)((const uint8_t *)ptr - k->mem);
}
