/*
 * vmm_clock.c - the platform clock (vmm_clock.h).
 */
#include "vmm_clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>

struct vmm_clock {
    int real;
    uint64_t spin_ns;            /* real: the last spin_ns of every sleep are spent awake */
    _Atomic uint64_t virtual_ns; /* virtual time */
    uint64_t epoch_ns;           /* real: CLOCK_MONOTONIC at creation */
    pthread_mutex_t lock;        /* guards the listener */
    vmm_clock_listener listener;
    void *listener_ctx;
};

static uint64_t monotonic_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

vmm_clock *vmm_clock_create(int real, uint64_t spin_ns)
{
    vmm_clock *c;

    if (spin_ns != 0 && (!real || spin_ns > VMM_CLOCK_MAX_SPIN_NS))
        return NULL;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->real = real != 0;
    c->spin_ns = spin_ns;
    c->epoch_ns = monotonic_ns();
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void vmm_clock_destroy(vmm_clock *c)
{
    if (c == NULL)
        return;
    pthread_mutex_destroy(&c->lock);
    free(c);
}

int vmm_clock_is_real(const vmm_clock *c)
{
    return c->real;
}

uint64_t vmm_clock_spin_ns(const vmm_clock *c)
{
    return c->spin_ns;
}

uint64_t vmm_clock_now_ns(vmm_clock *c)
{
    if (c->real)
        return monotonic_ns() - c->epoch_ns;
    return atomic_load(&c->virtual_ns);
}

static void run_listener(vmm_clock *c)
{
    vmm_clock_listener fn;
    void *ctx;

    pthread_mutex_lock(&c->lock);
    fn = c->listener;
    ctx = c->listener_ctx;
    pthread_mutex_unlock(&c->lock);
    if (fn != NULL)
        fn(ctx, vmm_clock_now_ns(c));
}

uint64_t vmm_clock_add_ns(uint64_t t, uint64_t ns)
{
    return ns > VMM_CLOCK_MAX_NS - t || t > VMM_CLOCK_MAX_NS ? VMM_CLOCK_MAX_NS : t + ns;
}

static void virtual_move_to(vmm_clock *c, uint64_t target)
{
    uint64_t now = atomic_load(&c->virtual_ns);

    while (now < target && !atomic_compare_exchange_weak(&c->virtual_ns, &now, target))
        ;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Sleep until CLOCK_MONOTONIC reaches now + ns. The thread's timer slack (50 us by default) would
 * let every emulated wait end up to 50 us late, on top of the wake-up; an emulated kernel timer or a
 * completion has no such slack of ours (its own granularity is modelled: profiles.msleep_ns), so the
 * slack is 1 ns for the sleep and the caller's own value is restored after it. With spin_ns, the
 * thread sleeps to spin_ns before the deadline and spins the rest: an idle vCPU of the machine we run
 * on can wake a millisecond or more late, a running one does not (vmm_clock.h). */
static void real_sleep_ns(uint64_t ns, uint64_t spin_ns)
{
    struct timespec until;
    uint64_t now = monotonic_ns();
    uint64_t t = ns > UINT64_MAX - now ? UINT64_MAX : now + ns;

    if (ns > spin_ns) {
        uint64_t wake = t - spin_ns;
        int slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);

        if (slack > 1)
            (void)prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
        until.tv_sec = (time_t)(wake / 1000000000ULL);
        until.tv_nsec = (long)(wake % 1000000000ULL);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
            ;
        if (slack > 1)
            (void)prctl(PR_SET_TIMERSLACK, (unsigned long)slack, 0, 0, 0);
    }
    if (spin_ns != 0)
        while (monotonic_ns() < t)
            cpu_relax();
}

void vmm_clock_sleep_ns(vmm_clock *c, uint64_t ns)
{
    if (c->real) {
        real_sleep_ns(ns, c->spin_ns);
    } else {
        uint64_t start = atomic_load(&c->virtual_ns);
        virtual_move_to(c, vmm_clock_add_ns(start, ns));
    }
    run_listener(c);
}

int vmm_clock_advance_ns(vmm_clock *c, uint64_t ns)
{
    if (c->real)
        return -1;
    uint64_t now = atomic_load(&c->virtual_ns);
    while (!atomic_compare_exchange_weak(&c->virtual_ns, &now, vmm_clock_add_ns(now, ns)))
        ;
    run_listener(c);
    return 0;
}

void vmm_clock_poll(vmm_clock *c)
{
    run_listener(c);
}

int vmm_clock_set_listener(vmm_clock *c, vmm_clock_listener fn, void *ctx)
{
    int rc = 0;

    pthread_mutex_lock(&c->lock);
    if (fn != NULL && c->listener != NULL)
        rc = -1;
    else {
        c->listener = fn;
        c->listener_ctx = fn != NULL ? ctx : NULL;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}
