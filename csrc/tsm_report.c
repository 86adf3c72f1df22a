/*
 * tsm_report.c - configfs-tsm report and the tdx_guest quote provider (tsm_report.h).
 *
 * Written from quote.md's step tables (R1-R8, P1-P11, the wait loop) and its configfs notes; no kernel
 * source is reproduced. Model choices, each marked where it is made:
 * - configfs's own buffers (the per-file write buffer and the read buffer) live outside guest memory and
 *   are not counted; the read buffer is zero-filled where the kernel's vmalloc would hold stale bytes;
 * - kvmemdup reads guest memory from the quote buffer's data for out_len bytes, past the buffer's end
 *   when out_len is larger (adjacent kernel memory: the disclosure before 7.0); bytes past guest memory
 *   read as zero; a size beyond the largest page block this model allocates is -ENOMEM;
 * - a text attribute's show runs once per open file (configfs's needs_read_fill).
 */
#include "tsm_report.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tdx_driver.h"
#include "vmm_host.h"

#define ZERO_SIZE_PTR ((uint8_t *)16) /* kvmemdup(.., 0): non-NULL, nothing allocated */

enum { OB_NONE = 0, OB_ZERO, OB_SLAB, OB_PAGES };
enum { F_DIR = 1, F_GENERATION, F_PROVIDER, F_INBLOB, F_OUTBLOB };
/* attribute names in profiles.TSM_ATTRS order, with their kinds and modes (configfs RO 0444, WO 0200) */
static const struct { const char *name; int kind; int mode; } ATTRS[] = {
    {"generation", F_GENERATION, 0444},
    {"provider", F_PROVIDER, 0444},
    {"inblob", F_INBLOB, 0200},
    {"outblob", F_OUTBLOB, 0444},
};
#define NATTRS 4

typedef struct tsm_item {
    char name[TSM_NAME_MAX + 1];
    int dead;                /* rmdir'd: frag_dead for files still open */
    int open_files;
    uint64_t write_gen, read_gen;
    uint8_t inblob[TSM_INBLOB_MAX];
    size_t inblob_len;
    uint8_t *outblob;
    size_t outblob_len;
    int ob_kind, ob_order;
    struct tsm_item *next;
} tsm_item;

struct tsm_file {
    int kind;
    tsm_item *item;          /* NULL for directories above the items */
    int accmode;
    int64_t pos;
    pthread_mutex_t mutex;   /* configfs buffer->mutex */
    int read_in_progress, write_in_progress, needs_read_fill;
    uint8_t *bin;
    size_t bin_size;
    char text[32];
    size_t text_len;
};

struct tsm_state {
    td_kernel *tk;
    gk_kernel *gk;
    tdxm_module *m;
    const tdxm_profile *prof;
    char *report_dir, *tsm_dir, *config_dir;
    char provider[64];              /* the provider name, from the profile (quote.md §1.1) */
    pthread_rwlock_t rwsem;         /* tsm_rwsem */
    pthread_mutex_t items_lock;     /* the item list (configfs's own locking; not observable) */
    tsm_item *items;
    int registered;
    unsigned count;                 /* 6.16: provider.count */
    _Atomic int quote_lock;
    _Atomic int quote_outside_hold;
    _Atomic uint32_t getquote_timeout; /* polls; the kernel's static u32, 30 (quote.md §2.2) */
    uint8_t *quote_buf;             /* host view of the shared buffer */
    uint64_t quote_gpa;
    /* how P7 waits (profiles.QuoteCompletion; set once at init by tsm_set_completion) */
    int wait_mode, poll_sleep;
    uint32_t interval_ms, cap_ms, hz;
    int notify_registered;          /* SetupEventNotifyInterrupt answered SUCCESS */
    _Atomic uint64_t irqs;          /* notify vectors the host injected */
};

/* ---- locks --------------------------------------------------------------------------------------- */

static void rw_read(tsm_state *s) { pthread_rwlock_rdlock(&s->rwsem); gk_count_lock(s->gk, 1); }
static void rw_write(tsm_state *s) { pthread_rwlock_wrlock(&s->rwsem); gk_count_lock(s->gk, 1); }
static void rw_unlock(tsm_state *s) { gk_count_lock(s->gk, 0); pthread_rwlock_unlock(&s->rwsem); }

static int quote_trylock(tsm_state *s)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&s->quote_lock, &expected, 1)) {
        gk_count_lock(s->gk, 1);
        return 1;
    }
    return 0;
}

/* mutex_lock_interruptible (quote.md §2.3 P1): uncontended never fails; contended returns -EINTR
 * while a signal is pending. */
static int quote_lock_interruptible(tsm_state *s, gk_task *task)
{
    if (quote_trylock(s))
        return 0;
    for (;;) {
        if (atomic_load(&task->signal_pending))
            return -TDXM_EINTR;
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
        if (quote_trylock(s))
            return 0;
    }
}

static void quote_unlock(tsm_state *s)
{
    atomic_store(&s->quote_lock, 0);
    gk_count_lock(s->gk, 0);
}

/* ---- guest memory helpers ------------------------------------------------------------------------ */

static uint64_t rd64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static void wr64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void wr32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }

/* The guest reads a field of the shared buffer: whatever the host completed by now is visible. */
static vmm_host *host_of(tsm_state *s) { return vmm_host_of(s->m); }

static void host_settle(tsm_state *s)
{
    vmm_host *h = host_of(s);
    if (h)
        vmm_clock_poll(vmm_host_clock(h));
}

static uint64_t read_status(tsm_state *s)
{
    host_settle(s);
    return rd64(s->quote_buf + QUOTE_HDR_OFF_STATUS);
}

static uint32_t read_out_len(tsm_state *s)
{
    uint32_t v;
    vmm_host *h;
    host_settle(s);
    v = rd32(s->quote_buf + QUOTE_HDR_OFF_OUT_LEN);
    h = host_of(s);
    if (h)
        vmm_host_guest_read(h, s->quote_gpa + QUOTE_HDR_OFF_OUT_LEN, 4);
    return v;
}

