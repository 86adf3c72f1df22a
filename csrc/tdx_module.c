/*
 * tdx_module.c - the TDX module model: guest memory, the RTMR lock and the MR leaves (tdx_module.h).
 *
 * Layer 1 (C core). Facts: shared/reference/tdx-abi.md §4 ("ref §N"). Written from the reference's
 * step tables; no module source is reproduced.
 *
 * tdxmodel models only the MR leaves (TDG.MR.REPORT, TDG.MR.RTMR.EXTEND, TDG.MR.VERIFYREPORT): every
 * other TDCALL leaf answers TDX_OPERAND_INVALID with operand RAX, as an unknown leaf does (ref §4.1).
 *
 * Concurrency. The RTMR lock (ref §4.8): REPORT takes it shared, EXTEND exclusive, and neither waits;
 * a conflicting caller gets OPERAND_BUSY. The module's own lock is one word; ours is distributed so
 * that readers on different cores never write the same cache line (two report callers must
 * scale): each thread announces itself in its own reader slot, and a writer claims one word and then
 * checks every slot. The protocol (rtmr_lock_shared / rtmr_lock_exclusive) keeps the one-word lock's
 * answers exactly: of a reader and a writer that overlap, exactly one wins. What an extend changes
 * (the RTMRs, TEE_INFO_HASH, the MAC midstate) is double-buffered: the extender prepares the
 * inactive copy without the lock and flips `active` with it held exclusive; reports read the active
 * copy only with it held shared. Host snapshots (tdxm_read_tdinfo) must not take the lock (a test may
 * hold it), so the flip also bumps a sequence counter and readers retry a torn copy (a seqlock).
 */
#include "tdx_module.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "tdx_crypto.h"

/* The writer word of the RTMR lock. */
#define RTMR_WRITER_FREE 0
#define RTMR_WRITER_TRYING 1 /* a writer is checking the reader slots; readers wait, then retry */
#define RTMR_WRITER_HELD 2

/* Reader slots: one cache line each; a thread always uses the same slot (assigned round-robin). */
#define RTMR_READER_SLOTS 64
#define CACHE_LINE 64

typedef struct {
    _Atomic int32_t entering; /* readers between announcing themselves and checking the writer */
    _Atomic int32_t holders;  /* shared holders that acquired through this slot (may go negative
                                 in one slot when a holder releases from another thread) */
    _Atomic uint64_t shared_acquired, shared_released, reports; /* debug counters, summed on read */
} __attribute__((aligned(CACHE_LINE))) rtmr_reader_slot;

/* REPORTMACSTRUCT bytes 0..127 (REPORTTYPE .. TEE_INFO_HASH) only change with an extend, and are
 * exactly two SHA-256 blocks, so the HMAC inner state after them is cached; a report hashes only
 * bytes 128..223 (REPORTDATA and the reserved zeros). */
#define MAC_PREFIX_LEN TDR_FIELD_REPORTDATA_OFF
#define MAC_TAIL_LEN (TDX_MAC_COVERED_LEN - MAC_PREFIX_LEN)
#define RTMRS_LEN (TDX_NUM_RTMRS * TDX_SHA384_LEN)
#define TDINFO_RTMR0 (TDR_OFF_RTMR0 - TDR_OFF_TDINFO)

/* The bytes of a TDREPORT an RTMR extend changes, and the MAC midstate over them. */
typedef struct {
    uint8_t head[MAC_PREFIX_LEN];  /* TDREPORT 0..127: REPORTTYPE, CPUSVN, TEE_TCB_INFO_HASH, TEE_INFO_HASH */
    uint8_t rtmrs[RTMRS_LEN];      /* TDINFO RTMR0..3 (TDREPORT 720..911) */
    SHA256_CTX mac_after_prefix;   /* HMAC inner state after head */
} __attribute__((aligned(CACHE_LINE))) tdinfo_cache;

struct tdxm_module {
    /* Immutable after create (tee_tcb_info: but for tdxm_set_tee_tcb_info). */
    int version_minor;
    int sept_ve_disable;               /* TDINFO.ATTRIBUTES bit 28 (ref §4.3 step 3b) */
    uint8_t cpusvn[TDX_CPUSVN_LEN];
    uint8_t tee_tcb_info[TDX_TEE_TCB_INFO_LEN];
    uint8_t mac_key[TDX_MAC_KEY_LEN];
    tdxc_hmac_key mac;                 /* HMAC ipad/opad states of mac_key */
    size_t memory_pages;
    uint8_t *memory;                   /* memory_pages * TDX_PAGE_SIZE bytes */
    uint8_t *page_state;               /* tdxm_page_state per GFN; __atomic accesses */

    /* The RTMR lock: reader slots (their own cache lines) and the writer word; the seqlock of host
     * snapshots. */
    rtmr_reader_slot readers[RTMR_READER_SLOTS];
    _Atomic int32_t rtmr_writer __attribute__((aligned(CACHE_LINE)));
    _Atomic uint64_t state_seq;

    /* What an extend changes, double-buffered: reports read caches[active] with the lock held shared;
     * an extender prepares the other one without the lock and publishes it by flipping `active` with
     * the lock held exclusive (and an odd state_seq). Everything else of a TDREPORT is immutable and
     * lives in report_template, which reporting cores therefore never miss on. */
    uint8_t report_template[TDX_REPORT_LEN];   /* the immutable bytes; zero REPORTDATA and MAC */
    tdinfo_cache caches[2];
    _Atomic int active;
    _Atomic int extend_prep;                   /* 1 while an extender owns the inactive cache */
    _Atomic uint32_t pending_interrupts;       /* ref §4.3 step 6 (1.5): consumed one per check */
    _Atomic(tdxm_step_hook) step_hook;         /* tests only: called at the points of tdxm_step */
    void *step_hook_ctx;

