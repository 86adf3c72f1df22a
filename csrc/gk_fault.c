/*
 * gk_fault.c - fault injection in the kernel's vocabulary (ref §7): the injection-point names, the
 * capability knobs with their defaults, the filters, should_fail's check order, and the model-only
 * forced TDCALL results. Declared in guest_kernel.h ("fault injection"); paired with
 * tdxmodel/_reference/gk_fault.py.
 */
#include "gk_internal.h"

#include <string.h>

/* ---- names ---------------------------------------------------------------------------------------- */

/* The tables are generated into tdx_abi.h from tdxmodel/profiles.py POINTS and abi.FAULT_CAPABILITIES. */
const char *gk_point_name(int point) { return (point >= 0 && point < GK_NUM_POINTS) ? TDXM_POINT_NAMES[point] : "?"; }
int gk_point_capability(int point) { return (point >= 0 && point < GK_NUM_POINTS) ? TDXM_POINT_CAPS[point] : -1; }
const char *gk_capability_name(int cap) { return (cap >= 0 && cap < GK_NUM_CAPS) ? TDXM_CAPABILITY_NAMES[cap] : "?"; }

/* SplitMix64 (state += golden gamma, two xor-shift-multiply rounds): see gk_kernel_create in the header. */
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

void gk_fault_init(gk_kernel *k, uint64_t seed)
{
    pthread_mutex_init(&k->fault_lock, NULL);
    pthread_mutex_init(&k->force_lock, NULL);
    for (int c = 0; c < GK_NUM_CAPS; c++) {
        gk_fault_attr_defaults(c, &k->attr[c]);
        k->rng[c] = seed + (uint64_t)c;
    }
}

void gk_fault_fini(gk_kernel *k)
{
    pthread_mutex_destroy(&k->fault_lock);
    pthread_mutex_destroy(&k->force_lock);
}

void gk_fault_attr_get(gk_kernel *k, int cap, gk_fault_attr *out)
{
    pthread_mutex_lock(&k->fault_lock);
    *out = k->attr[cap];
    pthread_mutex_unlock(&k->fault_lock);
}

void gk_fault_attr_set_knob(gk_kernel *k, int cap, int knob, uint64_t value)
{
    if (cap < 0 || cap >= GK_NUM_CAPS)
        return;
    gk_fault_attr *a = &k->attr[cap];
    pthread_mutex_lock(&k->fault_lock);
    switch (knob) {
    case GK_KNOB_PROBABILITY:
        a->probability = (int)value;
        atomic_store(&k->armed[cap], a->probability != 0);
        break;
    case GK_KNOB_INTERVAL:
        a->interval = value;
        break;
    case GK_KNOB_TIMES:
        a->times = (int64_t)value;
        break;
    case GK_KNOB_SPACE:
        a->space = (int64_t)value;
        break;
    case GK_KNOB_VERBOSE:
        a->verbose = (int)value;
        break;
    /* the filters are read without the lock (filtered_out): store them atomically */
    case GK_KNOB_IGNORE_GFP_WAIT:
        __atomic_store_n(&a->ignore_gfp_wait, (int)value, __ATOMIC_RELAXED);
        break;
    case GK_KNOB_MIN_ORDER:
        __atomic_store_n(&a->min_order, (int)value, __ATOMIC_RELAXED);
        break;
    case GK_KNOB_TASK_FILTER:
        a->task_filter = (int)value;
        break;
    default:
        break;
    }
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
        if (a->count % a->interval)
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