/* ---- outblob allocation (kvmemdup / kvfree) ------------------------------------------------------ */

static void ob_free(tsm_state *s, tsm_item *it)
{
    gk_ctx c = {.k = s->gk};
    if (it->ob_kind == OB_SLAB)
        gk_kfree(&c, it->outblob);
    else if (it->ob_kind == OB_PAGES)
        gk_free_pages(&c, it->outblob, it->ob_order);
    it->outblob = NULL;
    it->outblob_len = 0;
    it->ob_kind = OB_NONE;
}

/* P10: kvmemdup(data, n) into it->outblob; 0 or -ENOMEM. One failslab point (ref §7). */
static int kvmemdup_outblob(tsm_state *s, gk_ctx *c, tsm_item *it, size_t n)
{
    uint8_t *dst;
    int kind, order = 0;
    size_t avail, mem = tdxm_memory_pages(s->m) * (size_t)TDX_PAGE_SIZE;
    uint64_t src = s->quote_gpa + QUOTE_HDR_LEN;

    if (n == 0) { /* kmalloc(0): ZERO_SIZE_PTR before any fault point */
        it->outblob = ZERO_SIZE_PTR;
        it->ob_kind = OB_ZERO;
        return 0;
    }
    if (gk_should_fail(c, GK_PT_OUTBLOB_KVMEMDUP, GK_FAILSLAB, (int64_t)n, 0))
        return -TDXM_ENOMEM;
    if (n <= TDXM_SLAB_CLASSES[TDXM_NUM_SLAB_CLASSES - 1]) {
        dst = gk_kmalloc(c, GK_PT_OUTBLOB_KVMEMDUP, n, GK_NOFAIL);
        kind = OB_SLAB;
    } else {
        while (((size_t)TDX_PAGE_SIZE << order) < n)
            order++;
        dst = order <= GK_MAX_ORDER ? gk_alloc_pages(c, GK_PT_OUTBLOB_KVMEMDUP, order, GK_NOFAIL) : NULL;
        kind = OB_PAGES;
    }
    if (dst == NULL)
        return -TDXM_ENOMEM;
    avail = src < mem ? mem - (size_t)src : 0;
    /* memmove: before 7.0 the host's out_len is unbounded (quote.md §2.3 P9), so the copy reads past
     * the quote buffer into kernel memory, which may hold the outblob just allocated (found by the
     * ASan pass: memcpy-param-overlap). */
    memmove(dst, tdxm_host_ptr(s->m, src, 0), n < avail ? n : avail);
    if (n > avail)
        memset(dst + avail, 0, n - avail);
    it->outblob = dst;
    it->ob_kind = kind;
    it->ob_order = order;
    return 0;
}

/* ---- the provider: tdx_report_new (quote.md §2.3) ------------------------------------------------ */

/* msleep(ms) on the platform clock (profiles.msleep_ns, the same arithmetic): hz 0 sleeps exactly;
 * else schedule_timeout(msecs_to_jiffies(ms) + 1), whose timer fires in the wheel bucket after its
 * expiry at the level's granularity (kernel/time/timer.c calc_wheel_index / calc_index). */
static uint64_t msleep_duration_ns(uint32_t ms, uint32_t hz, uint64_t now)
{
    if (hz == 0)
        return (uint64_t)ms * 1000000ULL;
    uint64_t tick = 1000000000ULL / hz;
    uint64_t timeout = ((uint64_t)ms * hz + 999) / 1000 + 1;
    uint64_t expires = now / tick + timeout;
    unsigned lvl = 0;
    while (lvl < TIMER_LVL_DEPTH - 1 &&
           timeout >= (((1ULL << TIMER_LVL_BITS) - 1) << (lvl * TIMER_LVL_CLK_SHIFT)))
        lvl++;
    unsigned shift = lvl * TIMER_LVL_CLK_SHIFT;
    uint64_t bucket = ((expires >> shift) + 1) << shift;
    return bucket * tick - now;
}

static void guest_msleep(tsm_state *s, vmm_host *h, uint32_t ms)
{
    vmm_clock *c = vmm_host_clock(h);
    vmm_clock_sleep_ns(c, msleep_duration_ns(ms, s->hz, vmm_clock_now_ns(c)));
}

/* A signal due at a clock time (gk_task.signal_at) becomes pending once the clock reaches it. */
static int signal_due(gk_task *task, vmm_clock *clk)
{
    uint64_t at = atomic_load(&task->signal_at);
    if (at && clk && vmm_clock_now_ns(clk) >= at - 1) {
        atomic_store(&task->signal_at, 0);
        atomic_store(&task->signal_pending, 1);
    }
    return atomic_load(&task->signal_pending);
}

/* msleep_interruptible(ms): msleep's duration, cut short by a signal due during it. */
static void guest_msleep_interruptible(tsm_state *s, gk_task *task, vmm_clock *c, uint32_t ms)
{
    uint64_t now = vmm_clock_now_ns(c), ns = msleep_duration_ns(ms, s->hz, now);
    uint64_t at = atomic_load(&task->signal_at);
    if (at && at - 1 > now && at - 1 - now < ns)
        ns = at - 1 - now;
    vmm_clock_sleep_ns(c, ns);
}

/* §2.4: as written, with its off-by-one both ways; the limit is getquote_timeout (30 polls). */
static long wait_stock(tsm_state *s, gk_task *task)
{
    vmm_host *h = host_of(s);
    vmm_clock *clk = h ? vmm_host_clock(h) : NULL;
    uint32_t limit = atomic_load(&s->getquote_timeout);
    uint32_t i = 0;

    while (read_status(s) == GET_QUOTE_IN_FLIGHT && i++ < limit) {
        if (signal_due(task, clk))                /* msleep_interruptible returns at once */
            return -TDXM_EINTR;
        if (clk)
            guest_msleep_interruptible(s, task, clk, GETQUOTE_POLL_MS);
        if (signal_due(task, clk))                /* woken by a signal during the sleep */
            return -TDXM_EINTR;
    }
    return i == limit ? -TDXM_ETIMEDOUT : 0;
}