    _Atomic uint64_t rtmr_exclusive_acquired __attribute__((aligned(CACHE_LINE)));
    _Atomic uint64_t rtmr_exclusive_released;
    _Atomic uint64_t rtmr_busy, extends, verifies, report_interrupts;

    /* The VMM behind TDG.VP.VMCALL: set by the host layer, read by every VMCALL. */
    _Atomic(tdxm_vmcall_fn) vmcall_fn;
    void *_Atomic vmm;
};

#define COUNT(m, field) atomic_fetch_add_explicit(&(m)->field, 1, memory_order_relaxed)
/* Hot counters live in the caller's reader slot, so two reporting cores do not share a line. */
#define SLOT_COUNT(slot, field) atomic_fetch_add_explicit(&(slot)->field, 1, memory_order_relaxed)

static _Atomic unsigned next_reader_slot;
static __thread int my_reader_slot = -1;

static rtmr_reader_slot *reader_slot(tdxm_module *m)
{
    if (my_reader_slot < 0)
        my_reader_slot = (int)(atomic_fetch_add_explicit(&next_reader_slot, 1, memory_order_relaxed)
                               % RTMR_READER_SLOTS);
    return &m->readers[my_reader_slot];
}

static tdxm_result status_result(uint64_t status)
{
    tdxm_result r = {status, TDXM_EXIT_NONE, 0};
    return r;
}

static uint64_t operand_invalid(unsigned operand_id)
{
    return TDX_OPERAND_INVALID | operand_id;
}

/* ------------------------------------------------------------------------------------------------
 * Caches (ref §4.5)
 * ------------------------------------------------------------------------------------------------ */

/* Fill `next` for RTMR values `rtmrs`: TEE_INFO_HASH = SHA-384 of the whole TDINFO (ref §4.5) and the
 * MAC midstate after the 128-byte head. The real 1.5 module invalidates its cached TEE_INFO_HASH on
 * every extend and recomputes it at the next report (1.0 hashes on every report); computing it once
 * per extend, before the extend is published, gives every later report the same bytes, so the
 * difference is not observable (ref §4.5). `head` carries the immutable head fields over. */
static void fill_cache(const tdxm_module *m, const uint8_t head[MAC_PREFIX_LEN],
                       const uint8_t rtmrs[RTMRS_LEN], tdinfo_cache *next)
{
    uint8_t tdinfo[TDX_TDINFO_LEN];

    memcpy(tdinfo, m->report_template + TDR_OFF_TDINFO, TDX_TDINFO_LEN);
    memcpy(tdinfo + TDINFO_RTMR0, rtmrs, RTMRS_LEN);
    if (next->rtmrs != rtmrs)
        memcpy(next->rtmrs, rtmrs, RTMRS_LEN);
    if (next->head != head)
        memcpy(next->head, head, MAC_PREFIX_LEN);
    tdxc_sha384(tdinfo, TDX_TDINFO_LEN, next->head + TDR_FIELD_TEE_INFO_HASH_OFF);
    next->mac_after_prefix = m->mac.inner;
    SHA256_Update(&next->mac_after_prefix, next->head, MAC_PREFIX_LEN);
}

