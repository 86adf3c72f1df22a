/* gk_sched.c - see gk_sched.h. */
#include "gk_sched.h"

#include <stddef.h>

static gk_lock_release_fn lock_release;
static gk_lock_acquire_fn lock_acquire;
static __thread int caller_holds_lock;

void gk_set_caller_lock_hooks(gk_lock_release_fn release, gk_lock_acquire_fn acquire)
{
    lock_release = release;
    lock_acquire = acquire;
}

void gk_caller_holds_lock(int held)
{
    caller_holds_lock = held;
}

void *gk_block_begin(void)
{
    if (!caller_holds_lock || lock_release == NULL)
        return NULL;
    caller_holds_lock = 0; /* a nested wait inside this one must not release twice */
    return lock_release();
}

void gk_block_end(void *token)
{
    if (token == NULL)
        return;
    lock_acquire(token);
    caller_holds_lock = 1;
}