/* The proposed read_poll_timeout(status, status != IN_FLIGHT, interval, cap) (quote.md §2.5): after
 * the cap has passed the condition is read once more, so a quote ready by then succeeds. The sleeps
 * are uninterruptible: a signal does not end this wait. cap 0: no timeout. No host (it went away):
 * no clock moves, so the cap counts as passed (a choice). */
static long wait_poll(tsm_state *s)
{
    vmm_host *h = host_of(s);
    vmm_clock *c = h ? vmm_host_clock(h) : NULL;
    uint64_t deadline = (c ? vmm_clock_now_ns(c) : 0) + (uint64_t)s->cap_ms * 1000000ULL;

    for (;;) {
        if (read_status(s) != GET_QUOTE_IN_FLIGHT)
            return 0;
        if (c == NULL || (s->cap_ms && vmm_clock_now_ns(c) > deadline))
            return read_status(s) != GET_QUOTE_IN_FLIGHT ? 0 : -TDXM_ETIMEDOUT;
        if (s->poll_sleep == QUOTE_SLEEP_USLEEP_RANGE)
            vmm_clock_sleep_ns(c, (uint64_t)s->interval_ms * 1000000ULL); /* the range's upper bound */
        else
            guest_msleep(s, h, s->interval_ms);
        h = host_of(s);
        c = h ? vmm_host_clock(h) : NULL;
    }
}

/* The notify vector's handler (the downstream driver's tdx_notify_irq): count it; the waiter then
 * scans the buffer status, as its workqueue does. */
static void tsm_notify_irq(void *ctx, unsigned vector)
{
    tsm_state *s = ctx;
    if (vector == QUOTE_NOTIFY_VECTOR)
        atomic_fetch_add(&s->irqs, 1);
}

/* SetupEventNotifyInterrupt (quote.md §3.1): 0 when the host took the vector. */
static int register_notify(tsm_state *s)
{
    tdxm_vmcall_regs regs = {0, TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, QUOTE_NOTIFY_VECTOR, 0, 0, 0};
    tdxm_vp_vmcall(s->m, &regs);
    s->notify_registered = regs.r10 == TDVMCALL_STATUS_SUCCESS;
    return s->notify_registered ? 0 : -1;
}

/* wait_for_completion_interruptible with no timeout (quote.md §2.6 step 6): done once a vector came
 * after the GetQuote and the status is no longer IN_FLIGHT. The waiting vCPU is idle until the host's
 * next completion is due (virtual: time moves there; real: it sleeps until then). With nothing due
 * (no_interrupt after the completion, never) it waits for a signal. */
static long wait_interrupt(tsm_state *s, gk_task *task, uint64_t irqs_before)
{
    for (;;) {
        vmm_host *h = host_of(s);
        if (atomic_load(&s->irqs) != irqs_before && read_status(s) != GET_QUOTE_IN_FLIGHT)
            return 0;
        if (signal_due(task, h ? vmm_host_clock(h) : NULL))
            return -TDXM_EINTR;
        uint64_t due = h ? vmm_host_next_due_ns(h) : UINT64_MAX;
        uint64_t at = atomic_load(&task->signal_at);   /* a signal due first ends the idle wait there */
        if (h && at && at - 1 < due)
            due = at - 1;
        if (due != UINT64_MAX) {
            vmm_clock *c = vmm_host_clock(h);
            uint64_t now = vmm_clock_now_ns(c);
            if (due > now)
                vmm_clock_sleep_ns(c, due - now);
            else
                vmm_clock_poll(c);
        } else {
            struct timespec ts = {0, 100000};   /* nothing due: wait for a signal or another task */
            nanosleep(&ts, NULL);
            if (h)
                vmm_clock_poll(vmm_host_clock(h));
        }
    }
}

static long report_status_errno(const tdxm_profile *prof, uint64_t status)
{
    for (int i = 0; i < prof->nerrno; i++)
        if ((status >> 32) == prof->errno_class[i])
            return -prof->errno_value[i];
    return -prof->errno_default;
}

/* P5 before 6.16: kmalloc/kzalloc temporaries, TDG.MR.REPORT (tdx_mcall_get_report0). */
static long report_temporaries(tsm_state *s, gk_ctx *c, tsm_item *it, uint8_t **rd_out, uint8_t **tdr_out)
{
    uint8_t *rd = gk_kmalloc(c, GK_PT_REPORTDATA_KMALLOC, TDX_REPORTDATA_LEN, 0);
    *rd_out = rd;
    if (!rd)
        return -TDXM_ENOMEM;
    uint8_t *tdr = gk_kmalloc(c, GK_PT_TDREPORT_KZALLOC, TDX_REPORT_LEN, GK_ZERO);
    *tdr_out = tdr;
    if (!tdr)
        return -TDXM_ENOMEM;
    memcpy(rd, it->inblob, TDX_REPORTDATA_LEN);
    uint64_t status = td_kernel_tdcall(s->tk, TDG_MR_REPORT, gk_pa(s->gk, tdr), gk_pa(s->gk, rd));
    return status ? report_status_errno(s->prof, status) : 0;
}