static void state_write_begin(tdxm_module *m)
{
    atomic_fetch_add_explicit(&m->state_seq, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
}

static void state_write_end(tdxm_module *m)
{
    atomic_fetch_add_explicit(&m->state_seq, 1, memory_order_release);
}

static void step(tdxm_module *m, int point)
{
    tdxm_step_hook hook = atomic_load_explicit(&m->step_hook, memory_order_acquire);

    if (hook != NULL)
        hook(m->step_hook_ctx, point);
}

void tdxm_set_step_hook(tdxm_module *m, tdxm_step_hook hook, void *ctx)
{
    atomic_store_explicit(&m->step_hook, NULL, memory_order_release);
    m->step_hook_ctx = ctx;
    atomic_store_explicit(&m->step_hook, hook, memory_order_release);
}

void tdxm_inject_interrupts(tdxm_module *m, uint32_t n)
{
    atomic_store(&m->pending_interrupts, n);
}

uint32_t tdxm_pending_interrupts(const tdxm_module *m)
{
    return atomic_load(&((tdxm_module *)m)->pending_interrupts);
}

/* ref §4.3 step 6 (1.5 only): an interrupt pending at the check makes the module leave the TDCALL
 * without writing RAX or advancing RIP, so the guest executes it again from step 1. */
static int interrupt_pending(tdxm_module *m)
{
    uint32_t n = atomic_load_explicit(&m->pending_interrupts, memory_order_relaxed);

    if (m->version_minor == 0)
        return 0;
    while (n != 0)
        if (atomic_compare_exchange_weak(&m->pending_interrupts, &n, n - 1)) {
            COUNT(m, report_interrupts);
            return 1;
        }
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Lifecycle
 * ------------------------------------------------------------------------------------------------ */

tdxm_module *tdxm_create(const tdxm_config *cfg)
{
    tdxm_module *m;
    uint64_t attributes = 0;
    uint8_t *tpl;

    if (cfg == NULL || cfg->memory_pages == 0 || cfg->memory_pages > SIZE_MAX / TDX_PAGE_SIZE)
        return NULL;
    /* Guest memory must be reachable below the SHARED bit (GPAW 48, ref §4.3). */
    if ((uint64_t)cfg->memory_pages > TDX_GPA_SHARED_BIT / TDX_PAGE_SIZE)
        return NULL;
    /* aligned: the reader slots must each own a cache line */
    if (posix_memalign((void **)&m, CACHE_LINE, sizeof *m) != 0)
        return NULL;
    memset(m, 0, sizeof *m);
    m->memory = calloc(cfg->memory_pages, TDX_PAGE_SIZE);
    m->page_state = calloc(cfg->memory_pages, 1); /* TDXM_PAGE_UNMAPPED == 0 */
    if (m->memory == NULL || m->page_state == NULL) {
        tdxm_destroy(m);
        return NULL;
    }
    m->memory_pages = cfg->memory_pages;
    m->version_minor = cfg->version_minor;
    memcpy(m->cpusvn, cfg->cpusvn, TDX_CPUSVN_LEN);
    memcpy(m->tee_tcb_info, cfg->tee_tcb_info, TDX_TEE_TCB_INFO_LEN);
    memcpy(m->mac_key, cfg->mac_key, TDX_MAC_KEY_LEN);
    for (int i = 7; i >= 0; i--)
        attributes = (attributes << 8) | cfg->tdinfo[(TDR_OFF_ATTRIBUTES - TDR_OFF_TDINFO) + i];
    m->sept_ve_disable = (attributes & TDX_ATTRIBUTES_SEPT_VE_DISABLE) != 0;
    tdxc_hmac_key_init(&m->mac, m->mac_key, TDX_MAC_KEY_LEN);
    atomic_init(&m->rtmr_writer, RTMR_WRITER_FREE);
    atomic_init(&m->state_seq, 0);

    /* The constant parts of every TDREPORT (ref §4.3, §4.4); calloc left every reserved byte 0. */
    tpl = m->report_template;
    tpl[TDR_OFF_REPORTTYPE + 0] = TDX_REPORTTYPE_TYPE;
    tpl[TDR_OFF_REPORTTYPE + 1] = TDX_REPORTTYPE_SUBTYPE;
    /* VERSION is 0 on 1.0, and on 1.5 without a bound service TD (ref §4.3). */
    tpl[TDR_OFF_REPORTTYPE + 2] =
        (cfg->version_minor != 0 && cfg->servtd_bound) ? TDX_REPORTTYPE_VERSION_SERVTD_BOUND : 0;
    memcpy(tpl + TDR_OFF_CPUSVN, m->cpusvn, TDX_CPUSVN_LEN);
    /* TEE_TCB_INFO changes only by tdxm_set_tee_tcb_info, so its hash is computed once (ref §4.5:
     * 239 bytes). */
    tdxc_sha384(m->tee_tcb_info, TDX_TEE_TCB_INFO_LEN, tpl + TDR_OFF_TEE_TCB_INFO_HASH);
    memcpy(tpl + TDR_OFF_TEE_TCB_INFO, m->tee_tcb_info, TDX_TEE_TCB_INFO_LEN);
    memcpy(tpl + TDR_OFF_TDINFO, cfg->tdinfo, TDX_TDINFO_LEN);
    fill_cache(m, tpl, cfg->tdinfo + TDINFO_RTMR0, &m->caches[0]);
    memset(tpl + TDR_OFF_TEE_INFO_HASH, 0, TDX_SHA384_LEN); /* mutable: lives in the caches */
    memset(tpl + TDR_OFF_RTMR0, 0, RTMRS_LEN);
    atomic_init(&m->active, 0);
    atomic_init(&m->extend_prep, 0);
    atomic_init(&m->pending_interrupts, 0);
    atomic_init(&m->step_hook, NULL);
    return m;
}

void tdxm_destroy(tdxm_module *m)
{
    if (m == NULL)
        return;
    free(m->memory);
    free(m->page_state);
    memset(m->mac_key, 0, sizeof m->mac_key);
    free(m);
}

/* ------------------------------------------------------------------------------------------------
 * Guest physical memory
 * ------------------------------------------------------------------------------------------------ */

size_t tdxm_memory_pages(const tdxm_module *m)
{
    return m->memory_pages;
}

int tdxm_set_page_state(tdxm_module *m, uint64_t gpa, size_t npages, int state)
{
    uint64_t addr = gpa & ~(uint64_t)TDX_GPA_SHARED_BIT;
    uint64_t gfn;

    if (state < TDXM_PAGE_UNMAPPED || state > TDXM_PAGE_PENDING)
        return -TDXM_EINVAL;
    if ((addr & TDX_GPA_INVALID_MASK) || addr % TDX_PAGE_SIZE)
        return -TDXM_EINVAL;
    gfn = addr / TDX_PAGE_SIZE;
    if (gfn > m->memory_pages || npages > m->memory_pages - gfn)
        return -TDXM_EINVAL;
    for (size_t i = 0; i < npages; i++)
        __atomic_store_n(&m->page_state[gfn + i], (uint8_t)state, __ATOMIC_RELAXED);
    return 0;
}

int tdxm_page_state(const tdxm_module *m, uint64_t gpa)
{
    uint64_t addr = gpa & ~(uint64_t)TDX_GPA_SHARED_BIT;

    if ((addr & TDX_GPA_INVALID_MASK) || addr / TDX_PAGE_SIZE >= m->memory_pages)
        return -TDXM_EINVAL;
    return __atomic_load_n(&m->page_state[addr / TDX_PAGE_SIZE], __ATOMIC_RELAXED);
}

uint8_t *tdxm_host_ptr(tdxm_module *m, uint64_t gpa, size_t len)
{
    uint64_t addr = gpa & ~(uint64_t)TDX_GPA_SHARED_BIT;
    uint64_t size = (uint64_t)m->memory_pages * TDX_PAGE_SIZE;

    if ((addr & TDX_GPA_INVALID_MASK) || addr > size || len > size - addr)
        return NULL;
    return m->memory + addr;
}

/* The EPT walk of one access (ref §4.3 step 3b). The caller has already rejected GPAs with invalid
 * bits, and every MR-leaf operand lies within one page (its alignment divides TDX_PAGE_SIZE).
 * Returns the host pointer, or NULL with *exit filled: an EPT-violation TD exit when the GFN is
 * outside memory, unmapped, or mapped through the other alias; for a PENDING page reached through the
 * private alias a #VE, or an EPT-violation exit when SEPT_VE_DISABLE is set. */
static uint8_t *gpa_walk(tdxm_module *m, uint64_t gpa, tdxm_result *exit)
{
    int shared = (gpa & TDX_GPA_SHARED_BIT) != 0;
    uint64_t gfn = (gpa & ~(uint64_t)TDX_GPA_SHARED_BIT) / TDX_PAGE_SIZE;
    int state = TDXM_PAGE_UNMAPPED;

    if (gfn < m->memory_pages)
        state = __atomic_load_n(&m->page_state[gfn], __ATOMIC_RELAXED);
    if (state == (shared ? TDXM_PAGE_SHARED : TDXM_PAGE_PRIVATE))
        return m->memory + (gpa & ~(uint64_t)TDX_GPA_SHARED_BIT);
    exit->rax = 0;
    exit->exit_gpa = gpa;
    exit->exit = (!shared && state == TDXM_PAGE_PENDING && !m->sept_ve_disable) ? TDXM_EXIT_VE
                                                                               : TDXM_EXIT_EPT_VIOLATION;
    return NULL;
}

/* ------------------------------------------------------------------------------------------------
 * The RTMR lock (ref §4.8)
 * ------------------------------------------------------------------------------------------------ */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Shared: announce in our slot, then look at the writer word (both seq_cst, so a writer that claimed
 * the word before our look sees our announcement in its scan, and one that claimed it after sees our
 * holder count). A writer still checking the slots has not won yet: step aside, wait until it
 * decides, and try again, so a writer that then fails costs us nothing, as with a one-word lock. */
static uint64_t rtmr_lock_shared(tdxm_module *m)
{
    rtmr_reader_slot *slot = reader_slot(m);

    for (;;) {
        atomic_fetch_add(&slot->entering, 1);
        int writer = atomic_load(&m->rtmr_writer);
        if (writer == RTMR_WRITER_FREE) {
            atomic_fetch_add(&slot->holders, 1);
            atomic_fetch_sub_explicit(&slot->entering, 1, memory_order_release);
            SLOT_COUNT(slot, shared_acquired);
            return TDX_SUCCESS;
        }
        atomic_fetch_sub(&slot->entering, 1);
        if (writer == RTMR_WRITER_HELD) {
            COUNT(m, rtmr_busy);
            return TDX_OPERAND_BUSY | TDX_OPERAND_ID_RTMR;
        }
        while (atomic_load_explicit(&m->rtmr_writer, memory_order_acquire) == RTMR_WRITER_TRYING)
            cpu_relax();
    }
}

/* The sum of shared holders, once every reader caught mid-announcement has settled. */
static int64_t settled_shared_holders(tdxm_module *m)
{
    int64_t holders = 0;

    for (int i = 0; i < RTMR_READER_SLOTS; i++) {
        rtmr_reader_slot *slot = &m->readers[i];
        for (unsigned spins = 0; atomic_load(&slot->entering) != 0; spins++) {
            if (spins > 1000)
                sched_yield(); /* the reader was preempted between two instructions */
            else
                cpu_relax();
        }
        holders += atomic_load(&slot->holders);
    }
    return holders;
}

/* Exclusive: claim the writer word, then check that no reader holds the lock. */
static uint64_t rtmr_try_claim_exclusive(tdxm_module *m)
{
    int expected = RTMR_WRITER_FREE;

    if (!atomic_compare_exchange_strong(&m->rtmr_writer, &expected, RTMR_WRITER_TRYING))
        return TDX_OPERAND_BUSY | TDX_OPERAND_ID_RTMR;
    if (settled_shared_holders(m) != 0) {
        atomic_store(&m->rtmr_writer, RTMR_WRITER_FREE);
        return TDX_OPERAND_BUSY | TDX_OPERAND_ID_RTMR;
    }
    atomic_store(&m->rtmr_writer, RTMR_WRITER_HELD);
    return TDX_SUCCESS;
}

static uint64_t rtmr_lock_exclusive(tdxm_module *m)
{
    uint64_t status = rtmr_try_claim_exclusive(m);

    if (status == TDX_SUCCESS)
        COUNT(m, rtmr_exclusive_acquired);
    else
        COUNT(m, rtmr_busy);
    return status;
}

static int rtmr_unlock_shared(tdxm_module *m)
{
    rtmr_reader_slot *slot = reader_slot(m);

    /* The usual case reads only our own slot; a release from another thread than the acquire
     * (possible from Python) sums every slot to tell a real holder from a bogus release. */
    if (atomic_load_explicit(&slot->holders, memory_order_relaxed) <= 0) {
        int64_t holders = 0;
        for (int i = 0; i < RTMR_READER_SLOTS; i++)
            holders += atomic_load_explicit(&m->readers[i].holders, memory_order_relaxed);
        if (holders <= 0)
            return -TDXM_EINVAL;
    }
    atomic_fetch_sub_explicit(&slot->holders, 1, memory_order_release);
    SLOT_COUNT(slot, shared_released);
    return 0;
}

static int rtmr_unlock_exclusive(tdxm_module *m)
{
    int expected = RTMR_WRITER_HELD;

    if (atomic_compare_exchange_strong_explicit(&m->rtmr_writer, &expected, RTMR_WRITER_FREE,
                                                memory_order_release, memory_order_relaxed)) {
        COUNT(m, rtmr_exclusive_released);
        return 0;
    }
    return -TDXM_EINVAL;
}

uint64_t tdxm_rtmr_lock_try(tdxm_module *m, int exclusive)
{
    return exclusive ? rtmr_lock_exclusive(m) : rtmr_lock_shared(m);
}

int tdxm_rtmr_unlock_checked(tdxm_module *m, int exclusive)
{
    return exclusive ? rtmr_unlock_exclusive(m) : rtmr_unlock_shared(m);
}

void tdxm_rtmr_unlock(tdxm_module *m, int exclusive)
{
    (void)tdxm_rtmr_unlock_checked(m, exclusive);
}

/* ------------------------------------------------------------------------------------------------
 * TDG.MR.REPORT (leaf 4, ref §4.3)
 * ------------------------------------------------------------------------------------------------ */

/* Steps 5-7 into out (which must not overlap reportdata), the RTMR lock window per version (ref §4.3
 * step 5, "Lock window"): 1.5.01 takes the lock shared only around its snapshot of TDINFO and
 * TEE_INFO_HASH, checks for an interrupt (step 6) and has the CPU build the MAC without it; 1.0 keeps
 * it until the CPU has built the report (step 7). Neither holds it for the copy-out (steps 8-9).
 * Returns TDX_SUCCESS, BUSY, or TDXM_STATUS_INTERRUPTED (nothing written to RAX: re-execute). */
#define TDXM_STATUS_INTERRUPTED 1 /* never a TDX status: bit 63 clear and class 0 */
static uint64_t report_steps_5_7(tdxm_module *m, const uint8_t reportdata[TDX_REPORTDATA_LEN],
                                 uint8_t out[TDX_REPORT_LEN])
{
    const tdinfo_cache *c;
    SHA256_CTX inner;
    uint64_t status = rtmr_lock_shared(m);                        /* step 5 */

    if (status != TDX_SUCCESS)
        return status;
    c = &m->caches[atomic_load_explicit(&m->active, memory_order_acquire)];
    memcpy(out, m->report_template, TDX_REPORT_LEN);              /* the snapshot */
    memcpy(out, c->head, MAC_PREFIX_LEN);
    memcpy(out + TDR_OFF_RTMR0, c->rtmrs, RTMRS_LEN);
    memcpy(out + TDR_OFF_REPORTDATA, reportdata, TDX_REPORTDATA_LEN);
    inner = c->mac_after_prefix;
    if (m->version_minor != 0) {
        rtmr_unlock_shared(m);                                    /* 1.5.01: released with the snapshot */
        step(m, TDXM_STEP_REPORT_SNAPSHOT);
        if (interrupt_pending(m))                                 /* step 6 */
            return TDXM_STATUS_INTERRUPTED;
    } else {
        step(m, TDXM_STEP_REPORT_SNAPSHOT);
    }
    SHA256_Update(&inner, out + MAC_PREFIX_LEN, MAC_TAIL_LEN);    /* step 7: the MAC */
    tdxc_hmac_finish(&m->mac, &inner, out + TDR_OFF_MAC);
    if (m->version_minor == 0)
        rtmr_unlock_shared(m);                                    /* 1.0: after SEAMREPORT */
    step(m, TDXM_STEP_REPORT_BUILT);
    return TDX_SUCCESS;
}

tdxm_result tdxm_mr_report(tdxm_module *m, uint64_t rcx, uint64_t rdx, uint64_t r8)
{
    uint8_t reportdata[TDX_REPORTDATA_LEN];
    uint8_t report[TDX_REPORT_LEN];
    const uint8_t *reportdata_host;
    uint8_t *out_host;
    tdxm_result r;
    uint64_t status;

    SLOT_COUNT(reader_slot(m), reports);
again:
    if (rcx % TDX_REPORT_ALIGN)                                   /* step 1 */
        return status_result(operand_invalid(TDX_OPERAND_ID_RCX));
    if (rdx % TDX_REPORTDATA_ALIGN)                               /* step 2 */
        return status_result(operand_invalid(TDX_OPERAND_ID_RDX));
    if (rdx & TDX_GPA_INVALID_MASK)                               /* step 3 */
        return status_result(operand_invalid(TDX_OPERAND_ID_RDX));
    reportdata_host = gpa_walk(m, rdx, &r);                       /* step 3b: private or shared */
    if (reportdata_host == NULL)
        return r;
    if (r8 != 0)                                                  /* step 4: full 64-bit compare */
        return status_result(operand_invalid(TDX_OPERAND_ID_R8));
    memcpy(reportdata, reportdata_host, TDX_REPORTDATA_LEN);
    status = report_steps_5_7(m, reportdata, report);             /* steps 5-7, into a temporary */
    if (status == TDXM_STATUS_INTERRUPTED)
        goto again;                                               /* the guest executes TDCALL again */
    if (status != TDX_SUCCESS)
        return status_result(status);
    if (rcx & TDX_GPA_INVALID_MASK)                               /* step 8 */
        return status_result(operand_invalid(TDX_OPERAND_ID_RCX));
    out_host = gpa_walk(m, rcx, &r);                              /* private or shared */
    if (out_host == NULL)
        return r;
    memcpy(out_host, report, TDX_REPORT_LEN);                     /* step 9: the only write */
    return status_result(TDX_SUCCESS);
}

uint64_t tdxm_report_direct(tdxm_module *m, uint8_t *out, const uint8_t *reportdata, uint64_t subtype)
{
    uint8_t reportdata_copy[TDX_REPORTDATA_LEN];
    uint64_t status;
    int interrupted = 0;

    SLOT_COUNT(reader_slot(m), reports);
    if (subtype != 0)                                             /* step 4 */
        return operand_invalid(TDX_OPERAND_ID_R8);
    /* Copied first: a caller may pass reportdata inside out (6.16 keeps it at buf+128, ref §2.5). */
    memcpy(reportdata_copy, reportdata, TDX_REPORTDATA_LEN);
    for (;;) {                                                    /* steps 5-7; nothing fails after */
        status = report_steps_5_7(m, reportdata_copy, out);
        if (status != TDXM_STATUS_INTERRUPTED)
            break;
        interrupted = 1;                                          /* executed again */
    }
    if (status != TDX_SUCCESS && interrupted) /* an interrupted attempt had begun filling out */
        memset(out, 0, TDX_REPORT_LEN);
    return status;
}

size_t tdxm_report_batch(tdxm_module *m, const uint8_t *reportdata, uint8_t *out, uint64_t *status,
                         size_t n)
{
    size_t succeeded = 0;

    for (size_t i = 0; i < n; i++) {
        status[i] = tdxm_report_direct(m, out + i * TDX_REPORT_LEN, reportdata + i * TDX_REPORTDATA_LEN, 0);
        if (status[i] == TDX_SUCCESS)
            succeeded++;
        else /* a failed row reads as zeros; out need not be pre-zeroed (4 MiB at 4096 rows) */
            memset(out + i * TDX_REPORT_LEN, 0, TDX_REPORT_LEN);
    }
    return succeeded;
}

/* ------------------------------------------------------------------------------------------------
 * TDG.MR.RTMR.EXTEND (leaf 2, ref §4.6)
 * ------------------------------------------------------------------------------------------------ */

/* An extender owns the inactive cache while it prepares it: a second extender meeting that owner is
 * BUSY, as two EXTENDs are on the module's one lock word (ref §4.8). */
static int extend_prep_claim(tdxm_module *m)
{
    int expected = 0;

    return atomic_compare_exchange_strong(&m->extend_prep, &expected, 1);
}

static void extend_prep_release(tdxm_module *m)
{
    atomic_store_explicit(&m->extend_prep, 0, memory_order_release);
}

/* Publish the prepared cache (the caller holds the lock exclusive and extend_prep): the one moment
 * reports see the extend. */
static void publish_cache(tdxm_module *m, int next)
{
    state_write_begin(m);
    atomic_store_explicit(&m->active, next, memory_order_release);
    state_write_end(m);
}

/* Steps 3-5 of ref §4.6, shared by the GPA and the host-buffer forms. The new RTMR and every cache
 * derived from it (TEE_INFO_HASH, the MAC midstate) are computed into the inactive cache before the
 * lock is taken exclusive, so reports on other vCPUs meet BUSY only for the publish itself. Statuses
 * and check order are the module's; only the window differs (timing, ref §4.3 "Lock window"). */
static uint64_t extend_tail(tdxm_module *m, uint64_t index, const uint8_t *data48)
{
    uint8_t data[TDX_EXTEND_DATA_LEN];
    uint8_t rtmrs[RTMRS_LEN];
    uint64_t status;
    int cur;

    if (index >= TDX_NUM_RTMRS)                                   /* step 3: full 64-bit compare */
        return operand_invalid(TDX_OPERAND_ID_RDX);
    if (!extend_prep_claim(m)) {                                  /* step 4, another EXTEND */
        COUNT(m, rtmr_busy);
        return TDX_OPERAND_BUSY | TDX_OPERAND_ID_RTMR;
    }
    memcpy(data, data48, TDX_EXTEND_DATA_LEN);
    cur = atomic_load_explicit(&m->active, memory_order_acquire); /* stable: only extenders flip it */
    memcpy(rtmrs, m->caches[cur].rtmrs, RTMRS_LEN);
    tdxc_sha384_2(rtmrs + index * TDX_SHA384_LEN, TDX_SHA384_LEN, data, TDX_EXTEND_DATA_LEN,
                  rtmrs + index * TDX_SHA384_LEN);                /* step 5, ref §4.5 */
    fill_cache(m, m->caches[cur].head, rtmrs, &m->caches[!cur]);
    status = rtmr_lock_exclusive(m);                              /* step 4: no REPORT holds it */
    if (status == TDX_SUCCESS) {
        publish_cache(m, !cur);
        rtmr_unlock_exclusive(m);
    }
    extend_prep_release(m);
    return status;
}

uint64_t tdxm_extend_direct(tdxm_module *m, uint64_t index, const uint8_t *data48)
{
    COUNT(m, extends);
    return extend_tail(m, index, data48);
}

size_t tdxm_extend_batch(tdxm_module *m, const uint64_t *index, const uint8_t *data, uint64_t *status,
                         size_t n)
{
    size_t succeeded = 0;

    for (size_t i = 0; i < n; i++) {
        status[i] = tdxm_extend_direct(m, index[i], data + i * TDX_EXTEND_DATA_LEN);
        if (status[i] == TDX_SUCCESS)
            succeeded++;
    }
    return succeeded;
}

tdxm_result tdxm_mr_rtmr_extend(tdxm_module *m, uint64_t rcx, uint64_t rdx)
{
    const uint8_t *data;
    tdxm_result r;

    COUNT(m, extends);
    if (rcx % TDX_EXTEND_ALIGN)                                   /* step 1 */
        return status_result(operand_invalid(TDX_OPERAND_ID_RCX));
    if (rcx & (TDX_GPA_INVALID_MASK | TDX_GPA_SHARED_BIT))        /* step 2: private only */
        return status_result(operand_invalid(TDX_OPERAND_ID_RCX));
    data = gpa_walk(m, rcx, &r);
    if (data == NULL)
        return r;
    return status_result(extend_tail(m, rdx, data));
}

void tdxm_set_rtmr(tdxm_module *m, unsigned index, const uint8_t value[TDX_SHA384_LEN])
{
    uint8_t rtmrs[RTMRS_LEN];
    int cur;

    if (index >= TDX_NUM_RTMRS)
        return;
    /* A host-side sync waits for the lock instead of answering BUSY (so it never counts as busy). */
    while (!extend_prep_claim(m))
        sched_yield();
    cur = atomic_load_explicit(&m->active, memory_order_acquire);
    memcpy(rtmrs, m->caches[cur].rtmrs, RTMRS_LEN);
    memcpy(rtmrs + (size_t)index * TDX_SHA384_LEN, value, TDX_SHA384_LEN);
    fill_cache(m, m->caches[cur].head, rtmrs, &m->caches[!cur]);
    while (rtmr_try_claim_exclusive(m) != TDX_SUCCESS)
        sched_yield();
    COUNT(m, rtmr_exclusive_acquired);
    publish_cache(m, !cur);
    rtmr_unlock_exclusive(m);
    extend_prep_release(m);
}

void tdxm_set_tee_tcb_info(tdxm_module *m, const uint8_t info[TDX_TEE_TCB_INFO_LEN])
{
    uint8_t head[MAC_PREFIX_LEN];
    int cur;

    /* As tdxm_set_rtmr: the new TEE_TCB_INFO_HASH (and the MAC midstate over it) go into the
     * inactive cache; the template's TEE_TCB_INFO bytes change with the publish, under the exclusive
     * lock that every report's snapshot excludes, so a report has both old or both new. */
    while (!extend_prep_claim(m))
        sched_yield();
    cur = atomic_load_explicit(&m->active, memory_order_acquire);
    memcpy(head, m->caches[cur].head, MAC_PREFIX_LEN);
    tdxc_sha384(info, TDX_TEE_TCB_INFO_LEN, head + TDR_OFF_TEE_TCB_INFO_HASH);
    fill_cache(m, head, m->caches[cur].rtmrs, &m->caches[!cur]);
    while (rtmr_try_claim_exclusive(m) != TDX_SUCCESS)
        sched_yield();
    COUNT(m, rtmr_exclusive_acquired);
    state_write_begin(m);
    memcpy(m->tee_tcb_info, info, TDX_TEE_TCB_INFO_LEN);
    memcpy(m->report_template + TDR_OFF_TEE_TCB_INFO, info, TDX_TEE_TCB_INFO_LEN);
    atomic_store_explicit(&m->active, !cur, memory_order_release);
    state_write_end(m);
    rtmr_unlock_exclusive(m);
    extend_prep_release(m);
}

/* ------------------------------------------------------------------------------------------------
 * TDG.MR.VERIFYREPORT (leaf 22, ref §4.7)
 * ------------------------------------------------------------------------------------------------ */

/* The CPU's part of ref §4.7, shared by the GPA and the host-buffer forms. */
static uint64_t verify_tail(const tdxm_module *m, const uint8_t *reportmacstruct)
{
    uint8_t rms[TDX_REPORTMACSTRUCT_LEN];
    uint8_t mac[TDX_MAC_LEN];

    memcpy(rms, reportmacstruct, sizeof rms);
    /* The CPU's check order is not public (ref §4.7); tdxmodel checks the MAC first, then CPUSVN. */
    tdxc_hmac(&m->mac, rms, TDX_MAC_COVERED_LEN, mac);
    if (tdxc_mac_differs(mac, rms + TDR_OFF_MAC))
        return TDX_INVALID_REPORTMACSTRUCT;
    /* A report is from a newer TCB when any CPUSVN component exceeds the platform's. */
    for (int i = 0; i < TDX_CPUSVN_LEN; i++)
        if (rms[TDR_OFF_CPUSVN + i] > m->cpusvn[i])
            return TDX_INVALID_CPUSVN;
    return TDX_SUCCESS;
}

uint64_t tdxm_verify_direct(tdxm_module *m, const uint8_t *reportmacstruct)
{
    if (m->version_minor == 0)             /* TDX 1.0 has no leaf 22 (ref §4.7) */
        return operand_invalid(TDX_OPERAND_ID_RAX);
    COUNT(m, verifies);
    return verify_tail(m, reportmacstruct);
}

tdxm_result tdxm_mr_verifyreport(tdxm_module *m, uint64_t rcx)
{
    const uint8_t *rms;
    tdxm_result r;

    if (m->version_minor == 0)
        return status_result(operand_invalid(TDX_OPERAND_ID_RAX));
    COUNT(m, verifies);
    if (rcx % TDX_VERIFY_ALIGN || (rcx & (TDX_GPA_INVALID_MASK | TDX_GPA_SHARED_BIT)))
        return status_result(operand_invalid(TDX_OPERAND_ID_RCX));
    rms = gpa_walk(m, rcx, &r);
    if (rms == NULL)
        return r;
    return status_result(verify_tail(m, rms));
}

/* ------------------------------------------------------------------------------------------------
 * TDG.VP.VMCALL (leaf 0, quote.md §3, ref §5.1)
 * ------------------------------------------------------------------------------------------------ */

int tdxm_set_vmm(tdxm_module *m, tdxm_vmcall_fn fn, void *vmm)
{
    if (fn != NULL) {
        void *expected = NULL;
        if (!atomic_compare_exchange_strong(&m->vmm, &expected, vmm))
            return -TDXM_EBUSY;
        atomic_store(&m->vmcall_fn, fn);
        return 0;
    }
    atomic_store(&m->vmcall_fn, (tdxm_vmcall_fn)NULL);
    atomic_store(&m->vmm, (void *)NULL);
    return 0;
}

void *tdxm_vmm(const tdxm_module *m)
{
    return atomic_load(&((tdxm_module *)m)->vmm);
}

/* The module hands the exposed registers to the VMM and resumes the TD: the TDCALL itself succeeds
 * whatever the VMM answers in R10. RCX's register-exposure mask is not modelled (the reference does
 * not give its checks): every register is exposed. */
tdxm_result tdxm_vp_vmcall(tdxm_module *m, tdxm_vmcall_regs *regs)
{
    tdxm_vmcall_fn fn = atomic_load(&m->vmcall_fn);
    void *vmm = atomic_load(&m->vmm);

    if (fn == NULL || vmm == NULL) {
        regs->r10 = TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED;
        return status_result(TDX_SUCCESS);
    }
    fn(vmm, regs);
    return status_result(TDX_SUCCESS);
}

/* ------------------------------------------------------------------------------------------------
 * TDCALL dispatch (ref §4.1)
 * ------------------------------------------------------------------------------------------------ */

tdxm_result tdxm_tdcall(tdxm_module *m, uint64_t rax, uint64_t rcx, uint64_t rdx, uint64_t r8)
{
    uint64_t leaf = rax;

    if (m->version_minor != 0) {
        /* 1.5: bits 63:24 reserved; bits 23:16 the leaf version, which the MR leaves take only as 0. */
        if (rax & TDX_RAX_RESERVED_MASK)
            return status_result(operand_invalid(TDX_OPERAND_ID_RAX));
        if ((rax >> TDX_RAX_VERSION_SHIFT) & TDX_RAX_VERSION_MASK)
            return status_result(operand_invalid(TDX_OPERAND_ID_RAX));
        leaf = rax & TDX_RAX_LEAF_MASK;
    }
    switch (leaf) {
    case TDG_VP_VMCALL: {
        /* this entry point carries no R10..R15: a VMCALL with sub-function 0 (tdxm_vp_vmcall) */
        tdxm_vmcall_regs regs = {0, 0, 0, 0, 0, 0};
        return tdxm_vp_vmcall(m, &regs);
    }
    case TDG_MR_REPORT:
        return tdxm_mr_report(m, rcx, rdx, r8);
    case TDG_MR_RTMR_EXTEND:
        return tdxm_mr_rtmr_extend(m, rcx, rdx);
    case TDG_MR_VERIFYREPORT:
        return tdxm_mr_verifyreport(m, rcx); /* OPERAND_INVALID(RAX) on 1.0 */
    default:
        return status_result(operand_invalid(TDX_OPERAND_ID_RAX));
    }
}

/* ------------------------------------------------------------------------------------------------
 * State inspection, counters, benchmark floors
 * ------------------------------------------------------------------------------------------------ */

void tdxm_read_tdinfo(tdxm_module *m, uint8_t out[TDX_TDINFO_LEN])
{
    for (;;) {
        uint64_t before = atomic_load_explicit(&m->state_seq, memory_order_acquire);

        if (before & 1) { /* an extend is publishing */
            sched_yield();
            continue;
        }
        memcpy(out, m->report_template + TDR_OFF_TDINFO, TDX_TDINFO_LEN);
        memcpy(out + TDINFO_RTMR0,
               m->caches[atomic_load_explicit(&m->active, memory_order_acquire)].rtmrs, RTMRS_LEN);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&m->state_seq, memory_order_relaxed) == before)
            return;
    }
}

