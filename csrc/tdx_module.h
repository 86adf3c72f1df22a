/*
 * tdx_module.h - the TDX module model: platform, one TD, guest physical memory and the MR leaves.
 *
 * Layer 1 (C core). Facts: shared/reference/tdx-abi.md §4 (cited per function). Every function here
 * is callable without the GIL and never blocks: contention is reported as TDX_OPERAND_BUSY, as the
 * module does (ref §4.8). Thread-safe: any number of threads may call the leaves at once.
 */
#ifndef TDX_MODULE_H
#define TDX_MODULE_H

#include <stddef.h>
#include <stdint.h>
#include "tdx_abi.h"

/* Page states of guest physical memory (one per 4 KiB GFN). A GPA reaches a page only when the page is
 * mapped and the GPA's SHARED bit matches the page's mapping: private pages through the private alias,
 * shared pages through the shared alias (ref §4.3 step 3b). */
typedef enum {
    TDXM_PAGE_UNMAPPED = 0, /* no EPT entry: an access is an EPT-violation TD exit */
    TDXM_PAGE_PRIVATE = 1,  /* mapped in the private (secure) EPT */
    TDXM_PAGE_SHARED = 2,   /* mapped in the shared EPT */
    TDXM_PAGE_PENDING = 3,  /* private but not yet accepted: #VE, or an EPT-violation exit when
                               ATTRIBUTES.SEPT_VE_DISABLE (bit 28) is set (ref §4.3 step 3b) */
} tdxm_page_state_kind; /* not "tdxm_page_state": that is the function below (one C namespace) */

/* How a TDCALL ended: with a status in RAX, or without one because the CPU left the TD (ref §4.3 3b). */
typedef enum {
    TDXM_EXIT_NONE = 0,          /* RAX holds the status */
    TDXM_EXIT_EPT_VIOLATION = 1, /* TD exit to the VMM; RAX not written */
    TDXM_EXIT_VE = 2,            /* #VE injected into the guest; RAX not written */
} tdxm_exit_kind;

typedef struct {
    uint64_t rax;      /* the 64-bit status when exit == TDXM_EXIT_NONE */
    int exit;          /* tdxm_exit_kind */
    uint64_t exit_gpa; /* the faulting GPA when exit != TDXM_EXIT_NONE */
} tdxm_result;

/* Everything a module is built from. The Python layer (tdxmodel.config) builds these bytes once, so the
 * C core and the pure-Python reference start from identical inputs. */
typedef struct {
    int version_minor;                      /* 0: TDX 1.0, 5: TDX 1.5 */
    uint8_t cpusvn[TDX_CPUSVN_LEN];
    uint8_t tee_tcb_info[TDX_TEE_TCB_INFO_LEN]; /* as it appears at TDREPORT 256..494 */
    uint8_t tdinfo[TDX_TDINFO_LEN];             /* as it appears at TDREPORT 512..1023 */
    uint8_t mac_key[TDX_MAC_KEY_LEN];
    int servtd_bound;                       /* 1.5: REPORTTYPE.VERSION = 1 when a service TD is bound */
    size_t memory_pages;                    /* guest physical memory size in 4 KiB pages */
} tdxm_config;

typedef struct tdxm_module tdxm_module;

/* Debug counters (ref: style.md lesson 5). All are monotonic; balance = acquired - released.
 * reports/extends/verifies count leaf invocations (GPA and host-buffer forms, whatever their status;
 * a 1.0 VERIFYREPORT, which does not exist there, is not counted), as the reference model does. */
typedef struct {
    uint64_t rtmr_shared_acquired, rtmr_shared_released;
    uint64_t rtmr_exclusive_acquired, rtmr_exclusive_released;
    uint64_t rtmr_busy;       /* lock attempts that answered TDX_OPERAND_BUSY */
    uint64_t reports, extends, verifies;
    uint64_t report_interrupts; /* 1.5 REPORTs left at step 6 and executed again */
} tdxm_counters;

/* TDG.VP.VMCALL (TDCALL leaf 0, quote.md §3, ref §5.1): the registers the TD exposes to the VMM.
 * In: r10 (0 = a standard GHCI call), r11 (sub-function), r12..r15 (its inputs). Out: r10 (the
 * TDVMCALL status) and r11..r14 (sub-function outputs). */
