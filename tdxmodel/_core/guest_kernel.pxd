# Declarations of csrc/guest_kernel.h: only what the Cython layer uses (uvloop's includes/ style).
# Omitted: the allocator and user-copy helpers (only the C drivers call them), gk_ctx, gk_kernel_create
# (tdx_driver.h creates the kernel).

from libc.stdint cimport uint8_t, uint64_t, int64_t

cdef extern from "guest_kernel.h" nogil:
    enum:
        GK_FAILSLAB
        GK_FAIL_PAGE_ALLOC
        GK_FAIL_USERCOPY
        GK_NUM_CAPS
        GK_NUM_POINTS
        GK_TRACE_MAX
        GK_PROT_NONE
        GK_PROT_READ
        GK_PROT_WRITE
        GK_MAX_MAP_PAGES
        GK_KNOB_PROBABILITY
        GK_KNOB_INTERVAL
        GK_KNOB_TIMES
        GK_KNOB_SPACE
        GK_KNOB_VERBOSE
        GK_KNOB_IGNORE_GFP_WAIT
        GK_KNOB_MIN_ORDER
        GK_KNOB_TASK_FILTER

    ctypedef struct gk_kernel:
        pass
    ctypedef struct gk_mm:
        pass

    ctypedef struct gk_fault_attr:
        int probability
        uint64_t interval
        int64_t times
        int64_t space
        int verbose
        int ignore_gfp_wait
        int min_order
        int task_filter

    ctypedef struct gk_task:
        unsigned int fail_nth
        int make_it_fail
        int signal_pending
        uint64_t signal_at

    ctypedef struct gk_trace_entry:
        uint8_t point, capability, failed

    ctypedef struct gk_counters:
        uint64_t allocs, frees, outstanding, resident, slab_allocs, page_allocs
        uint64_t locks_taken, locks_released, locks_held

    const char *gk_point_name(int point)
    int gk_point_capability(int point)
    const char *gk_capability_name(int cap)

    void gk_get_counters(gk_kernel *k, gk_counters *out)
    void gk_fault_attr_get(gk_kernel *k, int cap, gk_fault_attr *out)
    void gk_fault_attr_set_knob(gk_kernel *k, int cap, int knob, uint64_t value)
    void gk_force_tdcall(gk_kernel *k, uint64_t status, int leaf, int64_t count)

    int gk_mm_map(gk_mm *mm, uint64_t addr, uint64_t length, int prot)
    int gk_mm_protect(gk_mm *mm, uint64_t addr, uint64_t length, int prot)
    int gk_mm_unmap(gk_mm *mm, uint64_t addr, uint64_t length)
    int gk_mm_poke(gk_mm *mm, uint64_t addr, const void *src, size_t n)
    int gk_mm_peek(gk_mm *mm, uint64_t addr, void *dst, size_t n)
    int gk_mm_mapped(gk_mm *mm, uint64_t addr, uint64_t n)

# gk_task's fields are C11 atomics; these read and write them atomically.
cdef extern from *:
    """
    #include <stdatomic.h>
    static inline unsigned gk_task_get_fail_nth(gk_task *t) { return atomic_load(&t->fail_nth); }
    static inline void gk_task_set_fail_nth(gk_task *t, unsigned v) { atomic_store(&t->fail_nth, v); }
    static inline int gk_task_get_make_it_fail(gk_task *t) { return atomic_load(&t->make_it_fail); }
    static inline void gk_task_set_make_it_fail(gk_task *t, int v) { atomic_store(&t->make_it_fail, v); }
    static inline int gk_task_get_signal(gk_task *t) { return atomic_load(&t->signal_pending); }
    static inline void gk_task_set_signal(gk_task *t, int v) { atomic_store(&t->signal_pending, v); }
    static inline uint64_t gk_task_get_signal_at(gk_task *t) { return atomic_load(&t->signal_at); }
    static inline void gk_task_set_signal_at(gk_task *t, uint64_t v) { atomic_store(&t->signal_at, v); }
    """
    unsigned gk_task_get_fail_nth(gk_task *t) nogil
    void gk_task_set_fail_nth(gk_task *t, unsigned v) nogil
    int gk_task_get_make_it_fail(gk_task *t) nogil
    void gk_task_set_make_it_fail(gk_task *t, int v) nogil
    int gk_task_get_signal(gk_task *t) nogil
    void gk_task_set_signal(gk_task *t, int v) nogil
    uint64_t gk_task_get_signal_at(gk_task *t) nogil
    void gk_task_set_signal_at(gk_task *t, uint64_t v) nogil