void tdxm_read_tee_tcb_info(tdxm_module *m, uint8_t out[TDX_TEE_TCB_INFO_LEN])
{
    for (;;) { /* the seqlock of host snapshots: tdxm_set_tee_tcb_info publishes under it */
        uint64_t before = atomic_load_explicit(&m->state_seq, memory_order_acquire);

        if (before & 1) {
            sched_yield();
            continue;
        }
        memcpy(out, m->tee_tcb_info, TDX_TEE_TCB_INFO_LEN);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&m->state_seq, memory_order_relaxed) == before)
            return;
    }
}

void tdxm_read_mac_key(const tdxm_module *m, uint8_t out[TDX_MAC_KEY_LEN])
{
    memcpy(out, m->mac_key, TDX_MAC_KEY_LEN);
}

int tdxm_version_minor(const tdxm_module *m)
{
    return m->version_minor;
}

void tdxm_get_counters(const tdxm_module *m, tdxm_counters *out)
{
    tdxm_module *mm = (tdxm_module *)m; /* atomic loads take a non-const pointer */

#define LOAD(field) atomic_load_explicit(&mm->field, memory_order_relaxed)
    out->rtmr_shared_acquired = out->rtmr_shared_released = out->reports = 0;
    for (int i = 0; i < RTMR_READER_SLOTS; i++) {
        out->rtmr_shared_acquired += LOAD(readers[i].shared_acquired);
        out->rtmr_shared_released += LOAD(readers[i].shared_released);
        out->reports += LOAD(readers[i].reports);
    }
    out->rtmr_exclusive_acquired = LOAD(rtmr_exclusive_acquired);
    out->rtmr_exclusive_released = LOAD(rtmr_exclusive_released);
    out->rtmr_busy = LOAD(rtmr_busy);
    out->extends = LOAD(extends);
    out->verifies = LOAD(verifies);
    out->report_interrupts = LOAD(report_interrupts);
#undef LOAD
}