typedef struct {
    uint64_t r10, r11, r12, r13, r14, r15;
} tdxm_vmcall_regs;

/* The VMM behind TDG.VP.VMCALL (the host layer, csrc/vmm_host.h, installs itself here). It handles
 * regs in place; it may call back into the module for guest memory only. */
typedef void (*tdxm_vmcall_fn)(void *vmm, tdxm_vmcall_regs *regs);

/* Lifecycle. tdxm_create returns NULL when memory cannot be allocated, or when cfg->memory_pages is 0
 * or reaches the SHARED bit (GPAW 48, ref §4.3). */
tdxm_module *tdxm_create(const tdxm_config *cfg);
void tdxm_destroy(tdxm_module *m);

/* Guest physical memory (host side). gpa may carry the SHARED bit, which is ignored here.
 * Return 0, or -TDXM_EINVAL when the range is outside guest memory or misaligned. */
int tdxm_set_page_state(tdxm_module *m, uint64_t gpa, size_t npages, int state);
int tdxm_page_state(const tdxm_module *m, uint64_t gpa);           /* -TDXM_EINVAL if out of range */
uint8_t *tdxm_host_ptr(tdxm_module *m, uint64_t gpa, size_t len);  /* NULL if out of range */
size_t tdxm_memory_pages(const tdxm_module *m);

/* The leaves, exactly as ref §4.3 (REPORT), §4.6 (RTMR.EXTEND), §4.7 (VERIFYREPORT) order their checks.
 * tdxm_tdcall dispatches on RAX as ref §4.1 describes for the module's version. */
tdxm_result tdxm_tdcall(tdxm_module *m, uint64_t rax, uint64_t rcx, uint64_t rdx, uint64_t r8);
tdxm_result tdxm_mr_report(tdxm_module *m, uint64_t rcx, uint64_t rdx, uint64_t r8);
/* TDG.VP.VMCALL: the module passes regs to the VMM and resumes the TD with RAX = TDX_SUCCESS. With no
 * VMM attached every sub-function answers SUBFUNC_UNSUPPORTED, KVM's default (quote.md §3.1). */
tdxm_result tdxm_vp_vmcall(tdxm_module *m, tdxm_vmcall_regs *regs);
/* Attach (fn != NULL) or detach the VMM. Returns 0, or -TDXM_EBUSY when another VMM is attached. */
int tdxm_set_vmm(tdxm_module *m, tdxm_vmcall_fn fn, void *vmm);
void *tdxm_vmm(const tdxm_module *m); /* the attached VMM's context, or NULL */
tdxm_result tdxm_mr_rtmr_extend(tdxm_module *m, uint64_t rcx, uint64_t rdx);
tdxm_result tdxm_mr_verifyreport(tdxm_module *m, uint64_t rcx);

/* The same leaves on host buffers instead of GPAs: the address checks are skipped, everything after
 * them (R8/index checks, lock, build, MAC) is identical. Used by the convenience API and the batch path.
 * tdxm_report_direct writes out[1024] on TDX_SUCCESS; on a failure out is untouched (or zeroed, when
 * an interrupted attempt had begun filling it). */
uint64_t tdxm_report_direct(tdxm_module *m, uint8_t *out, const uint8_t *reportdata, uint64_t subtype);
uint64_t tdxm_extend_direct(tdxm_module *m, uint64_t index, const uint8_t *data48);
uint64_t tdxm_verify_direct(tdxm_module *m, const uint8_t *reportmacstruct);

/* Batch: n reports, reportdata[i*64], out[i*1024] (a failed row is zeroed), status[i]. Each report takes the RTMR lock shared,
 * exactly as one leaf call does. Returns the number of reports that succeeded. */
size_t tdxm_report_batch(tdxm_module *m, const uint8_t *reportdata, uint8_t *out, uint64_t *status,
                         size_t n);

/* Batch: n extends in order, index[i] with data[i*48], status[i] each (what tdxm_extend_direct answers:
 * BUSY rows changed nothing). Returns the number that succeeded. */
