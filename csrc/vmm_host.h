/*
 * vmm_host.h - the host side of TDG.VP.VMCALL: KVM's exit to userspace and QEMU's handlers for
 * GetQuote, SetupEventNotifyInterrupt and GetTdVmCallInfo, with a fault menu.
 *
 * Host layer, beside the guest kernel (CONTRIBUTING.md): the guest reaches it only through the
 * module's TDG.VP.VMCALL and the shared buffer in guest memory. Facts: shared/reference/quote.md §3
 * (GHCI), §4.1 (QEMU, steps H1-H9 and the completion) and tdx-abi.md §5. The quote bytes come from a
 * producer (vmm_produce_fn): the quoting enclave, or the test producer below.
 *
 * Thread-safe. Completions run from the platform clock's listener (vmm_clock.h): after every guest
 * sleep and every poll, each request whose service time has passed completes, in due order.
 */
#ifndef VMM_HOST_H
#define VMM_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "tdx_abi.h"
#include "tdx_module.h"
#include "vmm_clock.h"

/* A payload that is one whole valid QGS GET_QUOTE_REQ frame (what libtdx_attest builds for the
 * downstream ioctl, quote.md §2.7) gets a GET_QUOTE_RESP frame back around the producer's quote of
 * the report inside, as a VMM that passes the message to QGS unchanged returns it (quote.md §2.6-§2.7,
 * §4.2; upstream QEMU would wrap it once more and QGS refuse it: not modelled). Any other payload is
 * QGS's raw mode: the producer's quote of the payload itself. */
/* A producer turns the GetQuote payload (in_len bytes at data, normally the TDREPORT) into quote
 * bytes: writes at most cap bytes to out, sets *out_len, returns 0; nonzero means the quote service
 * failed (status ERROR). *out_len > cap is a failure too. */
typedef int (*vmm_produce_fn)(void *ctx, const uint8_t *in, size_t in_len, uint8_t *out, size_t cap,
                              size_t *out_len);

/* The test producer: NOT a DCAP quote. "tdxmodel-testq-1" (16 B) || SHA-384(payload) || payload, so
 * a test can tell which request's bytes reached it. ctx is unused. */
#define VMM_TEST_QUOTE_MAGIC "tdxmodel-testq-1"
#define VMM_TEST_QUOTE_MAGIC_LEN 16
int vmm_test_producer(void *ctx, const uint8_t *in, size_t in_len, uint8_t *out, size_t cap,
                      size_t *out_len);

/* The guest's notify-vector handler (the downstream driver's IRQ), called after a completion. */
typedef void (*vmm_irq_fn)(void *ctx, unsigned vector);

/* One request's host behaviour (the fault menu, HOST_FAULT_* in tdx_abi.h). */
typedef struct {
    int kind;            /* HOST_FAULT_NONE (QEMU) .. HOST_FAULT_NO_INTERRUPT */
    uint64_t service_ns; /* how long the quote takes; HOST_SERVICE_TIME_US by default */
    uint32_t out_len;    /* oversize_out_len: out_len written; out_len_changes: the second value;
                            0 picks the default, the buffer size (beyond the buffer) */
} vmm_fault;

typedef struct {
    uint64_t vmcalls;      /* TDVMCALLs handled */
    uint64_t get_quotes;   /* GetQuote calls */
    uint64_t accepted;     /* reached H9: a quote task started */
    uint64_t completed;    /* completions written (data, header) */
    uint64_t in_flight;    /* QEMU's num: started, not completed, plus leaked slots */
    uint64_t leaked_slots; /* H7/H8 failures that never gave their slot back */
    uint64_t retries;      /* R10 RETRY answers */
    uint64_t interrupts;   /* notify vectors injected */
    uint64_t last_vector;  /* the last vector injected, 0 if none */
} vmm_counters;

typedef struct vmm_host vmm_host;

/* One host machine's in-flight budget, shared by the VMMs of several TDs (a SharedHost): QEMU's
 * TDX_MAX_GET_QUOTE_REQUEST (16, quote.md §4.1 H6) counted across every TD attached instead of per TD
 * (a modelling choice: QEMU counts per tdx-guest object, one per TD; this is one host-wide quote
 * service with the same limit). Counters are the sums over its TDs. */
typedef struct vmm_slots vmm_slots;
typedef struct {
    uint64_t hosts;          /* VMMs attached now */
    uint64_t in_flight;      /* slots taken now (leaked ones included) */
    uint64_t peak_in_flight; /* the most taken at once */
    uint64_t accepted;       /* GetQuotes that took a slot and started (H9) */
    uint64_t completed;      /* completions written */
    uint64_t retries;        /* R10 RETRY answers to any of its TDs */
} vmm_slots_counters;
vmm_slots *vmm_slots_create(void);
/* Only once no host uses it. */
void vmm_slots_destroy(vmm_slots *s);
void vmm_slots_get_counters(vmm_slots *s, vmm_slots_counters *out);
/* Make h take its in-flight slots from s (before its first GetQuote; -TDXM_EINVAL after one, or
 * when it already shares). Its own counters stay per TD. Destroying h gives back the slots it holds. */
int vmm_host_share_slots(vmm_host *h, vmm_slots *s);

/* Attach a host to the module (and to its clock as the listener). NULL when another VMM is attached,
 * the clock has another listener, or memory runs out. produce NULL: no quote service configured
 * (every GetQuote answers H5). */
vmm_host *vmm_host_create(tdxm_module *m, vmm_clock *clock, vmm_produce_fn produce, void *produce_ctx);
/* Detach and free; requests still pending are dropped (their buffers stay IN_FLIGHT). */
void vmm_host_destroy(vmm_host *h);
vmm_clock *vmm_host_clock(vmm_host *h);
/* The host of a module, or NULL (the guest kernel finds the platform clock this way). */
vmm_host *vmm_host_of(tdxm_module *m);

void vmm_host_set_producer(vmm_host *h, vmm_produce_fn produce, void *produce_ctx);
void vmm_host_set_irq(vmm_host *h, vmm_irq_fn fn, void *ctx);
/* Remove the handler if ctx is its context (a guest kernel going away). */
void vmm_host_clear_irq(vmm_host *h, void *ctx);
/* When the next pending request completes (UINT64_MAX: none will): an idle vCPU waiting for the
 * notify vector sleeps until then. */
uint64_t vmm_host_next_due_ns(vmm_host *h);

/* Faults: push_fault queues one for the next GetQuote; the schedule is used when the queue is empty
 * (cycle: restart at its end; else QEMU afterwards). Each GetQuote consumes one. 0, or -TDXM_EINVAL
 * (bad kind) / -TDXM_ENOMEM. */
int vmm_host_push_fault(vmm_host *h, const vmm_fault *f);
int vmm_host_set_schedule(vmm_host *h, const vmm_fault *faults, size_t n, int cycle);
void vmm_host_clear_faults(vmm_host *h);

/* The VMCALL handler the module calls (tdxm_vmcall_fn). */
void vmm_host_vmcall(void *host, tdxm_vmcall_regs *regs);

/* The guest read bytes [gpa, gpa+len) of shared memory (the out_len_changes fault rewrites out_len
 * after the first read that covers it). gpa may carry the shared bit. */
void vmm_host_guest_read(vmm_host *h, uint64_t gpa, size_t len);

void vmm_host_get_counters(vmm_host *h, vmm_counters *out);
/* The registered notify vector (0 when none) and the APIC ID it goes to. */
unsigned vmm_host_notify_vector(vmm_host *h);

#endif /* VMM_HOST_H */