/* P5 from 6.16: tdx_do_report(inblob -> report_buf + 128, out -> data) under mr_lock. */
static long report_cached(tsm_state *s, gk_task *task, tsm_item *it)
{
    long ret = td_mr_lock_interruptible(s->tk, task);
    if (ret)
        return ret;
    uint8_t *buf = td_report_buf(s->tk);
    memcpy(buf + TDR_OFF_REPORTDATA, it->inblob, TDX_REPORTDATA_LEN);
    uint64_t status = td_kernel_tdcall(s->tk, TDG_MR_REPORT, gk_pa(s->gk, buf),
                                       gk_pa(s->gk, buf + TDR_OFF_REPORTDATA));
    if (status)
        ret = report_status_errno(s->prof, status);
    else
        memcpy(s->quote_buf + QUOTE_HDR_LEN, buf, TDX_REPORT_LEN);
    td_mr_unlock(s->tk);
    return ret;
}

static void quote_buf_header(tsm_state *s)
{
    memset(s->quote_buf, 0, s->prof->quote_buf_size);                /* P4 */
    wr64(s->quote_buf + QUOTE_HDR_OFF_VERSION, GET_QUOTE_CMD_VER);
    wr32(s->quote_buf + QUOTE_HDR_OFF_IN_LEN, TDX_REPORT_LEN);
}

static long report_new_locked(tsm_state *s, gk_ctx *c, tsm_item *it, uint8_t **rd, uint8_t **tdr)
{
    const tdxm_profile *prof = s->prof;
    long ret;

    if (read_status(s) == GET_QUOTE_IN_FLIGHT)                        /* P2 */
        return -TDXM_EBUSY;
    if (it->inblob_len != TDX_REPORTDATA_LEN)                         /* P3 */
        return -TDXM_EINVAL;
    if (prof->cached_report_buf) {                                    /* 6.16+: P4, then P5 */
        quote_buf_header(s);
        if ((ret = report_cached(s, c->task, it)))
            return ret;
    } else {                                                          /* <= 6.15: P5, then P4 */
        if ((ret = report_temporaries(s, c, it, rd, tdr)))
            return ret;
        quote_buf_header(s);
        memcpy(s->quote_buf + QUOTE_HDR_LEN, *tdr, TDX_REPORT_LEN);
    }
    uint64_t irqs_before = atomic_load(&s->irqs);
    if (s->wait_mode == QUOTE_WAIT_INTERRUPT) {
        /* The vector is registered at init; a Kernel made before its Host registers before its first
         * GetQuote instead, and a host that refuses it leaves no completion signal: -EIO (choices). */
        if (!s->notify_registered && register_notify(s) != 0)
            return -TDXM_EIO;
        if (host_of(s))
            vmm_host_set_irq(host_of(s), tsm_notify_irq, s);
    }
    tdxm_vmcall_regs regs = {0, TDVMCALL_GET_QUOTE, s->quote_gpa | TDX_GPA_SHARED_BIT, prof->quote_buf_size, 0, 0};
    tdxm_vp_vmcall(s->m, &regs);                                       /* P6 */
    if (regs.r10 != 0)
        return -TDXM_EIO;
    if (s->wait_mode == QUOTE_WAIT_POLL)                              /* P7 */
        ret = wait_poll(s);
    else if (s->wait_mode == QUOTE_WAIT_INTERRUPT)
        ret = wait_interrupt(s, c->task, irqs_before);
    else
        ret = wait_stock(s, c->task);
    if (ret)
        return ret;
    if (prof->quote_status_check && read_status(s) != GET_QUOTE_SUCCESS) /* P8 (7.1) */
        return -TDXM_EIO;
    if (prof->quote_out_len_once) {                                   /* P9 (7.0): READ_ONCE, bounded */
        uint32_t out_len = read_out_len(s);
        if (out_len > prof->quote_buf_size - QUOTE_HDR_LEN)
            return -TDXM_EFBIG;
        if ((ret = kvmemdup_outblob(s, c, it, out_len)))             /* P10 */
            return ret;
        it->outblob_len = out_len;                                    /* P11 */
    } else {                                                          /* before: read twice, unbounded */
        if ((ret = kvmemdup_outblob(s, c, it, read_out_len(s))))      /* P10 */
            return ret;
        it->outblob_len = read_out_len(s);                            /* P11 */
    }
    return 0;
}

static long tdx_report_new(tsm_state *s, gk_ctx *c, tsm_item *it)
{
    uint8_t *rd = NULL, *tdr = NULL;
    long ret = quote_lock_interruptible(s, c->task);                  /* P1 */
    if (ret)
        return ret;
    ret = report_new_locked(s, c, it, &rd, &tdr);
    quote_unlock(s);                                                  /* P11: unlock, then free */
    gk_kfree(c, rd);
    gk_kfree(c, tdr);
    return ret;
}

/* ---- the tsm core (quote.md §1.3, §1.5) ---------------------------------------------------------- */

/* __read_report: the size, or min(cap, outblob_len) bytes. outblob_len can exceed what kvmemdup
 * copied (the double read before 7.0): the copy then runs past the allocation into adjacent kernel
 * memory (past guest memory: zeros), or dereferences ZERO_SIZE_PTR (an oops). */
static long serve(tsm_state *s, tsm_item *it, uint8_t *buf, size_t cap)
{
    if (buf == NULL)                 /* configfs's size probe */
        return (long)it->outblob_len;
    size_t n = cap < it->outblob_len ? cap : it->outblob_len;
    if (n == 0)
        return 0;
    if (it->ob_kind == OB_ZERO)
        return TSM_RET_OOPS;
    uint64_t gpa = gk_pa(s->gk, it->outblob);
    size_t mem = tdxm_memory_pages(s->m) * (size_t)TDX_PAGE_SIZE;
    size_t avail = gpa < mem ? mem - (size_t)gpa : 0;
    memcpy(buf, it->outblob, n < avail ? n : avail);
    if (n > avail)
        memset(buf + avail, 0, n - avail);
    return (long)n;
}

