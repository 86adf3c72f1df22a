/*
 * guest_kernel.h - the guest kernel model: page and slab allocators over the module's guest memory,
 * per-process user address spaces, Linux user-copy helpers, fault injection and debug counters.
 * The one header of four files, each section naming its file: guest_kernel.c (the kernel object),
 * gk_fault.c, gk_alloc.c, gk_usermem.c; their shared private state is in gk_internal.h. Each pairs
 * with the reference module of the same name in tdxmodel/_reference/ (kernel.py for guest_kernel.c).
 *
 * Layer 1 (C core). Facts: shared/reference/tdx-abi.md §2 (what the drivers allocate and copy) and §7
 * (the fault-injection vocabulary, should_fail's check order, the kernel defaults). Every function is
 * callable without the GIL. Thread-safe: the allocator lock covers only bitmap / freelist updates; the
 * fault knobs take a lock only when something is armed (probability != 0).
 */
#ifndef GUEST_KERNEL_H
#define GUEST_KERNEL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "tdx_abi.h"
#include "tdx_module.h"

/* The kernel allocator owns guest pages GK_FIRST_PAGE..memory_pages-1 (docs/CONTRACT.md "Kernel": pages
 * 0..3 are the host's, 4..15 stay free for host-side test buffers). */
#define GK_FIRST_PAGE KERNEL_FIRST_PAGE
#define GK_MAX_ORDER 10

/* ---- fault injection (gk_fault.c) ---------------------------------------------------------------- */

/* Fault-injection capabilities (enum gk_capability) and injection points (enum gk_point,
 * "<object>:<function>", docs/CONTRACT.md "Injection point names") are generated into tdx_abi.h from
 * tdxmodel/abi.py and tdxmodel/profiles.py. */
const char *gk_point_name(int point);
int gk_point_capability(int point);
const char *gk_capability_name(int cap);

/* One capability's knobs (ref §7 "Knobs"; defaults in gk_fault_attr_defaults). */
typedef struct {
    int probability;     /* percent, 0..100 */
    uint64_t interval;   /* >= 1; the kernel's unsigned long */
    int64_t times;       /* -1 unlimited, else >= 0; decremented on each failure */
    int64_t space;       /* byte budget consumed before failures start */
    int verbose;
    int ignore_gfp_wait; /* failslab / fail_page_alloc: GFP_KERNEL allocations never fail while set */
    int min_order;       /* fail_page_alloc: orders below this never fail */
    int task_filter;     /* only tasks with make_it_fail */
    uint64_t count;      /* eligible calls seen, for interval */
} gk_fault_attr;

/* Per-task fault state (a Process, or the module-init context). Atomics: another Python thread may set
 * signal_pending while this task waits for a lock without the GIL. */
typedef struct {
    _Atomic unsigned int fail_nth; /* /proc/<pid>/fail-nth: 0 = not armed */
    _Atomic int make_it_fail;
    _Atomic int signal_pending;
    /* A signal due at platform-clock time signal_at - 1 (0: none): an interruptible sleep that
     * reaches it is cut short there and the signal becomes pending (model-only knob). */
    _Atomic uint64_t signal_at;
} gk_task;

typedef struct {
    uint8_t point, capability, failed;
} gk_trace_entry;

#define GK_TRACE_MAX 16

typedef struct gk_kernel gk_kernel;
typedef struct gk_mm gk_mm;
typedef struct gk_cache gk_cache;

/* The context of one emulated syscall (or of module init): who runs it, in which address space, and
 * the trace of injectable points it passed. Lives on the caller's stack: no per-call malloc. */
typedef struct {
    gk_kernel *k;
    gk_task *task;
    gk_mm *mm;               /* NULL at module init */
    gk_cache *cache;         /* the process's allocation cache; NULL: the shared allocator only */
    int bypass_filters;      /* init-time fail-nth: see td_kernel_create */
    unsigned ntrace;
    gk_trace_entry trace[GK_TRACE_MAX];
    /* model-only genuine fault: the next copy_to_user faults after partial_at bytes (CONTRACT
     * Process.fault_user_copy); consumed by that copy. Points at the process's flag. */
    _Atomic int *partial_armed;
    _Atomic size_t *partial_at; /* read when the armed flag is consumed */
} gk_ctx;

/* Debug counters (ref: style.md lesson 5). */
typedef struct {
    uint64_t allocs, frees, outstanding, resident, slab_allocs, page_allocs;
    uint64_t locks_taken, locks_released, locks_held;
} gk_counters;

/* Zeroed memory on cache lines of its own: per-process state written on every syscall must not share
 * a line with another process's (false sharing would serialise threads that share nothing). Free
 * with free(). */
void *gk_zalloc_aligned(size_t size);

/* ---- kernel lifecycle and counters (guest_kernel.c; gk_get_counters in gk_alloc.c) --------------- */

/* Create the kernel over module m: marks pages GK_FIRST_PAGE.. private (tdxm_set_page_state) and
 * takes them for the allocator. NULL when out of host memory. A module with no page past
 * GK_FIRST_PAGE yields a kernel whose every allocation fails (-ENOMEM). */
/* The random draw (ref §7 step 8) is specified so both backends draw the same numbers: SplitMix64, one
 * state per capability starting at (seed + capability index) mod 2**64, a draw is next() % 100. */
gk_kernel *gk_kernel_create(tdxm_module *m, uint64_t seed);
void gk_kernel_destroy(gk_kernel *k);
tdxm_module *gk_kernel_module(gk_kernel *k);
void gk_get_counters(gk_kernel *k, gk_counters *out);
void gk_set_resident(gk_kernel *k, uint64_t resident);
void gk_count_lock(gk_kernel *k, int taken); /* 1: taken, 0: released */