/* Each round hashes a message whose first bytes are the previous round's output, so no round can
 * be skipped or hoisted. */
void tdxm_floor_hmac224(const uint8_t key[TDX_MAC_KEY_LEN], size_t n, uint8_t out[TDX_MAC_LEN])
{
    tdxc_hmac_key k;
    uint8_t msg[TDX_MAC_COVERED_LEN] = {0};
    uint8_t mac[TDX_MAC_LEN] = {0};

    tdxc_hmac_key_init(&k, key, TDX_MAC_KEY_LEN);
    for (size_t i = 0; i < n; i++) {
        memcpy(msg, mac, TDX_MAC_LEN);
        tdxc_hmac(&k, msg, sizeof msg, mac);
    }
    memcpy(out, mac, TDX_MAC_LEN);
}

void tdxm_floor_sha384_512(size_t n, uint8_t out[TDX_SHA384_LEN])
{
    uint8_t msg[TDX_TDINFO_LEN] = {0};
    uint8_t digest[TDX_SHA384_LEN] = {0};

    for (size_t i = 0; i < n; i++) {
        memcpy(msg, digest, TDX_SHA384_LEN);
        tdxc_sha384(msg, sizeof msg, digest);
    }
    memcpy(out, digest, TDX_SHA384_LEN);
}