/* tsm_report_read (R1-R7); buf NULL: the size probe. */
static long report_read(tsm_state *s, gk_ctx *c, tsm_item *it, uint8_t *buf, size_t cap)
{
    long rc;

    rw_read(s);
    if (it->inblob_len == 0) {                                        /* R1 */
        rw_unlock(s);
        return -TDXM_EINVAL;
    }
    if (it->outblob && it->read_gen == it->write_gen) {               /* R2 */
        rc = serve(s, it, buf, cap);
        rw_unlock(s);
        return rc;
    }
    rw_unlock(s);
    rw_write(s);                                                      /* the slow path */
    if (!s->registered)                                               /* R3 */
        rc = -s->prof->tsm_no_provider_errno;
    else if (it->inblob_len == 0)                                     /* R4 */
        rc = -TDXM_EINVAL;
    else if (it->outblob && it->read_gen == it->write_gen)            /* R5 */
        rc = serve(s, it, buf, cap);
    else {
        ob_free(s, it);                                               /* R6: the old report is gone */
        rc = tdx_report_new(s, c, it);
        if (rc >= 0) {
            it->read_gen = it->write_gen;                             /* R7 */
            rc = serve(s, it, buf, cap);
        }
    }
    rw_unlock(s);
    return rc;
}

/* inblob's write callback, run at release (quote.md §1.3, §1.4 step 3). */
static long inblob_commit(tsm_state *s, tsm_item *it, const uint8_t *data, size_t n)
{
    rw_write(s);
    if (it->write_gen == it->read_gen - 1) {                          /* the wrap guard */
        rw_unlock(s);
        return -TDXM_EBUSY;
    }
    it->write_gen++;
    it->inblob_len = n;
    if (n)
        memcpy(it->inblob, data, n);
    rw_unlock(s);
    return (long)n;
}

static long show(tsm_state *s, tsm_file *f, char *out, size_t cap)
{
    long n;
    rw_read(s);
    if (f->kind == F_GENERATION) {
        char tmp[32];
        int len = 0;
        uint64_t v = f->item->write_gen;
        do tmp[len++] = (char)('0' + v % 10); while ((v /= 10) && len < 31);
        for (int i = 0; i < len; i++)
            out[i] = tmp[len - 1 - i];
        out[len] = '\n';
        n = len + 1;
    } else if (!s->registered) {
        n = s->prof->tsm_provider_gone_enxio ? -TDXM_ENXIO : TSM_RET_OOPS;
    } else {
        n = (long)strlen(s->provider);
        memcpy(out, s->provider, (size_t)n);
        out[n++] = '\n';
    }
    (void)cap;
    rw_unlock(s);
    return n;
}

/* ---- paths ----------------------------------------------------------------------------------------- */

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash && slash != path ? (size_t)(slash - path) : 1;
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = 0;
    }
    return d;
}

int tsm_owns_path(tsm_state *s, const char *path)
{
    size_t n = strlen(s->config_dir);
    return strncmp(path, s->config_dir, n) == 0 && (path[n] == 0 || path[n] == '/');
}

static tsm_item *find_item(tsm_state *s, const char *name, size_t len)
{
    for (tsm_item *it = s->items; it; it = it->next)
        if (!it->dead && strlen(it->name) == len && memcmp(it->name, name, len) == 0)
            return it;
    return NULL;
}

/* Resolve path: level 0 config dir, 1 tsm dir, 2 report dir, 3 item, 4 attribute; -1 not found,
 * -2 a component too long. *item / *attr as found. Caller holds items_lock. */
static int resolve(tsm_state *s, const char *path, tsm_item **item, int *attr, const char **leaf, size_t *leaf_len)
{
    const char *dirs[3] = {s->config_dir, s->tsm_dir, s->report_dir};
    *item = NULL;
    *attr = -1;
    for (int lvl = 2; lvl >= 0; lvl--) {
        size_t n = strlen(dirs[lvl]);
        if (strncmp(path, dirs[lvl], n) != 0)
            continue;
        if (path[n] == 0)
            return lvl;
        if (path[n] != '/' || lvl < 2) {
            if (lvl < 2 && path[n] == '/') /* a name beside the known directory */
                return -1;
            continue;
        }
        const char *name = path + n + 1;
        const char *slash = strchr(name, '/');
        size_t len = slash ? (size_t)(slash - name) : strlen(name);
        *leaf = name;
        *leaf_len = len;
        if (len > TSM_NAME_MAX)
            return -2;
        if (len == 0)
            return slash ? -1 : 2;  /* a trailing slash names the report dir */
        *item = find_item(s, name, len);
        if (!slash)
            return *item ? 3 : -1;
        if (!*item)
            return -1;
        const char *a = slash + 1;
        if (*a == 0)
            return 3;
        for (int i = 0; i < NATTRS; i++)
            if (strcmp(a, ATTRS[i].name) == 0) {
                *attr = i;
                return 4;
            }
        if (strchr(a, '/')) {   /* below an attribute, or below a missing one */
            for (int i = 0; i < NATTRS; i++) {
                size_t an = strlen(ATTRS[i].name);
                if (strncmp(a, ATTRS[i].name, an) == 0 && a[an] == '/')
                    return -3; /* ENOTDIR */
            }
        }
        return -1;
    }
    return -1;
}

static int resolve_errno(int lvl)
{
    return lvl == -2 ? -TDXM_ENAMETOOLONG : lvl == -3 ? -TDXM_ENOTDIR : -TDXM_ENOENT;
}

/* ---- syscalls -------------------------------------------------------------------------------------- */

