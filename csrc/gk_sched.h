/*
 * gk_sched.h - a task about to sleep lets the host run others (the guest kernel's schedule()).
 *
 * Layer 1 (C core). A syscall of the model may be entered with the caller's interpreter lock held:
 * short calls are cheaper that way than a lock hand-off (benchmarks/RESULTS.md "GIL strategy"). Every
 * point where a task can wait (a contended mr_lock, a sleep, a completion) brackets the wait with
 * gk_block_begin/gk_block_end, which release that lock for the wait through hooks the binding layer
 * registers, so the core itself knows nothing of Python and a waiter never holds up the threads it
 * waits for.
 */
#ifndef GK_SCHED_H
#define GK_SCHED_H

/* release() gives up the caller's lock and returns what acquire() needs to take it back. */
typedef void *(*gk_lock_release_fn)(void);
typedef void (*gk_lock_acquire_fn)(void *state);
void gk_set_caller_lock_hooks(gk_lock_release_fn release, gk_lock_acquire_fn acquire);

/* The binding layer marks the calls it makes with its lock held (per thread; calls do not nest). */
void gk_caller_holds_lock(int held);

/* Around a wait: begin returns a token for end (NULL when nothing was released). */
void *gk_block_begin(void);
void gk_block_end(void *token);

#endif /* GK_SCHED_H */