size_t tdxm_extend_batch(tdxm_module *m, const uint64_t *index, const uint8_t *data, uint64_t *status,
                         size_t n);

/* State inspection: a consistent snapshot, never one torn by a concurrent extend or set_rtmr. It does
 * not take the RTMR lock (a caller may hold it): writers bump a sequence counter and readers retry. */
void tdxm_read_tdinfo(tdxm_module *m, uint8_t out[TDX_TDINFO_LEN]);
void tdxm_read_tee_tcb_info(tdxm_module *m, uint8_t out[TDX_TEE_TCB_INFO_LEN]);
void tdxm_read_mac_key(const tdxm_module *m, uint8_t out[TDX_MAC_KEY_LEN]);
int tdxm_version_minor(const tdxm_module *m);

/* The RTMR lock itself (ref §4.8): REPORT takes it shared, EXTEND exclusive, neither waits.
 * Exposed so that tests and the driver model can hold it. Returns TDX_SUCCESS or
 * TDX_OPERAND_BUSY | TDX_OPERAND_ID_RTMR. */
uint64_t tdxm_rtmr_lock_try(tdxm_module *m, int exclusive);
void tdxm_rtmr_unlock(tdxm_module *m, int exclusive);
/* The same release, checked: 0, or -TDXM_EINVAL (nothing changed) when the lock is not held in that
 * mode, so a stray unlock from Python cannot corrupt the lock word. */
int tdxm_rtmr_unlock_checked(tdxm_module *m, int exclusive);

/* Host-side state sync (not a TDX operation): set RTMR[index] (index < TDX_NUM_RTMRS, else ignored) to
 * value, waiting for any extender and then for the exclusive RTMR lock (spinning with sched_yield),
 * with every cache refreshed (TEE_INFO_HASH, the MAC midstate). Never call it while holding the lock. */
void tdxm_set_rtmr(tdxm_module *m, unsigned index, const uint8_t value[TDX_SHA384_LEN]);
/* Host-side state sync: the platform moved to another TCB position (its TEE_TCB_SVN, ref §4.5), so
 * TEE_TCB_INFO (and its hash in every later TDREPORT) becomes info, published as set_rtmr publishes. */
void tdxm_set_tee_tcb_info(tdxm_module *m, const uint8_t info[TDX_TEE_TCB_INFO_LEN]);

void tdxm_get_counters(const tdxm_module *m, tdxm_counters *out);

/* Interrupts pending for the TD (ref §4.3 step 6, 1.5 only): each REPORT that passes step 5 while n > 0
 * consumes one and leaves without writing RAX; the guest executes the TDCALL again, so every caller
 * here (the GPA leaf, the host-buffer form, the batch) re-executes it transparently. 1.0 never checks. */
void tdxm_inject_interrupts(tdxm_module *m, uint32_t n);
uint32_t tdxm_pending_interrupts(const tdxm_module *m);

/* Test hook: the points inside a REPORT at which tests interleave other work deterministically.
 * SNAPSHOT: TDINFO and TEE_INFO_HASH are taken (1.5.01 has released the RTMR lock here, 1.0 still
 * holds it); BUILT: the MAC is done (neither version holds it), before the copy-out (ref §4.3). The
 * hook runs in the reporting thread; NULL removes it. */
enum tdxm_step { TDXM_STEP_REPORT_SNAPSHOT = 1, TDXM_STEP_REPORT_BUILT = 2 };
typedef void (*tdxm_step_hook)(void *ctx, int point);
void tdxm_set_step_hook(tdxm_module *m, tdxm_step_hook hook, void *ctx);

/* Floors measured in the same benchmark run (benchmarks/RESULTS.md): one HMAC-SHA-256 over 224 bytes with a
 * precomputed key state, and one SHA-384 over 512 bytes, each repeated n times. */
void tdxm_floor_hmac224(const uint8_t key[TDX_MAC_KEY_LEN], size_t n, uint8_t out[TDX_MAC_LEN]);
void tdxm_floor_sha384_512(size_t n, uint8_t out[TDX_SHA384_LEN]);

#endif /* TDX_MODULE_H */