/* ---- fault knobs and should_fail (gk_fault.c) ------------------------------------------------------ */

/* One knob of gk_fault_attr (the debugfs file of the same name, ref §7 "Knobs"). */
enum gk_knob {
    GK_KNOB_PROBABILITY = 0,
    GK_KNOB_INTERVAL,
    GK_KNOB_TIMES,
    GK_KNOB_SPACE,
    GK_KNOB_VERBOSE,
    GK_KNOB_IGNORE_GFP_WAIT,
    GK_KNOB_MIN_ORDER,
    GK_KNOB_TASK_FILTER,
    GK_NUM_KNOBS
};

/* Fault knobs. gk_fault_attr_get copies a consistent snapshot. gk_fault_attr_set_knob writes one knob
 * under the fault lock and nothing else, as a debugfs write does: `times` and `space` that calls use
 * up meanwhile stay used up. It validates nothing (the Cython layer raises ValueError for
 * out-of-range values); `value` is the knob's value cast to 64 bits (times -1 as all ones). */
void gk_fault_attr_defaults(int cap, gk_fault_attr *out);
void gk_fault_attr_get(gk_kernel *k, int cap, gk_fault_attr *out);
void gk_fault_attr_set_knob(gk_kernel *k, int cap, int knob, uint64_t value);

/* should_fail for capability cap at point `point` (ref §7 check order), recording the point in the
 * trace. `size` feeds the space budget; `order` is the page order (fail_page_alloc's min-order). */
int gk_should_fail(gk_ctx *c, int point, int cap, int64_t size, int order);

/* Forced TDCALL results (CONTRACT Kernel.force_tdcall): leaf -1 = any. Consumes one when it applies. */
void gk_force_tdcall(gk_kernel *k, uint64_t status, int leaf, int64_t count);
int gk_take_forced_tdcall(gk_kernel *k, int leaf, uint64_t *status);

/* ---- allocators (gk_alloc.c; all return host pointers into guest memory; pa() gives the GPA) ------ */
enum { GK_ZERO = 1, GK_MISALIGN = 2, GK_NOFAIL = 4 }; /* GK_NOFAIL: __GFP_NOFAIL, never failed (ref §7) */
/* kmalloc / kzalloc: the injection point `point` (failslab) is checked first; NULL on failure. The
 * object is filled with SLAB_POISON_INUSE unless GK_ZERO. GK_MISALIGN returns the object 8 bytes past
 * its natural alignment (CONTRACT force_misaligned), still `size` bytes usable. */
void *gk_kmalloc(gk_ctx *c, int point, size_t size, int flags);
void gk_kfree(gk_ctx *c, void *ptr);
/* __get_free_pages / get_zeroed_page: fail_page_alloc at `point`; 2^order pages, naturally aligned. */
void *gk_alloc_pages(gk_ctx *c, int point, int order, int flags);
void gk_free_pages(gk_ctx *c, void *ptr, int order);
/* A process's allocation cache: a few freed objects and order-0 pages it reuses without the shared
 * lock (Linux's per-CPU caches). Drained into the shared allocator before any allocation would fail
 * and when the process goes, so exhaustion and counters are exactly as without it. */
gk_cache *gk_cache_create(gk_kernel *k);
void gk_cache_destroy(gk_kernel *k, gk_cache *cache);
uint64_t gk_pa(gk_kernel *k, const void *ptr);

/* ---- user address spaces and user copies (gk_usermem.c) -------------------------------------------- */
enum { GK_PROT_NONE = 0, GK_PROT_READ = 1, GK_PROT_WRITE = 2 };
/* Largest single mapping, so the per-page table stays small (a model limit, documented in CONTRACT). */
#define GK_MAX_MAP_PAGES (1ULL << 20)

gk_mm *gk_mm_create(void);
void gk_mm_destroy(gk_mm *mm);
/* Addresses span the whole 64-bit space (as the reference's do).
 * 0, or -TDXM_EINVAL (misaligned, empty, too large, past 2**64, overlap, bad prot), or
 * -TDXM_ENOMEM (mprotect of a range with an unmapped page; host out of memory). */
int gk_mm_map(gk_mm *mm, uint64_t addr, uint64_t len, int prot);
int gk_mm_protect(gk_mm *mm, uint64_t addr, uint64_t len, int prot);
int gk_mm_unmap(gk_mm *mm, uint64_t addr, uint64_t len);
/* Host-side access ignoring protection: 0, or -TDXM_EFAULT if any byte is unmapped (nothing copied). */
int gk_mm_poke(gk_mm *mm, uint64_t addr, const void *src, size_t n);
int gk_mm_peek(gk_mm *mm, uint64_t addr, void *dst, size_t n);
/* 1 if every byte of [addr, addr+n) is mapped (any protection), else 0. */
int gk_mm_mapped(gk_mm *mm, uint64_t addr, uint64_t n);

/* Linux semantics: return the number of bytes NOT copied; copy byte-exactly up to the first byte whose
 * page is unmapped or lacks the permission; copy_from_user zero-fills the uncopied tail of dst. An
 * injected fail_usercopy (point `point`) copies nothing (ref §7). */
size_t gk_copy_from_user(gk_ctx *c, int point, void *dst, uint64_t uaddr, size_t n);
size_t gk_copy_to_user(gk_ctx *c, int point, uint64_t uaddr, const void *src, size_t n);
/* put_user of a u64: one store, all or nothing. 0 or -TDXM_EFAULT. */
int gk_put_user_u64(gk_ctx *c, int point, uint64_t uaddr, uint64_t value);

#endif /* GUEST_KERNEL_H */
