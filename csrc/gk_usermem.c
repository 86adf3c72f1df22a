/*
 * gk_usermem.c - per-process user address spaces (sorted VMAs, zero-filled pages allocated on first
 * write) and the Linux user-copy helpers over them. Declared in guest_kernel.h ("user address spaces",
 * "user copies"); paired with tdxmodel/_reference/gk_usermem.py.
 */
#include "gk_internal.h"

#include <stdlib.h>
#include <string.h>

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

size_t gk_user_read(gk_mm *mm, uint64_t uaddr, void *dst, size_t n)
{
    pthread_rwlock_rdlock(&mm->lock);
    size_t left = walk(mm, uaddr, n, GK_PROT_READ, read_chunk, dst);
    pthread_rwlock_unlock(&mm->lock);
    return left;
}

size_t gk_user_write(gk_mm *mm, uint64_t uaddr, const void *src, size_t n)
{
    pthread_rwlock_rdlock(&mm->lock);
    size_t left = walk(mm, uaddr, n, GK_PROT_WRITE, write_chunk, (void *)src);
    pthread_rwlock_unlock(&mm->lock);
    return left;
}

int gk_user_put(gk_mm *mm, uint64_t uaddr, const void *src, size_t n)
{
    int rc = -TDXM_EFAULT;
    pthread_rwlock_rdlock(&mm->lock);
    if (walk(mm, uaddr, n, GK_PROT_WRITE, noop_chunk, NULL) == 0) {
        walk(mm, uaddr, n, GK_PROT_WRITE, write_chunk, (void *)src);
        rc = 0;
    }
    pthread_rwlock_unlock(&mm->lock);
    return rc;
}
