# Declarations of csrc/tdx_module.h: only what the Cython layer uses (uvloop's includes/ style).
# Omitted: tdxm_rtmr_unlock (the wrapper uses the checked variant).

from libc.stdint cimport uint32_t, uint8_t, uint64_t

# Sizes as compile-time constants, for array declarations. The values come from the generated
# tdx_abi.h (tdx_abi.pxd declares the same macros as ints, which Cython cannot use as dimensions).
cdef extern from "tdx_abi.h":
    enum:
        SIZEOF_CPUSVN "TDX_CPUSVN_LEN"
        SIZEOF_TEE_TCB_INFO "TDX_TEE_TCB_INFO_LEN"
        SIZEOF_TDINFO "TDX_TDINFO_LEN"
        SIZEOF_MAC_KEY "TDX_MAC_KEY_LEN"
        SIZEOF_MAC "TDX_MAC_LEN"
        SIZEOF_SHA384 "TDX_SHA384_LEN"
        SIZEOF_REPORT "TDX_REPORT_LEN"
        SIZEOF_REPORTDATA "TDX_REPORTDATA_LEN"

cdef extern from "tdx_module.h" nogil:
    ctypedef enum tdxm_page_state_kind:
        TDXM_PAGE_UNMAPPED
        TDXM_PAGE_PRIVATE
        TDXM_PAGE_SHARED
        TDXM_PAGE_PENDING

    ctypedef enum tdxm_exit_kind:
        TDXM_EXIT_NONE
        TDXM_EXIT_EPT_VIOLATION
        TDXM_EXIT_VE

    ctypedef struct tdxm_result:
        uint64_t rax
        int exit
        uint64_t exit_gpa

    ctypedef struct tdxm_config:
        int version_minor
        uint8_t cpusvn[SIZEOF_CPUSVN]
        uint8_t tee_tcb_info[SIZEOF_TEE_TCB_INFO]
        uint8_t tdinfo[SIZEOF_TDINFO]
        uint8_t mac_key[SIZEOF_MAC_KEY]
        int servtd_bound
        size_t memory_pages

    ctypedef struct tdxm_module:
        pass

    ctypedef struct tdxm_vmcall_regs:
        uint64_t r10, r11, r12, r13, r14, r15

    ctypedef struct tdxm_counters:
        uint64_t rtmr_shared_acquired, rtmr_shared_released
        uint64_t rtmr_exclusive_acquired, rtmr_exclusive_released
        uint64_t rtmr_busy
        uint64_t reports, extends, verifies
        uint64_t report_interrupts

    tdxm_module *tdxm_create(const tdxm_config *cfg)
    void tdxm_destroy(tdxm_module *m)

    int tdxm_set_page_state(tdxm_module *m, uint64_t gpa, size_t npages, int state)
    int tdxm_page_state(const tdxm_module *m, uint64_t gpa)
    uint8_t *tdxm_host_ptr(tdxm_module *m, uint64_t gpa, size_t len)
    size_t tdxm_memory_pages(const tdxm_module *m)

    tdxm_result tdxm_tdcall(tdxm_module *m, uint64_t rax, uint64_t rcx, uint64_t rdx, uint64_t r8)
    tdxm_result tdxm_mr_report(tdxm_module *m, uint64_t rcx, uint64_t rdx, uint64_t r8)
    tdxm_result tdxm_vp_vmcall(tdxm_module *m, tdxm_vmcall_regs *regs)
    tdxm_result tdxm_mr_rtmr_extend(tdxm_module *m, uint64_t rcx, uint64_t rdx)
    tdxm_result tdxm_mr_verifyreport(tdxm_module *m, uint64_t rcx)

    uint64_t tdxm_report_direct(tdxm_module *m, uint8_t *out, const uint8_t *reportdata, uint64_t subtype)
    uint64_t tdxm_extend_direct(tdxm_module *m, uint64_t index, const uint8_t *data48)
    uint64_t tdxm_verify_direct(tdxm_module *m, const uint8_t *reportmacstruct)
    size_t tdxm_report_batch(tdxm_module *m, const uint8_t *reportdata, uint8_t *out, uint64_t *status,
                             size_t n)

    size_t tdxm_extend_batch(tdxm_module *m, const uint64_t *index, const uint8_t *data, uint64_t *status,
                             size_t n)
    void tdxm_read_tdinfo(tdxm_module *m, uint8_t *out)
    void tdxm_read_tee_tcb_info(tdxm_module *m, uint8_t *out)
    void tdxm_read_mac_key(const tdxm_module *m, uint8_t *out)
    int tdxm_version_minor(const tdxm_module *m)

    uint64_t tdxm_rtmr_lock_try(tdxm_module *m, int exclusive)
    int tdxm_rtmr_unlock_checked(tdxm_module *m, int exclusive)
    void tdxm_set_rtmr(tdxm_module *m, unsigned index, const uint8_t *value)
    void tdxm_set_tee_tcb_info(tdxm_module *m, const uint8_t *info)

    void tdxm_get_counters(const tdxm_module *m, tdxm_counters *out)

    void tdxm_inject_interrupts(tdxm_module *m, uint32_t n)
    uint32_t tdxm_pending_interrupts(const tdxm_module *m)
    enum:
        TDXM_STEP_REPORT_SNAPSHOT
        TDXM_STEP_REPORT_BUILT
    ctypedef void (*tdxm_step_hook)(void *ctx, int point) noexcept nogil
    void tdxm_set_step_hook(tdxm_module *m, tdxm_step_hook hook, void *ctx)

    void tdxm_floor_hmac224(const uint8_t *key, size_t n, uint8_t *out)
    void tdxm_floor_sha384_512(size_t n, uint8_t *out)