tsm_file *tsm_open(tsm_state *s, const char *path, int accmode, int *err)
{
    tsm_item *it;
    int attr;
    const char *leaf = NULL;
    size_t leaf_len = 0;
    tsm_file *f;

    pthread_mutex_lock(&s->items_lock);
    int lvl = resolve(s, path, &it, &attr, &leaf, &leaf_len);
    if (lvl < 0) {
        pthread_mutex_unlock(&s->items_lock);
        *err = resolve_errno(lvl);
        return NULL;
    }
    if (lvl < 4 && accmode != 0) {   /* a directory opened for writing */
        pthread_mutex_unlock(&s->items_lock);
        *err = -TDXM_EISDIR;
        return NULL;
    }
    if (lvl == 4) {
        /* configfs open: write needs a writable mode and a store, read a readable mode and a show */
        int mode = ATTRS[attr].mode;
        int want_write = accmode != 0, want_read = accmode != 1;
        if ((want_write && !(mode & 0222)) || (want_read && !(mode & 0444))) {
            pthread_mutex_unlock(&s->items_lock);
            *err = -TDXM_EACCES;
            return NULL;
        }
    }
    f = calloc(1, sizeof *f);
    if (!f) {
        pthread_mutex_unlock(&s->items_lock);
        *err = -TDXM_ENOMEM;
        return NULL;
    }
    f->kind = lvl == 4 ? ATTRS[attr].kind : F_DIR;
    f->item = it;
    f->accmode = accmode;
    f->needs_read_fill = 1;
    pthread_mutex_init(&f->mutex, NULL);
    if (it)
        it->open_files++;
    pthread_mutex_unlock(&s->items_lock);
    *err = 0;
    return f;
}

int64_t *tsm_file_pos(tsm_file *f) { return &f->pos; }

static long copy_out(gk_ctx *c, uint64_t uaddr, const uint8_t *src, size_t size, int64_t count, int64_t *pos)
{
    if (*pos >= (int64_t)size)
        return 0;
    size_t n = size - (size_t)*pos;
    if ((uint64_t)count < n)
        n = (size_t)count;
    size_t copied = n ? n - gk_copy_to_user(c, GK_PT_CONFIGFS_COPY_TO_USER, uaddr, src + *pos, n) : 0;
    *pos += (int64_t)copied;
    return copied ? (long)copied : -TDXM_EFAULT;
}

long tsm_read(tsm_state *s, gk_ctx *c, tsm_file *f, uint64_t uaddr, int64_t count, int64_t *pos)
{
    long ret;

    if (f->kind == F_DIR)
        return -TDXM_EISDIR;
    if (f->accmode == 1)
        return -TDXM_EBADF;
    if (count < 0)
        return -TDXM_EINVAL;
    pthread_mutex_lock(&f->mutex);
    if (f->kind == F_OUTBLOB) {                                        /* configfs_bin_read_iter */
        if (f->write_in_progress) {
            ret = -TDXM_ETXTBSY;
            goto out;
        }
        f->read_in_progress = 1;
        if (f->needs_read_fill) {
            long len = f->item->dead ? -TDXM_ENOENT : report_read(s, c, f->item, NULL, 0);
            if (len <= 0) {                                            /* R8: <= 0 as is */
                ret = len;
                goto out;
            }
            if ((uint64_t)len > s->prof->tsm_outblob_max) {            /* R8: -EFBIG */
                ret = -TDXM_EFBIG;
                goto out;
            }
            f->bin = calloc(1, (size_t)len);
            if (!f->bin) {
                ret = -TDXM_ENOMEM;
                goto out;
            }
            f->bin_size = (size_t)len;
            long len2 = f->item->dead ? -TDXM_ENOENT : report_read(s, c, f->item, f->bin, (size_t)len);
            if (len2 < 0) {
                free(f->bin);
                f->bin = NULL;
                f->bin_size = 0;
                ret = len2;
                goto out;
            }
            f->needs_read_fill = 0;
        }
        ret = copy_out(c, uaddr, f->bin, f->bin_size, count, pos);
    } else if (f->kind == F_GENERATION || f->kind == F_PROVIDER) {    /* configfs_read_iter */
        if (f->needs_read_fill) {
            long n = f->item->dead ? -TDXM_ENOENT : show(s, f, f->text, sizeof f->text);
            if (n < 0) {
                ret = n;
                goto out;
            }
            f->text_len = (size_t)n;
            f->needs_read_fill = 0;
        }
        ret = copy_out(c, uaddr, (const uint8_t *)f->text, f->text_len, count, pos);
    } else {
        ret = -TDXM_EBADF; /* inblob is write-only: the open refused read access */
    }
out:
    pthread_mutex_unlock(&f->mutex);
    return ret;
}

long tsm_write(tsm_state *s, gk_ctx *c, tsm_file *f, uint64_t uaddr, int64_t count, int64_t *pos)
{
    long ret;
    (void)s;

    if (f->kind == F_DIR || f->accmode == 0)
        return -TDXM_EBADF;
    if (count < 0)
        return -TDXM_EINVAL;
    if (f->kind != F_INBLOB)
        return -TDXM_EBADF; /* unreachable: read-only attributes refuse write access at open */
    pthread_mutex_lock(&f->mutex);                                     /* configfs_bin_write_iter */
    if (f->read_in_progress) {
        ret = -TDXM_ETXTBSY;
        goto out;
    }
    f->write_in_progress = 1;
    uint64_t end = (uint64_t)*pos + (uint64_t)count;
    if (end > f->bin_size) {
        if (end > TSM_INBLOB_MAX) {                                    /* quote.md §1.4 step 1 */
            ret = -TDXM_EFBIG;
            goto out;
        }
        uint8_t *grown = calloc(1, (size_t)end);
        if (!grown) {
            ret = -TDXM_ENOMEM;
            goto out;
        }
        if (f->bin)
            memcpy(grown, f->bin, f->bin_size);
        free(f->bin);
        f->bin = grown;
        f->bin_size = (size_t)end;
    }
    size_t n = (size_t)count;
    size_t copied = n ? n - gk_copy_from_user(c, GK_PT_CONFIGFS_COPY_FROM_USER, f->bin + *pos, uaddr, n) : 0;
    *pos += (int64_t)copied;
    ret = copied ? (long)copied : -TDXM_EFAULT;                        /* step 2: nothing copied */
out:
    pthread_mutex_unlock(&f->mutex);
    return ret;
}

