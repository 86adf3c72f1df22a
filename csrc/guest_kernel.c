/*
 * guest_kernel.c - the kernel object: creation over the module's guest memory, the debug counters
 * (see the header). Its parts live beside it: gk_fault.c, gk_alloc.c, gk_usermem.c (gk_internal.h).
 */
#include "gk_internal.h"

#include <stdlib.h>
#include <string.h>

void *gk_zalloc_aligned(size_t size)
{
    size_t rounded = (size + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    void *p = NULL;
    if (posix_memalign(&p, CACHE_LINE, rounded) != 0)
        return NULL;
    memset(p, 0, rounded);
    return p;
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
    if (k->npages) {
        if (tdxm_set_page_state(m, k->base_gpa, k->npages, TDXM_PAGE_PRIVATE) != 0)
            goto fail;
        k->mem = tdxm_host_ptr(m, k->base_gpa, k->npages * PAGE);
        if (!k->mem)
            goto fail;
    }
    if (gk_alloc_init(k) != 0)
        goto fail;
    gk_fault_init(k, seed);
    return k;
fail:
    free(k);
    return NULL;
}

void gk_kernel_destroy(gk_kernel *k)
{
    if (!k)
        return;
    gk_alloc_fini(k);
    gk_fault_fini(k);
    free(k);
}

tdxm_module *gk_kernel_module(gk_kernel *k) { return k->m; }

void gk_set_resident(gk_kernel *k, uint64_t resident) { atomic_store(&k->resident, resident); }

void gk_count_lock(gk_kernel *k, int taken)
{
    if (taken)
        atomic_fetch_add_explicit(&k->locks_taken, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&k->locks_released, 1, memory_order_relaxed);
}
