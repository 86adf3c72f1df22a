/*
 * vmm_clock.h - the one platform clock: the guest kernel's sleeps and the host's completions.
 *
 * Host layer (beside the guest kernel; CONTRIBUTING.md). Virtual by default: time moves only when
 * someone sleeps or advances it, so a 30 s GetQuote timeout takes no wall time and every run is
 * deterministic. Real: CLOCK_MONOTONIC and nanosleep, for latency measurements. Both run the same
 * listener (the host's completion queue) at the same points, so a run observes the same results.
 */
#ifndef VMM_CLOCK_H
#define VMM_CLOCK_H

#include <stdint.h>

typedef struct vmm_clock vmm_clock;

/* Called with the current time after every sleep and every poll: the host completes what is due. */
typedef void (*vmm_clock_listener)(void *ctx, uint64_t now_ns);

/* spin_ns (real only, at most VMM_CLOCK_MAX_SPIN_NS): every sleep ends awake, spinning its last
 * spin_ns on CLOCK_MONOTONIC, so it ends on time even where an idle CPU wakes late (a VM's vCPU can
 * take a millisecond and more); it costs a busy CPU for that long per sleeper. 0: plain sleeps.
 * NULL on a bad spin_ns (nonzero on a virtual clock, or over the limit) or no memory. */
#define VMM_CLOCK_MAX_SPIN_NS 1000000000ULL
vmm_clock *vmm_clock_create(int real, uint64_t spin_ns);
void vmm_clock_destroy(vmm_clock *c);
int vmm_clock_is_real(const vmm_clock *c);
uint64_t vmm_clock_spin_ns(const vmm_clock *c);
uint64_t vmm_clock_now_ns(vmm_clock *c);

/* Virtual time stops at 2^64-2 ns (UINT64_MAX is the due time of no completion): t + ns, saturated
 * there; every sleep, advance and due time goes through it (docs/CONTRACT.md "Clock"). */
#define VMM_CLOCK_MAX_NS (UINT64_MAX - 1)
uint64_t vmm_clock_add_ns(uint64_t t, uint64_t ns);

/* Sleep ns: virtual time moves to max(now, start + ns) (concurrent sleepers overlap, as in real
 * time); real time sleeps. Then the listener runs. */
void vmm_clock_sleep_ns(vmm_clock *c, uint64_t ns);
/* Virtual only: advance time by ns without a sleeper (a test, or the host waiting). Returns 0, or -1
 * on a real clock. */
int vmm_clock_advance_ns(vmm_clock *c, uint64_t ns);
/* Run the listener at the current time (a guest reading shared memory sees what the host has done). */
void vmm_clock_poll(vmm_clock *c);

/* One listener; 0, or -1 when another is set. NULL clears it. */
int vmm_clock_set_listener(vmm_clock *c, vmm_clock_listener fn, void *ctx);

#endif /* VMM_CLOCK_H */