static void item_free(tsm_state *s, tsm_item *it)
{
    tsm_item **pp = &s->items;
    while (*pp && *pp != it)
        pp = &(*pp)->next;
    if (*pp)
        *pp = it->next;
    ob_free(s, it);
    free(it);
}

void tsm_release(tsm_state *s, gk_ctx *c, tsm_file *f)
{
    (void)c;
    if (f->kind == F_INBLOB && f->write_in_progress && !f->item->dead)
        (void)inblob_commit(s, f->item, f->bin, f->bin_size);          /* result ignored (§1.4 step 3) */
    free(f->bin);
    pthread_mutex_lock(&s->items_lock);
    if (f->item && --f->item->open_files == 0 && f->item->dead)
        item_free(s, f->item);
    pthread_mutex_unlock(&s->items_lock);
    pthread_mutex_destroy(&f->mutex);
    free(f);
}

int tsm_mkdir(tsm_state *s, const char *path)
{
    tsm_item *it;
    int attr, ret = 0;
    const char *leaf = NULL;
    size_t leaf_len = 0;

    pthread_mutex_lock(&s->items_lock);
    int lvl = resolve(s, path, &it, &attr, &leaf, &leaf_len);
    if (lvl >= 0 && lvl <= 4) {
        ret = -TDXM_EEXIST;                                           /* the VFS: it exists */
    } else if (lvl == -2 || lvl == -3) {
        ret = resolve_errno(lvl);
    } else {
        char *parent = dir_of(path);
        tsm_item *pit;
        int pattr;
        const char *pl;
        size_t pll;
        int plvl = parent ? resolve(s, parent, &pit, &pattr, &pl, &pll) : -1;
        free(parent);
        if (plvl < 0)
            ret = plvl == -3 ? -TDXM_ENOTDIR : -TDXM_ENOENT;
        else if (plvl == 4)
            ret = -TDXM_ENOTDIR;
        else if (plvl != 2)
            ret = -TDXM_EPERM;      /* configfs: a group without make_item/make_group */
        else {
            rw_read(s);
            if (!s->registered) {
                ret = -TDXM_ENXIO;                                    /* quote.md §1.6 */
            } else {
                it = calloc(1, sizeof *it);
                if (!it) {
                    ret = -TDXM_ENOMEM;
                } else {
                    memcpy(it->name, leaf, leaf_len);
                    it->name[leaf_len] = 0;
                    tsm_item **pp = &s->items;  /* append: creation order */
                    while (*pp)
                        pp = &(*pp)->next;
                    *pp = it;
                    s->count++;
                }
            }
            rw_unlock(s);
        }
    }
    pthread_mutex_unlock(&s->items_lock);
    return ret;
}

int tsm_rmdir(tsm_state *s, const char *path)
{
    tsm_item *it;
    int attr, ret = 0;
    const char *leaf;
    size_t leaf_len;

    pthread_mutex_lock(&s->items_lock);
    int lvl = resolve(s, path, &it, &attr, &leaf, &leaf_len);
    if (lvl < 0)
        ret = resolve_errno(lvl);
    else if (lvl == 4)
        ret = -TDXM_ENOTDIR;
    else if (lvl < 3)
        ret = -TDXM_EPERM;          /* configfs: default groups and the subsystem cannot go */
    else {
        it->dead = 1;
        s->count--;
        if (it->open_files == 0)
            item_free(s, it);
    }
    pthread_mutex_unlock(&s->items_lock);
    return ret;
}

int tsm_stat(tsm_state *s, const char *path, int *kind, int *mode)
{
    tsm_item *it;
    int attr;
    const char *leaf;
    size_t leaf_len;

    pthread_mutex_lock(&s->items_lock);
    int lvl = resolve(s, path, &it, &attr, &leaf, &leaf_len);
    pthread_mutex_unlock(&s->items_lock);
    if (lvl < 0)
        return resolve_errno(lvl);
    *kind = lvl == 4 ? TSM_STAT_FILE : TSM_STAT_DIR;
    *mode = lvl == 4 ? ATTRS[attr].mode : 0755;
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

long tsm_readdir(tsm_state *s, const char *path, char *out, size_t cap)
{
    tsm_item *it;
    int attr;
    const char *leaf;
    size_t leaf_len;
    const char *names[1024];
    size_t n = 0, used = 0;
    long ret;

    pthread_mutex_lock(&s->items_lock);
    int lvl = resolve(s, path, &it, &attr, &leaf, &leaf_len);
    if (lvl < 0) {
        ret = resolve_errno(lvl);
        goto out;
    }
    if (lvl == 4) {
        ret = -TDXM_ENOTDIR;
        goto out;
    }
    if (lvl == 0)
        names[n++] = s->tsm_dir + strlen(s->config_dir) + 1;
    else if (lvl == 1)
        names[n++] = s->report_dir + strlen(s->tsm_dir) + 1;
    else if (lvl == 2) {
        for (tsm_item *i = s->items; i && n < 1024; i = i->next)
            if (!i->dead)
                names[n++] = i->name;
    } else {
        for (int i = 0; i < NATTRS; i++)
            names[n++] = ATTRS[i].name;
    }
    qsort(names, n, sizeof names[0], cmp_str);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(names[i]) + 1;
        if (used + len > cap) {
            ret = -TDXM_ERANGE;
            goto out;
        }
        memcpy(out + used, names[i], len);
        used += len;
    }
    ret = (long)n;
out:
    pthread_mutex_unlock(&s->items_lock);
    return ret;
}

/* ---- registration and lifecycle -------------------------------------------------------------------- */

void tsm_unregister(tsm_state *s)
{
    rw_write(s);
    s->registered = 0;   /* items linger (<= 6.15) or warn (6.16+) */
    rw_unlock(s);
}

