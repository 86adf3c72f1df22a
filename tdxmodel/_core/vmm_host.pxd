# Declarations of csrc/vmm_clock.h and csrc/vmm_host.h (the host layer): only what the Cython layer uses.

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from tdxmodel._core.tdx_module cimport tdxm_module

cdef extern from "vmm_clock.h" nogil:
    ctypedef struct vmm_clock:
        pass
    vmm_clock *vmm_clock_create(int real, uint64_t spin_ns)
    void vmm_clock_destroy(vmm_clock *c)
    int vmm_clock_is_real(const vmm_clock *c)
    uint64_t vmm_clock_spin_ns(const vmm_clock *c)
    uint64_t vmm_clock_now_ns(vmm_clock *c)
    void vmm_clock_sleep_ns(vmm_clock *c, uint64_t ns)
    int vmm_clock_advance_ns(vmm_clock *c, uint64_t ns)
    void vmm_clock_poll(vmm_clock *c)

cdef extern from "vmm_host.h" nogil:
    ctypedef int (*vmm_produce_fn)(void *ctx, const uint8_t *inp, size_t in_len, uint8_t *out,
                                   size_t cap, size_t *out_len)
    int vmm_test_producer(void *ctx, const uint8_t *inp, size_t in_len, uint8_t *out, size_t cap,
                          size_t *out_len)

    ctypedef struct vmm_fault:
        int kind
        uint64_t service_ns
        uint32_t out_len

    ctypedef struct vmm_counters:
        uint64_t vmcalls, get_quotes, accepted, completed, in_flight, leaked_slots, retries
        uint64_t interrupts, last_vector

    ctypedef struct vmm_host:
        pass
    ctypedef struct vmm_slots:
        pass
    ctypedef struct vmm_slots_counters:
        uint64_t hosts, in_flight, peak_in_flight, accepted, completed, retries

    vmm_slots *vmm_slots_create()
    void vmm_slots_destroy(vmm_slots *s)
    void vmm_slots_get_counters(vmm_slots *s, vmm_slots_counters *out)
    int vmm_host_share_slots(vmm_host *h, vmm_slots *s)

    vmm_host *vmm_host_create(tdxm_module *m, vmm_clock *clock, vmm_produce_fn produce, void *ctx)
    void vmm_host_destroy(vmm_host *h)
    void vmm_host_set_producer(vmm_host *h, vmm_produce_fn produce, void *ctx)
    int vmm_host_push_fault(vmm_host *h, const vmm_fault *f)
    int vmm_host_set_schedule(vmm_host *h, const vmm_fault *faults, size_t n, int cycle)
    void vmm_host_clear_faults(vmm_host *h)
    void vmm_host_guest_read(vmm_host *h, uint64_t gpa, size_t len)
    void vmm_host_get_counters(vmm_host *h, vmm_counters *out)
    unsigned vmm_host_notify_vector(vmm_host *h)
