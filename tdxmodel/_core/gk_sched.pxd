# Declarations of csrc/gk_sched.h (all of it).

cdef extern from "gk_sched.h" nogil:
    ctypedef void *(*gk_lock_release_fn)() noexcept nogil
    ctypedef void (*gk_lock_acquire_fn)(void *state) noexcept nogil
    void gk_set_caller_lock_hooks(gk_lock_release_fn release, gk_lock_acquire_fn acquire)
    void gk_caller_holds_lock(int held)
    void *gk_block_begin()
    void gk_block_end(void *token)