int tsm_register(tsm_state *s)
{
    int ret = 0;
    pthread_mutex_lock(&s->items_lock);
    rw_write(s);
    if (s->registered)
        ret = -TDXM_EBUSY;
    else if (s->prof->tsm_counts_items && s->count)
        ret = -TDXM_EBUSY;   /* "configfs/tsm/report not empty" */
    else
        s->registered = 1;
    rw_unlock(s);
    pthread_mutex_unlock(&s->items_lock);
    return ret;
}

int tsm_registered(tsm_state *s) { return s->registered; }

int tsm_quote_lock_try(tsm_state *s)
{
    if (!quote_trylock(s))
        return 0;
    atomic_store(&s->quote_outside_hold, 1);
    return 1;
}

int tsm_quote_lock_release(tsm_state *s)
{
    int expected = 1;
    if (!atomic_compare_exchange_strong(&s->quote_outside_hold, &expected, 0))
        return -TDXM_EINVAL;
    quote_unlock(s);
    return 0;
}

int tsm_set_generations(tsm_state *s, const char *name, uint64_t write_gen, uint64_t read_gen)
{
    int ret = -TDXM_ENOENT;
    pthread_mutex_lock(&s->items_lock);
    tsm_item *it = find_item(s, name, strlen(name));
    if (it) {
        rw_write(s);
        it->write_gen = write_gen;
        it->read_gen = read_gen;
        rw_unlock(s);
        ret = 0;
    }
    pthread_mutex_unlock(&s->items_lock);
    return ret;
}

int tsm_set_completion(tsm_state *s, int mode, uint32_t interval_ms, uint32_t cap_ms, int sleep, uint32_t hz)
{
    if (mode < QUOTE_WAIT_STOCK || mode > QUOTE_WAIT_INTERRUPT || interval_ms == 0 ||
        (sleep != QUOTE_SLEEP_MSLEEP && sleep != QUOTE_SLEEP_USLEEP_RANGE) || hz > KERNEL_HZ_MAX)
        return -TDXM_EINVAL;
    s->wait_mode = mode;
    s->interval_ms = interval_ms;
    s->cap_ms = cap_ms;
    s->poll_sleep = sleep;
    s->hz = hz;
    if (mode == QUOTE_WAIT_INTERRUPT)
        (void)register_notify(s);   /* at init (quote.md §2.6); retried before a GetQuote if it failed */
    return 0;
}

int tsm_notify_registered(tsm_state *s) { return s->notify_registered; }
uint64_t tsm_notify_irqs(tsm_state *s) { return atomic_load(&s->irqs); }

uint64_t tsm_quote_buf_gpa(tsm_state *s) { return s->quote_gpa; }
unsigned tsm_quote_buf_size(tsm_state *s) { return s->prof->quote_buf_size; }
uint32_t tsm_getquote_timeout(tsm_state *s) { return atomic_load(&s->getquote_timeout); }
void tsm_set_getquote_timeout(tsm_state *s, uint32_t polls) { atomic_store(&s->getquote_timeout, polls); }

tsm_state *tsm_create(td_kernel *tk, gk_ctx *init, const char *report_dir, const char *provider, int fail_decrypt, int *err,
                      uint64_t *leaked_pages)
{
    tsm_state *s = calloc(1, sizeof *s);
    *leaked_pages = 0;
    *err = -TDXM_ENOMEM;
    if (!s)
        return NULL;
    s->tk = tk;
    s->gk = td_kernel_gk(tk);
    s->m = gk_kernel_module(s->gk);
    s->prof = td_kernel_profile(tk);
    atomic_store(&s->getquote_timeout, GETQUOTE_TIMEOUT);
    snprintf(s->provider, sizeof s->provider, "%s", provider);
    s->report_dir = strdup(report_dir);
    s->tsm_dir = s->report_dir ? dir_of(s->report_dir) : NULL;
    s->config_dir = s->tsm_dir ? dir_of(s->tsm_dir) : NULL;
    pthread_rwlock_init(&s->rwsem, NULL);
    pthread_mutex_init(&s->items_lock, NULL);
    if (!s->config_dir)
        goto fail;
    /* quote.md §2.2: alloc_pages_exact(PAGE_ALIGN(size), GFP_KERNEL | __GFP_ZERO) */
    s->quote_buf = gk_alloc_pages(init, GK_PT_QUOTE_BUF_ALLOC_PAGES, (int)s->prof->quote_buf_order, GK_ZERO);
    if (!s->quote_buf)
        goto fail;
    s->quote_gpa = gk_pa(s->gk, s->quote_buf);
    if (fail_decrypt) {
        /* set_memory_decrypted failed: the pages are leaked on purpose, module load fails */
        *leaked_pages = 1ULL << s->prof->quote_buf_order;
        goto fail;
    }
    tdxm_set_page_state(s->m, s->quote_gpa, 1u << s->prof->quote_buf_order, TDXM_PAGE_SHARED);
    s->registered = 1;                                              /* tsm_register */
    *err = 0;
    return s;
fail:
    if (s->quote_buf && !fail_decrypt)
        gk_free_pages(init, s->quote_buf, (int)s->prof->quote_buf_order);
    free(s->report_dir);
    free(s->tsm_dir);
    free(s->config_dir);
    pthread_rwlock_destroy(&s->rwsem);
    pthread_mutex_destroy(&s->items_lock);
    free(s);
    return NULL;
}

void tsm_destroy(tsm_state *s)
{
    if (!s)
        return;
    if (host_of(s))
        vmm_host_clear_irq(host_of(s), s);   /* the handler goes with the kernel */
    while (s->items) {
        tsm_item *it = s->items;
        s->items = it->next;
        free(it); /* module exit: the guest memory (and the outblobs in it) may already be gone */
    }
    free(s->report_dir);
    free(s->tsm_dir);
    free(s->config_dir);
    pthread_rwlock_destroy(&s->rwsem);
    pthread_mutex_destroy(&s->items_lock);
    free(s);
}
