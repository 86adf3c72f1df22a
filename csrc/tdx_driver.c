/*
 * tdx_driver.c - the driver generations (see the header). Each generation's row of TDXM_PROFILES names
 * one ops table below; each ioctl path is one function whose steps carry the row numbers of its
 * reference table and read command numbers, request offsets and the errno map from the profile.
 */
#include "tdx_driver.h"
#include "tsm_report.h"
#include "gk_sched.h"
#include "vmm_host.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct td_ops td_ops;

struct td_kernel {
    gk_kernel *gk;
    tdxm_module *m;
    int driver;                 /* index of TDXM_PROFILES */
    const tdxm_profile *prof;
    const td_ops *ops;
    _Atomic int misalign;
    td_node *nodes;
    size_t nnodes;
    /* 6.16 (ref §2.5) */
    uint8_t *report_buf;   /* kzalloc(1024) at init, freed at exit */
    _Atomic int mr_lock;   /* 0 free, 1 held */
    _Atomic int mr_stale;  /* the tsm-mr cache of the LIVE registers is stale (under tsm_rwsem) */
    _Atomic int tsm_rwsem; /* tsm-mr's own rwsem (ref §2.5 "Read"): -1 a writer, else the readers */
    _Atomic int mr_outside_hold; /* mr_lock is held through td_mr_lock_try (a test playing another task) */
    tsm_state *tsm;        /* configfs-tsm and the quote provider (profiles with a quote path) */
    unsigned ninit_trace;  /* the points module init passed (td_init_trace) */
    gk_trace_entry init_trace[GK_TRACE_MAX];
    uint8_t fs_uuid[DEVTMPFS_UUID_LEN]; /* the device node's file system uuid (FS_IOC_GETFSUUID) */
    /* the ioctl quote paths (has_ioctl_quote: ref §2.2 v4 3/3, quote.md §2.6) */
    _Atomic int quote_lock;          /* the driver's quote_lock: mutex_lock, never interrupted */
    _Atomic int quote_outside_hold;  /* held through td_quote_lock_try (a test playing another task) */
    _Atomic int quote_work;          /* the notify IRQ queued quote_work (downstream) */
    _Atomic int quote_leaked;        /* v4: a call returned to user space holding quote_lock */
    struct quote_entry *quote_list;  /* downstream: requests on quote_list, under quote_lock */
    _Atomic unsigned v4_done;        /* v4: req_compl's done count (complete / reinit_completion) */
    vmm_host *irq_host;              /* the host our notify-IRQ handler is registered with */
};

/* A request of an ioctl quote path: the kmalloc'd entry (downstream) and its shared buffer. */
typedef struct quote_entry {
    struct quote_entry *next;
    uint8_t *obj;           /* kmalloc(sizeof(struct quote_entry)) in guest memory (downstream) */
    uint8_t *buf;           /* dma_alloc_coherent(PAGE_ALIGN(len)): zeroed, shared */
    uint64_t buf_len;       /* PAGE_ALIGN(len): R13 of GetQuote */
    int order;
    int valid;              /* 0: the caller left (signal); the work frees it when the host is done */
    _Atomic unsigned done;  /* struct completion */
} quote_entry;

struct td_process {
    td_kernel *tk;
    gk_mm *mm;
    gk_cache *cache;
    gk_task task;
    _Atomic uint32_t fds[FD_LIMIT]; /* 0 free, else node index + 1 | accmode << 24 */
    tsm_file *cfs[FD_LIMIT];        /* configfs files: their fds carry FD_CONFIGFS as the node */
    pthread_mutex_t trace_lock;
    unsigned ntrace;
    gk_trace_entry trace[GK_TRACE_MAX];
    _Atomic int partial_armed;
    _Atomic size_t partial_at;
    int exit_kind;      /* of the last syscall's TD exit, if any */
    uint64_t exit_gpa;
};

/* Per-call TD-exit record: kernel_tdcall fills it; the syscall entry copies it into the process. */
static __thread int call_exit_kind;
static __thread uint64_t call_exit_gpa;

/* ---- small helpers ------------------------------------------------------------------------------- */

static void ctx_init(gk_ctx *c, td_process *p)
{
    c->k = p->tk->gk;
    c->task = &p->task;
    c->mm = p->mm;
    c->cache = p->cache;
    c->bypass_filters = 0;
    c->ntrace = 0;
    c->partial_armed = &p->partial_armed;
    c->partial_at = &p->partial_at;
    call_exit_kind = TDXM_EXIT_NONE;
}

static long ctx_finish(gk_ctx *c, td_process *p, long ret)
{
    if (call_exit_kind != TDXM_EXIT_NONE) {
        p->exit_kind = call_exit_kind;
        p->exit_gpa = call_exit_gpa;
        call_exit_kind = TDXM_EXIT_NONE;
        ret = TD_RET_TD_EXIT;
    }
    pthread_mutex_lock(&p->trace_lock);
    p->ntrace = c->ntrace;
    memcpy(p->trace, c->trace, c->ntrace * sizeof c->trace[0]);
    pthread_mutex_unlock(&p->trace_lock);
    return ret;
}

int td_last_exit(td_process *p, uint64_t *gpa)
{
    *gpa = p->exit_gpa;
    return p->exit_kind;
}

/* TDCALL as the kernel issues it: a forced result (CONTRACT force_tdcall) never reaches the module.
 * The kernel's own pages are private and mapped, so a TD exit cannot happen unless the host unmapped
 * them; we report that as a status no driver maps to anything but -EIO. */
static uint64_t kernel_tdcall(td_kernel *tk, int leaf, uint64_t rcx, uint64_t rdx)
{
    uint64_t forced;
    if (gk_take_forced_tdcall(tk->gk, leaf, &forced))
        return forced;
    tdxm_result r = (leaf == TDG_MR_REPORT)        ? tdxm_mr_report(tk->m, rcx, rdx, 0)
                    : (leaf == TDG_MR_VERIFYREPORT) ? tdxm_mr_verifyreport(tk->m, rcx)
                                                    : tdxm_mr_rtmr_extend(tk->m, rcx, rdx);
    if (r.exit != TDXM_EXIT_NONE) {
        call_exit_kind = r.exit;
        call_exit_gpa = r.exit_gpa;
        return TDX_OPERAND_ADDR_RANGE_ERROR; /* any nonzero: the caller cleans up, then sees the exit */
    }
    return r.rax;
}

/* A command's mapping of a failing TDCALL status to -errno: its profile's table on status >> 32, else
 * its default (ref §2.4 row 4, §2.5 table). status_errno: the report command's (the generation's). */
static long cmd_errno(const tdxm_command *cmd, uint64_t status)
{
    uint64_t cls = status >> 32;
    for (int i = 0; i < cmd->nerrno; i++)
        if (cls == cmd->errno_class[i])
            return -cmd->errno_value[i];
    return -cmd->errno_default;
}
#define status_errno(prof, status) cmd_errno(&(prof)->cmds[TDXM_CMD_REPORT], (status))

/* The report command's request layout (ref §2.2, §2.4). */
#define REPORT_CMD(tk) ((tk)->prof->cmds[TDXM_CMD_REPORT])
#define REPORTDATA_OFF(tk) (REPORT_CMD(tk).fields[TDXM_FIELD_REPORT_REPORTDATA].offset)
#define TDREPORT_OFF(tk) (REPORT_CMD(tk).fields[TDXM_FIELD_REPORT_TDREPORT].offset)

/* ---- mr_lock (6.16): an interruptible mutex ------------------------------------------------------- */

static int mr_trylock(td_kernel *tk)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&tk->mr_lock, &expected, 1)) {
        gk_count_lock(tk->gk, 1);
        return 1;
    }
    return 0;
}

static void mr_unlock(td_kernel *tk)
{
    atomic_store(&tk->mr_lock, 0);
    gk_count_lock(tk->gk, 0);
}

/* mutex_lock_interruptible: the uncontended fast path never looks at signals; a contended take returns
 * -EINTR while the task has a signal pending, and otherwise waits, polling the signal flag so a signal
 * delivered by another thread interrupts the wait (ref §2.5 step 1). */
static int mr_lock_interruptible(td_kernel *tk, gk_task *task)
{
    void *token;
    int ret = -TDXM_EINTR;

    if (mr_trylock(tk))
        return 0;
    token = gk_block_begin(); /* the holder may need the caller's lock to finish */
    for (unsigned spins = 0;; spins++) {
        if (atomic_load(&task->signal_pending))
            break;
        if (spins < 64) {
            sched_yield();
        } else {
            struct timespec ts = {0, 20000}; /* 20 us: waiting threads leave the cores to others */
            nanosleep(&ts, NULL);
        }
        if (mr_trylock(tk)) {
            ret = 0;
            break;
        }
    }
    gk_block_end(token);
    return ret;
}

/* ---- tsm-mr's rwsem (6.16, ref §2.5 "Read"/"Write"): down_read_interruptible, down_write_killable - */

static void wait_a_little(unsigned spins)
{
    if (spins < 64) {
        sched_yield();
    } else {
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}

static int tsm_try_read(td_kernel *tk)
{
    int v = atomic_load(&tk->tsm_rwsem);
    while (v >= 0)
        if (atomic_compare_exchange_weak(&tk->tsm_rwsem, &v, v + 1))
            return 1;
    return 0;
}

/* A reader waits only for a writer; a signal pending while it would wait gives -EINTR (for example
 * while a sysfs writer holds the rwsem and waits for mr_lock). */
static int tsm_down_read_interruptible(td_kernel *tk, gk_task *task)
{
    if (tsm_try_read(tk))
        return 0;
    int ret = -TDXM_EINTR;
    void *token = gk_block_begin();
    for (unsigned spins = 0;; spins++) {
        if (atomic_load(&task->signal_pending))
            break;
        wait_a_little(spins);
        if (tsm_try_read(tk)) {
            ret = 0;
            break;
        }
    }
    gk_block_end(token);
    return ret;
}

static void tsm_up_read(td_kernel *tk) { atomic_fetch_sub(&tk->tsm_rwsem, 1); }

/* Killable: only a fatal signal interrupts it, and the model's signal_pending is an ordinary one, so
 * the writer waits until the readers and the other writer are gone. */
static void tsm_down_write_killable(td_kernel *tk)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&tk->tsm_rwsem, &expected, -1))
        return;
    void *token = gk_block_begin();
    for (unsigned spins = 0;; spins++) {
        wait_a_little(spins);
        expected = 0;
        if (atomic_compare_exchange_strong(&tk->tsm_rwsem, &expected, -1))
            break;
    }
    gk_block_end(token);
}

static void tsm_downgrade_write(td_kernel *tk) { atomic_store(&tk->tsm_rwsem, 1); }
static void tsm_up_write(td_kernel *tk) { atomic_store(&tk->tsm_rwsem, 0); }

int td_mr_lock_try(td_kernel *tk)
{
    if (!mr_trylock(tk))
        return 0;
    atomic_store(&tk->mr_outside_hold, 1);
    return 1;
}

/* Releases only the outside hold: never a hold a driver call in another thread owns. */
int td_mr_lock_release(td_kernel *tk)
{
    int expected = 1;
    if (!atomic_compare_exchange_strong(&tk->mr_outside_hold, &expected, 0))
        return -TDXM_EINVAL;
    mr_unlock(tk);
    return 0;
}

/* Host-side state sync (not a driver path): after the module's RTMRs were set from outside, the
 * tsm-mr cache of the LIVE registers is stale, as after the driver's own extend (ref §2.5). */
void td_mr_cache_stale(td_kernel *tk)
{
    atomic_store(&tk->mr_stale, 1);
}

/* the ioctl quote paths (below, after the report paths) */
static long gen_quote_v4(td_process *p, gk_ctx *c, uint64_t arg);
static long get_quote_downstream(td_process *p, gk_ctx *c, uint64_t arg);

/* ---- v4, 22 Apr 2022 (ref §2.2) ------------------------------------------------------------------- */

static long ioctl_v4(td_process *p, gk_ctx *c, uint32_t cmd, uint64_t arg)
{
    td_kernel *tk = p->tk;
    if (cmd == tk->prof->cmds[TDXM_CMD_GET_QUOTE].cmd && tk->prof->has_ioctl_quote)
        return gen_quote_v4(p, c, arg);                  /* TDX_CMD_GEN_QUOTE (3/3) */
    if (cmd != REPORT_CMD(tk).cmd)
        return -tk->prof->unknown_cmd_errno; /* dispatch: v4 only logs "not supported" and returns 0 */
    int mis = atomic_load(&tk->misalign);
    long ret = 0;
    /* 1: 64-B REPORTDATA, slab, not zeroed */
    uint8_t *reportdata = gk_kmalloc(c, GK_PT_REPORTDATA_KMALLOC, TDX_REPORTDATA_LEN,
                                     mis == TD_MISALIGN_REPORTDATA ? GK_MISALIGN : 0);
    if (!reportdata)
        return -TDXM_ENOMEM;
    /* 2: one zeroed page for the TDREPORT */
    uint8_t *tdreport = gk_alloc_pages(c, GK_PT_TDREPORT_GET_ZEROED_PAGE, 0,
                                       GK_ZERO | (mis == TD_MISALIGN_TDREPORT ? GK_MISALIGN : 0));
    if (!tdreport) {
        ret = -TDXM_ENOMEM;
        goto free_reportdata;
    }
    /* 3: 64 B from user offset 0 */
    if (gk_copy_from_user(c, GK_PT_REPORTDATA_COPY_FROM_USER, reportdata, arg + REPORTDATA_OFF(tk),
                          TDX_REPORTDATA_LEN)) {
        ret = -TDXM_EFAULT;
        goto free_both;
    }
    /* 4: tdx_mcall_tdreport returns the status with bits 31:0 cleared; nonzero -> put_user it as a
     * long into user bytes 0..7 and return -EIO, whatever put_user returned */
    uint64_t status = kernel_tdcall(tk, TDG_MR_REPORT, gk_pa(tk->gk, tdreport), gk_pa(tk->gk, reportdata));
    /* the driver tests the wrapper's result, not the raw status: a status with only bits 31:0 set
     * reads as success (proofs/v4_2022_04.py models the same) */
    uint64_t wrapper = status & LINUX_V4_STATUS_MASK;
    if (call_exit_kind != TDXM_EXIT_NONE) { /* no status at all: nothing to put_user */
        ret = -TDXM_EIO;
        goto free_both;
    }
    if (wrapper) {
        (void)gk_put_user_u64(c, GK_PT_STATUS_PUT_USER, arg + (uint64_t)tk->prof->status_writeback_off, wrapper);
        ret = -TDXM_EIO;
        goto free_both;
    }
    /* 5: 1024 B back over user offset 0 */
    if (gk_copy_to_user(c, GK_PT_TDREPORT_COPY_TO_USER, arg + TDREPORT_OFF(tk), tdreport, TDX_REPORT_LEN))
        ret = -TDXM_EFAULT;
free_both: /* 6 */
    gk_free_pages(c, tdreport, 0);
free_reportdata:
    gk_kfree(c, reportdata);
    return ret;
}

/* ---- upstream 6.2-6.15 (ref §2.4) ------------------------------------------------------------------ */

static long ioctl_v6_2(td_process *p, gk_ctx *c, uint32_t cmd, uint64_t arg)
{
    td_kernel *tk = p->tk;
    if (cmd != REPORT_CMD(tk).cmd)
        return -tk->prof->unknown_cmd_errno;
    int mis = atomic_load(&tk->misalign);
    long ret = 0;
    /* 1: kmalloc(64), not zeroed */
    uint8_t *reportdata = gk_kmalloc(c, GK_PT_REPORTDATA_KMALLOC, TDX_REPORTDATA_LEN,
                                     mis == TD_MISALIGN_REPORTDATA ? GK_MISALIGN : 0);
    if (!reportdata)
        return -TDXM_ENOMEM;
    /* 2: kzalloc(1024) */
    uint8_t *tdreport = gk_kmalloc(c, GK_PT_TDREPORT_KZALLOC, TDX_REPORT_LEN,
                                   GK_ZERO | (mis == TD_MISALIGN_TDREPORT ? GK_MISALIGN : 0));
    if (!tdreport) {
        ret = -TDXM_ENOMEM;
        goto out;
    }
    /* 3: 64 B from arg+0 */
    if (gk_copy_from_user(c, GK_PT_REPORTDATA_COPY_FROM_USER, reportdata,
                          arg + REPORTDATA_OFF(tk), TDX_REPORTDATA_LEN)) {
        ret = -TDXM_EFAULT;
        goto out;
    }
    /* 4: REPORT; status >> 32 == 0xC0000100 -> -EINVAL, any other nonzero -> -EIO */
    uint64_t status = kernel_tdcall(tk, TDG_MR_REPORT, gk_pa(tk->gk, tdreport), gk_pa(tk->gk, reportdata));
    if (status) {
        ret = status_errno(tk->prof, status);
        goto out;
    }
    /* 5: 1024 B to arg+64 */
    if (gk_copy_to_user(c, GK_PT_TDREPORT_COPY_TO_USER, arg + TDREPORT_OFF(tk), tdreport,
                        TDX_REPORT_LEN))
        ret = -TDXM_EFAULT;
out: /* 6 */
    gk_kfree(c, tdreport);
    gk_kfree(c, reportdata);
    return ret;
}

/* ---- 6.16+ (ref §2.5) ---------------------------------------------------------------------------- */

/* tdx_do_report with the lock held: REPORT with RCX = pa(buf), RDX = pa(buf+128). */
static long report_locked_v6_16(td_kernel *tk)
{
    uint64_t status = kernel_tdcall(tk, TDG_MR_REPORT, gk_pa(tk->gk, tk->report_buf),
                                    gk_pa(tk->gk, tk->report_buf + TDR_OFF_REPORTDATA));
    return status ? status_errno(tk->prof, status) : 0;
}

static long ioctl_v6_16(td_process *p, gk_ctx *c, uint32_t cmd, uint64_t arg)
{
    td_kernel *tk = p->tk;
    if (cmd != REPORT_CMD(tk).cmd)
        return -tk->prof->unknown_cmd_errno;
    /* 1: mr_lock, interruptibly */
    long ret = mr_lock_interruptible(tk, &p->task);
    if (ret)
        return ret;
    /* 2: 64 B from arg+0 straight into the cache's REPORTDATA (a fault zero-fills its tail); skipped
     * for a NULL arg (sockptr_is_null), so the REPORT uses the stale REPORTDATA and only step 4's
     * copy-out can fault (ref §2.5 "NULL arg") */
    if (arg != 0 && gk_copy_from_user(c, GK_PT_REPORTDATA_COPY_FROM_USER, tk->report_buf + TDR_OFF_REPORTDATA,
                                      arg + REPORTDATA_OFF(tk), TDX_REPORTDATA_LEN)) {
        ret = -TDXM_EFAULT;
        goto unlock;
    }
    /* 3: REPORT -> -ENXIO / -EBUSY / -EIO */
    if ((ret = report_locked_v6_16(tk)))
        goto unlock;
    /* 4: 1024 B from the cache to arg+64 */
    if (gk_copy_to_user(c, GK_PT_TDREPORT_COPY_TO_USER, arg + TDREPORT_OFF(tk), tk->report_buf,
                        TDX_REPORT_LEN))
        ret = -TDXM_EFAULT;
unlock: /* 5 */
    mr_unlock(tk);
    return ret;
}

/* Measurement read (ref §2.5 "Read"): 2 sysfs: count 0 or offset >= 48 reads nothing, count is clipped;
 * 3 tsm-mr's rwsem for reading (-EINTR); 4 a LIVE register with a stale cache: drop it, take it for
 * writing, and if still stale refresh with tdx_do_report (mr_lock, -EINTR; a REPORT using whatever sits
 * at buf+128), then downgrade; 5 copy from the cache (a refresh error is returned instead); 6 kernfs
 * copies to the user. A fresh or non-LIVE read never touches mr_lock. */
/* kernfs' bounce buffer (ref §2.5 "Read" #1, "Write" #1): kmalloc(size), which kfree_kernfs frees.
 * kmalloc(0) is ZERO_SIZE_PTR (no point); kmalloc(4097) is kmalloc-8k, beyond the model's slab
 * classes: failslab sees 8 KiB and an order-1 page allocation stands in (KMALLOC_8K). */
static const uint8_t kernfs_zero_size;
static void *kernfs_alloc(gk_ctx *c, size_t size)
{
    if (size == 0)
        return (void *)&kernfs_zero_size;
    if (size <= TDX_PAGE_SIZE)
        return gk_kmalloc(c, GK_PT_KERNFS_BUF_KMALLOC, size, 0);
    if (gk_should_fail(c, GK_PT_KERNFS_BUF_KMALLOC, GK_FAILSLAB, KMALLOC_8K, 0))
        return NULL;
    return gk_alloc_pages(c, GK_PT_KERNFS_BUF_KMALLOC, 1, GK_NOFAIL);
}

static void kernfs_free(gk_ctx *c, void *buf, size_t size)
{
    if (size > TDX_PAGE_SIZE)
        gk_free_pages(c, buf, 1);
    else if (size)
        gk_kfree(c, buf);
}

static long read_measurement_cached(td_process *p, gk_ctx *c, const td_node *node, uint64_t addr,
                                    int64_t count, int64_t offset);

static long read_measurement(td_process *p, gk_ctx *c, const td_node *node, uint64_t addr, int64_t count,
                             int64_t offset)
{
    size_t size = count < TDX_PAGE_SIZE ? (size_t)count : TDX_PAGE_SIZE;
    void *buf = kernfs_alloc(c, size);
    if (!buf)
        return -TDXM_ENOMEM;
    long ret = read_measurement_cached(p, c, node, addr, count, offset);
    kernfs_free(c, buf, size);
    return ret;
}

static long read_measurement_cached(td_process *p, gk_ctx *c, const td_node *node, uint64_t addr,
                                    int64_t count, int64_t offset)
{
    td_kernel *tk = p->tk;
    if (offset >= MEASUREMENT_LEN || count == 0)
        return 0;
    if (count > MEASUREMENT_LEN - offset)
        count = MEASUREMENT_LEN - offset;
    long ret = tsm_down_read_interruptible(tk, &p->task); /* 3 */
    if (ret)
        return ret;
    if (node->writable && atomic_load(&tk->mr_stale)) { /* 4: LIVE and stale */
        tsm_up_read(tk);
        tsm_down_write_killable(tk);
        if (atomic_load(&tk->mr_stale)) {
            ret = mr_lock_interruptible(tk, &p->task);
            if (!ret) {
                ret = report_locked_v6_16(tk);
                mr_unlock(tk);
                if (!ret)
                    atomic_store(&tk->mr_stale, 0);
            }
        }
        tsm_downgrade_write(tk);
    }
    uint8_t value[MEASUREMENT_LEN];
    memcpy(value, tk->report_buf + node->tdr_offset, MEASUREMENT_LEN); /* 5 */
    tsm_up_read(tk);
    if (ret)
        return ret;
    if (gk_copy_to_user(c, GK_PT_MEASUREMENT_COPY_TO_USER, addr, value + offset, (size_t)count))
        return -TDXM_EFAULT;
    return (long)count;
}

/* Measurement write (ref §2.5 "Write"), through kernfs, sysfs and tsm-mr before the driver:
 * 1 kernfs copies min(count, PAGE_SIZE) user bytes first (a short copy: -EFAULT, whatever the offset);
 * 2 sysfs: offset >= 48 -> -EFBIG, count clipped to 48 - offset, a count of 0 -> 0;
 * 3 tsm-mr: offset != 0 or clipped count != 48 -> -EINVAL;
 * 5 tdx_do_extend: lock, the first 48 bytes to buf+128, leaf 2 with RCX = pa(buf+128), RDX = index;
 * 6 success marks the cache stale and returns 48. */
static long write_measurement_copied(td_process *p, gk_ctx *c, const td_node *node, uint64_t addr,
                                     int64_t count, int64_t offset);

static long write_measurement(td_process *p, gk_ctx *c, const td_node *node, uint64_t addr, int64_t count,
                              int64_t offset)
{
    /* 0: kernfs kmallocs min(count, PAGE_SIZE) + 1 (the terminating NUL) first */
    size_t size = (count < TDX_PAGE_SIZE ? (size_t)count : TDX_PAGE_SIZE) + 1;
    void *buf = kernfs_alloc(c, size);
    if (!buf)
        return -TDXM_ENOMEM;
    long ret = write_measurement_copied(p, c, node, addr, count, offset);
    kernfs_free(c, buf, size);
    return ret;
}

static long write_measurement_copied(td_process *p, gk_ctx *c, const td_node *node, uint64_t addr,
                                     int64_t count, int64_t offset)
{
    td_kernel *tk = p->tk;
    size_t len = count < TDX_PAGE_SIZE ? (size_t)count : TDX_PAGE_SIZE;
    uint8_t kbuf[TDX_PAGE_SIZE];
    /* 1: a copy of 0 bytes passes no usercopy point (iterate_and_advance returns before it) */
    if (len && gk_copy_from_user(c, GK_PT_MEASUREMENT_COPY_FROM_USER, kbuf, addr, len))
        return -TDXM_EFAULT;
    /* 2 */
    if (offset >= MEASUREMENT_LEN)
        return -TDXM_EFBIG;
    if (len > (size_t)(MEASUREMENT_LEN - offset))
        len = (size_t)(MEASUREMENT_LEN - offset);
    if (len == 0)
        return 0;
    /* 3 */
    if (offset != 0 || len != MEASUREMENT_LEN)
        return -TDXM_EINVAL;
    uint8_t *data = kbuf;
    uint64_t index = (node->tdr_offset - TDR_OFF_RTMR0) / TDX_SHA384_LEN;
    tsm_down_write_killable(tk); /* 4 */
    long ret = mr_lock_interruptible(tk, &p->task); /* 5: tdx_do_extend */
    if (ret) {
        tsm_up_write(tk);
        return ret;
    }
    uint8_t *extend_buf = tk->report_buf + TDR_OFF_REPORTDATA; /* 64-B aligned, private */
    memcpy(extend_buf, data, TDX_EXTEND_DATA_LEN);
    uint64_t status = kernel_tdcall(tk, TDG_MR_RTMR_EXTEND, gk_pa(tk->gk, extend_buf), index);
    if (status) {
        ret = status_errno(tk->prof, status);
    } else {
        atomic_store(&tk->mr_stale, 1); /* 6 */
        ret = MEASUREMENT_LEN;
    }
    mr_unlock(tk);
    tsm_up_write(tk);
    return ret;
}

/* ---- Intel's out-of-tree driver (quote.md §2.6; intel/td-partitioning tdx-guest.c @1b3c1894) ----- */

/* tdx_verify_report: the REPORTMACSTRUCT through TDG.MR.VERIFYREPORT (ref §4.7); the raw status goes
 * back to err_code whatever it is, and a copy-out fault overrides the -EIO. */
static long verify_report_downstream(td_process *p, gk_ctx *c, uint64_t arg)
{
    td_kernel *tk = p->tk;
    const tdxm_command *vc = &tk->prof->cmds[TDXM_CMD_VERIFY_REPORT];
    long ret = 0;
    /* 1: kmalloc(256): a power of two, so 256-aligned as the leaf requires */
    uint8_t *mac = gk_kmalloc(c, GK_PT_REPORTMAC_KMALLOC, TDX_REPORTMACSTRUCT_LEN, 0);
    if (!mac)
        return -TDXM_ENOMEM;
    /* 2: 256 B from arg + 0 */
    if (gk_copy_from_user(c, GK_PT_REPORTMAC_COPY_FROM_USER, mac,
                          arg + vc->fields[TDXM_FIELD_VERIFY_REPORT_REPORTMAC].offset, TDX_REPORTMACSTRUCT_LEN)) {
        ret = -TDXM_EFAULT;
        goto out;
    }
    /* 3: leaf 22; any nonzero status -> -EIO */
    uint64_t err = kernel_tdcall(tk, TDG_MR_VERIFYREPORT, gk_pa(tk->gk, mac), 0);
    if (call_exit_kind != TDXM_EXIT_NONE) /* no status at all: nothing to copy out */
        goto out;
    if (err)
        ret = cmd_errno(vc, err);
    /* 4: the status to err_code (arg + 256), 8 B */
    if (gk_copy_to_user(c, GK_PT_ERR_CODE_COPY_TO_USER, arg + vc->fields[TDXM_FIELD_VERIFY_REPORT_ERR_CODE].offset,
                        &err, sizeof err))
        ret = -TDXM_EFAULT;
out: /* 5 */
    gk_kfree(c, mac);
    return ret;
}

/* tdx_extend_rtmr: the index byte first, RTMR 0 and 1 refused, then the 48 B through leaf 2. */
static long extend_rtmr_downstream(td_process *p, gk_ctx *c, uint64_t arg)
{
    td_kernel *tk = p->tk;
    const tdxm_command *ec = &tk->prof->cmds[TDXM_CMD_EXTEND_RTMR];
    /* 1: the index byte from arg + 48 */
    uint8_t index = 0;
    if (gk_copy_from_user(c, GK_PT_RTMR_INDEX_COPY_FROM_USER, &index,
                          arg + ec->fields[TDXM_FIELD_EXTEND_RTMR_INDEX].offset, 1))
        return -TDXM_EFAULT;
    /* 2: RTMR 0 and 1 belong to the BIOS and the kernel (TDX_DOWNSTREAM_MIN_RTMR: -EINVAL) */
    if (index < TDX_DOWNSTREAM_MIN_RTMR)
        return -TDXM_EINVAL;
    /* 3: kmalloc(ALIGN(48, 64)): 64-aligned as the leaf requires */
    uint8_t *data = gk_kmalloc(c, GK_PT_EXTEND_DATA_KMALLOC,
                               (TDX_EXTEND_DATA_LEN + TDX_EXTEND_ALIGN - 1) / TDX_EXTEND_ALIGN * TDX_EXTEND_ALIGN, 0);
    if (!data)
        return -TDXM_ENOMEM;
    long ret;
    /* 4: 48 B from arg + 0 */
    if (gk_copy_from_user(c, GK_PT_EXTEND_DATA_COPY_FROM_USER, data,
                          arg + ec->fields[TDXM_FIELD_EXTEND_RTMR_DATA].offset, TDX_EXTEND_DATA_LEN)) {
        ret = -TDXM_EFAULT;
        goto out;
    }
    /* 5: leaf 2 with RCX = pa(data), RDX = index: INVALID -> -EINVAL, BUSY -> -EBUSY, else -EIO */
    uint64_t status = kernel_tdcall(tk, TDG_MR_RTMR_EXTEND, gk_pa(tk->gk, data), index);
    ret = status ? cmd_errno(ec, status) : 0;
out: /* 6 */
    gk_kfree(c, data);
    return ret;
}

/* tdx_guest_ioctl: GET_REPORT0 is 6.2's tdx_get_report0; other commands -ENOTTY. */
static long ioctl_intel_downstream(td_process *p, gk_ctx *c, uint32_t cmd, uint64_t arg)
{
    const tdxm_profile *prof = p->tk->prof;
    if (cmd == prof->cmds[TDXM_CMD_VERIFY_REPORT].cmd)
        return verify_report_downstream(p, c, arg);
    if (cmd == prof->cmds[TDXM_CMD_EXTEND_RTMR].cmd)
        return extend_rtmr_downstream(p, c, arg);
    if (cmd == prof->cmds[TDXM_CMD_GET_QUOTE].cmd)
        return get_quote_downstream(p, c, arg);
    return ioctl_v6_2(p, c, cmd, arg);
}

/* ---- the ioctl quote paths: quote_lock, the per-request shared buffer, the notify IRQ ------------- */

static uint64_t get64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint32_t get32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }

static int qlock_trylock(td_kernel *tk)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&tk->quote_lock, &expected, 1)) {
        gk_count_lock(tk->gk, 1);
        return 1;
    }
    return 0;
}

static void qlock_release(td_kernel *tk)
{
    atomic_store(&tk->quote_lock, 0);
    gk_count_lock(tk->gk, 0);
}

static void run_quote_work(td_kernel *tk);

/* mutex_lock: uninterruptible, so a signal does not end the wait (v4's leaked hold blocks every later
 * request for good, as the patch does). */
static void qlock_lock(td_kernel *tk)
{
    if (qlock_trylock(tk))
        return;
    void *token = gk_block_begin();
    for (unsigned spins = 0; !qlock_trylock(tk); spins++)
        wait_a_little(spins);
    gk_block_end(token);
}

/* mutex_unlock; the work the IRQ queued while the lock was held runs now (its worker waited for it). */
static void qlock_unlock(td_kernel *tk)
{
    qlock_release(tk);
    run_quote_work(tk);
}

static uint64_t entry_status(const quote_entry *e)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* the host wrote the data before the header (smp_wmb) */
    return get64(e->buf + QUOTE_HDR_OFF_STATUS);
}

/* alloc_quote_entry: kmalloc the entry (downstream only), then dma_alloc_coherent(PAGE_ALIGN(len)),
 * zeroed and converted to shared; NULL is -ENOMEM. An order above the largest block fails before any
 * injection point (alloc_pages warns and returns NULL). */
static quote_entry *entry_alloc(td_kernel *tk, gk_ctx *c, uint64_t len, int with_obj)
{
    quote_entry *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->valid = 1;
    if (with_obj && !(e->obj = gk_kmalloc(c, GK_PT_QUOTE_ENTRY_KMALLOC, QUOTE_ENTRY_SIZE, 0))) {
        free(e);
        return NULL;
    }
    e->buf_len = (len + TDX_PAGE_SIZE - 1) & ~(uint64_t)(TDX_PAGE_SIZE - 1);
    while (e->buf_len && ((uint64_t)TDX_PAGE_SIZE << e->order) < e->buf_len && e->order <= GK_MAX_ORDER)
        e->order++;
    if (e->buf_len == 0 || len > e->buf_len || e->order > GK_MAX_ORDER ||
        !(e->buf = gk_alloc_pages(c, GK_PT_QUOTE_BUF_DMA_ALLOC_COHERENT, e->order, GK_ZERO))) {
        gk_kfree(c, e->obj);
        free(e);
        return NULL;
    }
    tdxm_set_page_state(tk->m, gk_pa(tk->gk, e->buf), 1u << e->order, TDXM_PAGE_SHARED);
    return e;
}

/* dma_free_coherent: back to private, then freed (whether or not the host still owns it). */
static void entry_free(td_kernel *tk, gk_ctx *c, quote_entry *e)
{
    tdxm_set_page_state(tk->m, gk_pa(tk->gk, e->buf), 1u << e->order, TDXM_PAGE_PRIVATE);
    gk_free_pages(c, e->buf, e->order);
    gk_kfree(c, e->obj);
    free(e);
}

static void list_del_entry(td_kernel *tk, quote_entry *e)
{
    for (quote_entry **pp = &tk->quote_list; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            return;
        }
}

/* quote_callback_handler (downstream's quote_work): under quote_lock, every entry the host is done
 * with is completed, or freed if its caller left. */
static void run_quote_work(td_kernel *tk)
{
    while (atomic_load(&tk->quote_work)) {
        if (!qlock_trylock(tk))
            return; /* the holder runs it at unlock */
        atomic_store(&tk->quote_work, 0);
        gk_ctx c = {.k = tk->gk};
        for (quote_entry **pp = &tk->quote_list; *pp;) {
            quote_entry *e = *pp;
            if (entry_status(e) == GET_QUOTE_IN_FLIGHT) {
                pp = &e->next;
            } else if (e->valid) {
                atomic_fetch_add(&e->done, 1); /* complete() */
                pp = &e->next;
            } else {
                *pp = e->next;
                entry_free(tk, &c, e);
            }
        }
        qlock_release(tk);
    }
}

/* The notify vector's handler: downstream queues quote_work (attestation_callback_handler); v4's
 * handler completes req_compl whatever the buffer says. */
static void notify_v4(td_kernel *tk) { atomic_fetch_add(&tk->v4_done, 1); }

static void notify_downstream(td_kernel *tk)
{
    atomic_store(&tk->quote_work, 1); /* queue_work(quote_wq, &quote_work) */
    run_quote_work(tk);
}

static void notify_irq(void *ctx, unsigned vector);

/* Boot (ref §2.2 v4 2/3 tdx_early_init; td-partitioning tdx_arch_init): SetupEventNotifyInterrupt
 * with the profile's vector, a failure only logged; then the handler (request_irq /
 * tdx_setup_ev_notify_handler). Without a host at boot no vector is registered, and a request later
 * waits until a signal (docs/CONTRACT.md). */
static void notify_setup(td_kernel *tk)
{
    tdxm_vmcall_regs regs = {0, TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, tk->prof->notify_vector, 0, 0, 0};
    tdxm_vp_vmcall(tk->m, &regs); /* R10 != 0: "Setting event notification interrupt failed" */
    vmm_host *h = vmm_host_of(tk->m);
    if (h) {
        vmm_host_set_irq(h, notify_irq, tk);
        tk->irq_host = h;
    }
}

static uint64_t get_quote_hcall(td_kernel *tk, const quote_entry *e)
{
    tdxm_vmcall_regs regs = {0, TDVMCALL_GET_QUOTE, gk_pa(tk->gk, e->buf) | TDX_GPA_SHARED_BIT, e->buf_len, 0, 0};
    tdxm_vp_vmcall(tk->m, &regs);
    return regs.r10;
}

/* Wait for a completion's done count: 0 when it came, -EINTR on a signal, 1 when timeout_ns (0: none)
 * passed. The vCPU idles: a virtual clock jumps to the host's next completion (or the timeout); a real
 * one sleeps toward it; with nothing due the wait only ends on a signal. */
static long wait_for_notify(td_kernel *tk, gk_task *task, _Atomic unsigned *done, uint64_t timeout_ns)
{
    vmm_host *h = vmm_host_of(tk->m);
    vmm_clock *clk = h ? vmm_host_clock(h) : NULL;
    uint64_t start = clk ? vmm_clock_now_ns(clk) : 0;
    /* saturated as the clock is: a timeout past the clock's end still expires there */
    uint64_t deadline = vmm_clock_add_ns(start, timeout_ns);
    long ret;
    void *token = gk_block_begin();
    for (;;) {
        run_quote_work(tk);
        unsigned d = atomic_load(done);
        if (d > 0 && atomic_compare_exchange_strong(done, &d, d - 1)) {
            ret = 0;
            break;
        }
        if (atomic_load(&task->signal_pending)) {
            ret = -TDXM_EINTR;
            break;
        }
        h = vmm_host_of(tk->m);
        if (!h) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
            continue;
        }
        clk = vmm_host_clock(h);
        uint64_t now = vmm_clock_now_ns(clk);
        if (timeout_ns && now >= deadline) {
            ret = 1;
            break;
        }
        uint64_t next = vmm_host_next_due_ns(h);
        if (timeout_ns && deadline < next)
            next = deadline;
        if (!vmm_clock_is_real(clk) && next != UINT64_MAX) {
            if (next > now)
                vmm_clock_sleep_ns(clk, next - now);
            else
                vmm_clock_poll(clk);
        } else if (vmm_clock_is_real(clk)) {
            uint64_t step = 1000000; /* 1 ms slices, so a signal ends the wait promptly */
            if (next > now && next - now < step)
                step = next - now;
            vmm_clock_sleep_ns(clk, next > now ? step : 0);
        } else {
            struct timespec ts = {0, 50000}; /* nothing due: wait for a signal or another thread */
            nanosleep(&ts, NULL);
            vmm_clock_poll(clk);
        }
    }
    gk_block_end(token);
    return ret;
}

/* Intel downstream tdx_get_quote (quote.md §2.6; td-partitioning tdx-guest.c @1b3c1894). */
static long get_quote_downstream(td_process *p, gk_ctx *c, uint64_t arg)
{
    td_kernel *tk = p->tk;
    const tdxm_command *qc = &tk->prof->cmds[TDXM_CMD_GET_QUOTE];
    uint8_t req[TDX_QUOTE_REQ_LEN];
    /* 1: the 16-B struct tdx_quote_req */
    if (gk_copy_from_user(c, GK_PT_QUOTE_REQ_COPY_FROM_USER, req, arg, qc->request_len))
        return -TDXM_EFAULT;
    uint64_t ubuf = get64(req + qc->fields[TDXM_FIELD_GET_QUOTE_BUF].offset);
    uint64_t len = get64(req + qc->fields[TDXM_FIELD_GET_QUOTE_LEN].offset);
    /* 2: a zero length */
    if (len == 0)
        return -TDXM_EINVAL;
    /* 3: the entry and its shared buffer */
    quote_entry *e = entry_alloc(tk, c, len, 1);
    if (!e)
        return -TDXM_ENOMEM;
    /* 4: the whole len from req.buf */
    if (gk_copy_from_user(c, GK_PT_QUOTE_DATA_COPY_FROM_USER, e->buf, ubuf, len)) {
        entry_free(tk, c, e);
        return -TDXM_EFAULT;
    }
    /* 5: GetQuote under quote_lock (R12 = the shared GPA, R13 = PAGE_ALIGN(len)); R10 != 0 -> -EIO */
    qlock_lock(tk);
    if (get_quote_hcall(tk, e) != TDVMCALL_STATUS_SUCCESS) {
        qlock_unlock(tk);
        entry_free(tk, c, e);
        return -TDXM_EIO;
    }
    /* 6: on quote_list; quote_lock is not held while waiting, so requests run in parallel */
    quote_entry **pp = &tk->quote_list;
    while (*pp)
        pp = &(*pp)->next;
    *pp = e;
    qlock_unlock(tk);
    /* 7: wait_for_completion_interruptible, no timeout; a signal orphans the entry while the host
     * still owns the buffer (terminate_quote_request), -EINTR */
    if (wait_for_notify(tk, &p->task, &e->done, 0) != 0) {
        qlock_lock(tk);
        if (entry_status(e) == GET_QUOTE_IN_FLIGHT) {
            e->valid = 0;
        } else {
            list_del_entry(tk, e);
            entry_free(tk, c, e);
        }
        qlock_unlock(tk);
        return -TDXM_EINTR;
    }
    /* 8: the whole len back to req.buf; the -EFAULT of a fault is dropped (quote.md §2.6 step 7) */
    (void)gk_copy_to_user(c, GK_PT_QUOTE_DATA_COPY_TO_USER, ubuf, e->buf, len);
    /* 9: del_quote_entry */
    qlock_lock(tk);
    list_del_entry(tk, e);
    entry_free(tk, c, e);
    qlock_unlock(tk);
    return 0;
}

/* v4 3/3 tdx_get_tdquote as posted 22 Apr 2022 (ref §2.2), its defects kept: the early returns leave
 * quote_lock held, a timed-out or interrupted request frees the buffer the host still owns, and
 * PAGE_ALIGN(len) bytes go back to the user before the status is checked. */
static long gen_quote_v4(td_process *p, gk_ctx *c, uint64_t arg)
{
    td_kernel *tk = p->tk;
    const tdxm_command *qc = &tk->prof->cmds[TDXM_CMD_GET_QUOTE];
    uint8_t req[TDX_GEN_QUOTE_REQ_LEN];
    long ret;
    /* 1: quote_lock (mutex_lock): held for good by a call that returned with it, the task hangs */
    if (!qlock_trylock(tk)) {
        if (atomic_load(&tk->quote_leaked))
            return TD_RET_HUNG;
        qlock_lock(tk);
    }
    /* 2: reinit_completion(&req_compl) */
    atomic_store(&tk->v4_done, 0);
    /* 3: the 24-B request; a fault returns with quote_lock held */
    if (gk_copy_from_user(c, GK_PT_QUOTE_REQ_COPY_FROM_USER, req, arg, qc->request_len)) {
        atomic_store(&tk->quote_leaked, 1);
        return -TDXM_EFAULT;
    }
    uint64_t ubuf = get64(req + qc->fields[TDXM_FIELD_GET_QUOTE_BUF].offset);
    uint64_t len = get64(req + qc->fields[TDXM_FIELD_GET_QUOTE_LEN].offset);
    uint32_t timeout_ms = get32(req + qc->fields[TDXM_FIELD_GET_QUOTE_TIMEOUT].offset);
    /* 4: len <= 0 || timeout <= 0 (both unsigned: == 0) -> -EINVAL, quote_lock held */
    if (len == 0 || timeout_ms == 0) {
        atomic_store(&tk->quote_leaked, 1);
        return -TDXM_EINVAL;
    }
    /* 5: dma_alloc_coherent(PAGE_ALIGN(len), GFP_KERNEL | __GFP_ZERO) */
    quote_entry *e = entry_alloc(tk, c, len, 0);
    if (!e) {
        ret = -TDXM_ENOMEM;
        goto unlock;
    }
    /* 6: len bytes from req.buf */
    if (gk_copy_from_user(c, GK_PT_QUOTE_DATA_COPY_FROM_USER, e->buf, ubuf, len)) {
        ret = -TDXM_EFAULT;
        goto out;
    }
    /* 7: tdx_hcall_get_quote(buf, PAGE_ALIGN(len)); a nonzero R10 is put_user()ed as a long to arg + 0
     * (the request's buf field) and the result overwritten: -EIO */
    uint64_t r10 = get_quote_hcall(tk, e);
    if (r10 != TDVMCALL_STATUS_SUCCESS) {
        (void)gk_put_user_u64(c, GK_PT_QUOTE_ERR_PUT_USER, arg, r10);
        ret = -TDXM_EIO;
        goto out;
    }
    /* 8: wait_for_completion_interruptible_timeout(msecs_to_jiffies(timeout)) (HZ = 1000: jiffies are
     * ms, a choice); <= 0 (timed out, or a signal) -> -EIO, and the buffer is freed below while the
     * host may still own it */
    if (wait_for_notify(tk, &p->task, &tk->v4_done, (uint64_t)timeout_ms * 1000000ULL) != 0) {
        ret = -TDXM_EIO;
        goto out;
    }
    /* 9: PAGE_ALIGN(len) bytes back to req.buf, before the status check */
    if (gk_copy_to_user(c, GK_PT_QUOTE_DATA_COPY_TO_USER, ubuf, e->buf, e->buf_len)) {
        ret = -TDXM_EFAULT;
        goto out;
    }
    /* 10: status != 0 -> -EIO */
    ret = entry_status(e) == GET_QUOTE_SUCCESS ? 0 : -TDXM_EIO;
out: /* 11: dma_free_coherent, unlock */
    entry_free(tk, c, e);
unlock:
    qlock_unlock(tk);
    return ret;
}

int td_locks_leaked(td_kernel *tk) { return atomic_load(&tk->quote_leaked); }

int td_quote_lock_try(td_kernel *tk)
{
    if (!tk->prof->has_ioctl_quote || !qlock_trylock(tk))
        return 0;
    atomic_store(&tk->quote_outside_hold, 1);
    return 1;
}

int td_quote_lock_release(td_kernel *tk)
{
    int expected = 1;
    if (!atomic_compare_exchange_strong(&tk->quote_outside_hold, &expected, 0))
        return -TDXM_EINVAL;
    qlock_unlock(tk);
    return 0;
}

/* tdx_mr_init (ref §2.5 "Init order"): allocate the report buffer, then one REPORT with zero
 * REPORTDATA; a failure aborts the load. */
static int init_v6_16(td_kernel *tk, gk_ctx *cp, int misaligned_report_buf, uint64_t *init_status)
{
    tk->report_buf = gk_kmalloc(cp, GK_PT_REPORT_BUF_KZALLOC, TDX_REPORT_LEN,
                                GK_ZERO | (misaligned_report_buf ? GK_MISALIGN : 0));
    if (!tk->report_buf)
        return -TDXM_ENOMEM;
    call_exit_kind = TDXM_EXIT_NONE;
    mr_trylock(tk); /* tdx_do_report takes mr_lock; nobody else can hold it yet */
    *init_status = kernel_tdcall(tk, TDG_MR_REPORT, gk_pa(tk->gk, tk->report_buf),
                                 gk_pa(tk->gk, tk->report_buf + TDR_OFF_REPORTDATA));
    mr_unlock(tk);
    long ret = *init_status ? status_errno(tk->prof, *init_status) : 0;
    call_exit_kind = TDXM_EXIT_NONE; /* an exit at init (pages unmapped by the host) is -EIO */
    if (ret) {
        gk_kfree(cp, tk->report_buf);
        tk->report_buf = NULL;
        return (int)ret;
    }
    /* tsm_mr_create_attribute_group (ref §2.5 "Init order" 1.3): both kzallocs are made before either
     * is checked; a failure unwinds tdx_mr_init (the report buffer too) and the load fails -ENOMEM */
    void *attrs = gk_kmalloc(cp, GK_PT_TSM_MR_ATTRS_KZALLOC, TSM_MR_ATTRS_SIZE, GK_ZERO);
    void *ctx = gk_kmalloc(cp, GK_PT_TSM_MR_CTX_KZALLOC, TSM_MR_CTX_SIZE, GK_ZERO);
    if (!attrs || !ctx) {
        gk_kfree(cp, attrs);
        gk_kfree(cp, ctx);
        gk_kfree(cp, tk->report_buf);
        tk->report_buf = NULL;
        return -TDXM_ENOMEM;
    }
    atomic_store(&tk->mr_stale, 1); /* the tsm-mr cache starts stale */
    return 0;
}

/* ---- one ops table per generation's code; TDXM_PROFILES[i].ops picks one --------------------------- */

typedef long (*td_ioctl_fn)(td_process *p, gk_ctx *c, uint32_t cmd, uint64_t arg);
typedef long (*td_file_fn)(td_process *p, gk_ctx *c, const td_node *node, uint64_t addr, int64_t count,
                           int64_t offset);
struct td_ops {
    td_ioctl_fn ioctl;
    /* module init beyond misc_register; NULL: nothing can fail. Returns 0 or -errno. */
    int (*init)(td_kernel *tk, gk_ctx *init, int misaligned_report_buf, uint64_t *init_status);
    td_file_fn read_measurement, write_measurement; /* NULL: no measurement files */
    void (*notify)(td_kernel *tk); /* the notify vector's handler (ioctl quote paths); NULL: none */
};

static const td_ops ops_v4 = {.ioctl = ioctl_v4, .notify = notify_v4};
static const td_ops ops_v6_2 = {.ioctl = ioctl_v6_2};
static const td_ops ops_v6_16 = {.ioctl = ioctl_v6_16, .init = init_v6_16,
                                 .read_measurement = read_measurement, .write_measurement = write_measurement};
static const td_ops ops_intel_downstream = {.ioctl = ioctl_intel_downstream, .notify = notify_downstream};

static const td_ops *const OPS[TDXM_NUM_OPS] = {
    [TDXM_OPS_V4] = &ops_v4,
    [TDXM_OPS_V6_2] = &ops_v6_2,
    [TDXM_OPS_V6_16] = &ops_v6_16,
    [TDXM_OPS_INTEL_DOWNSTREAM] = &ops_intel_downstream,
};

/* ---- the commands do_vfs_ioctl answers before any driver (ref §1; tdxmodel.profiles.VfsCommand) ---- */

/* tmpfs draws a random uuid per mount (mm/shmem.c); the model draws it from the seed: two splitmix64
 * steps, version 4 and the RFC 4122 variant (tdxmodel.profiles.devtmpfs_uuid, the same on both backends) */
static void devtmpfs_uuid(uint64_t seed, uint8_t out[DEVTMPFS_UUID_LEN])
{
    uint64_t x = seed;
    for (int i = 0; i < 2; i++) {
        x += 0x9E3779B97F4A7C15ULL;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        for (int b = 0; b < 8; b++)
            out[8 * i + b] = (uint8_t)(z >> (8 * b));
    }
    out[6] = (uint8_t)((out[6] & 0x0F) | 0x40);
    out[8] = (uint8_t)((out[8] & 0x3F) | 0x80);
}

static const td_node *fd_node(td_process *p, int fd, int *accmode);

/* FICLONE's checks up to the first that fails on a character device (fs/remap_range.c): the source
 * fd (fdget takes an unsigned int), the superblock, then "not a regular file". */
static long vfs_clone(td_process *p, uint64_t srcfd)
{
    uint32_t fd = (uint32_t)srcfd;
    int accmode = 0;
    const td_node *src = fd < FD_LIMIT ? fd_node(p, (int)fd, &accmode) : NULL;
    if (!src)
        return -TDXM_EBADF;
    return src->kind == TD_NODE_DEVICE ? -TDXM_EINVAL : -TDXM_EXDEV;
}

static long vfs_ioctl(td_process *p, const tdxm_vfs *v, uint64_t arg)
{
    uint8_t buf[TDX_PAGE_SIZE];
    switch (v->action) {
    case TDXM_VFS_OK:
        return 0;
    case TDXM_VFS_ERRNO:
        return -v->err;
    case TDXM_VFS_GET_INT:
    case TDXM_VFS_FIOASYNC: {
        uint32_t on = 0;
        if (gk_user_read(p->mm, arg, &on, sizeof on))
            return -TDXM_EFAULT;
        /* FASYNC would change and the misc device has no fasync (it is never on, so only on != 0) */
        return v->action == TDXM_VFS_FIOASYNC && on ? -TDXM_ENOTTY : 0;
    }
    case TDXM_VFS_PUT_INT: {
        uint32_t value = v->value;
        return gk_user_put(p->mm, arg, &value, sizeof value);
    }
    case TDXM_VFS_FSUUID:
        buf[0] = DEVTMPFS_UUID_LEN;
        memcpy(buf + 1, p->tk->fs_uuid, DEVTMPFS_UUID_LEN);
        return gk_user_write(p->mm, arg, buf, FSUUID2_LEN) ? -TDXM_EFAULT : 0;
    case TDXM_VFS_CLONE:
        return vfs_clone(p, arg);
    case TDXM_VFS_CLONE_RANGE: {
        if (gk_user_read(p->mm, arg, buf, FILE_CLONE_RANGE_LEN))
            return -TDXM_EFAULT;
        uint64_t src_fd;
        memcpy(&src_fd, buf, sizeof src_fd);
        return vfs_clone(p, src_fd);
    }
    case TDXM_VFS_DEDUPE: {
        uint16_t count;
        uint64_t at = arg + FILE_DEDUPE_RANGE_OFF_COUNT;
        if (at < arg || gk_user_read(p->mm, at, &count, sizeof count))
            return -TDXM_EFAULT;
        size_t size = FILE_DEDUPE_RANGE_LEN + (size_t)FILE_DEDUPE_RANGE_INFO_LEN * count;
        if (size > TDX_PAGE_SIZE)
            return -TDXM_ENOMEM;
        if (gk_user_read(p->mm, arg, buf, size)) /* memdup_user */
            return -TDXM_EFAULT;
        return -TDXM_EINVAL; /* vfs_dedupe_file_range: not a regular file */
    }
    }
    return -TDXM_ENOTTY;
}

static const tdxm_vfs *vfs_command(const tdxm_profile *prof, uint32_t cmd)
{
    for (int i = 0; i < prof->nvfs; i++)
        if (prof->vfs[i].cmd == cmd)
            return &prof->vfs[i];
    return NULL;
}

static void notify_irq(void *ctx, unsigned vector)
{
    td_kernel *tk = ctx;
    if (vector == tk->prof->notify_vector && tk->ops->notify)
        tk->ops->notify(tk);
}

/* ---- kernel and processes ------------------------------------------------------------------------- */

td_kernel *td_kernel_create(tdxm_module *m, int driver, uint64_t seed, const td_node *nodes, size_t nnodes, unsigned init_fail_nth,
                            int misaligned_report_buf, int *err, uint64_t *init_status,
                            const char *tsm_report_dir, const char *tsm_provider, int fail_decrypt,
                            uint64_t *leaked_pages)
{
    *err = -TDXM_ENOMEM;
    *init_status = TDX_SUCCESS;
    *leaked_pages = 0;
    if (driver < 0 || driver >= TDXM_NUM_PROFILES || !OPS[TDXM_PROFILES[driver].ops]) {
        *err = -TDXM_EINVAL;
        return NULL;
    }
    td_kernel *tk = calloc(1, sizeof *tk);
    if (!tk)
        return NULL;
    tk->m = m;
    tk->driver = driver;
    tk->prof = &TDXM_PROFILES[driver];
    tk->ops = OPS[tk->prof->ops];
    tk->gk = gk_kernel_create(m, seed);
    devtmpfs_uuid(seed, tk->fs_uuid);
    tk->nodes = calloc(nnodes ? nnodes : 1, sizeof *tk->nodes);
    if (!tk->gk || !tk->nodes)
        goto fail;
    for (size_t i = 0; i < nnodes; i++) {
        tk->nodes[i] = nodes[i];
        tk->nodes[i].path = strdup(nodes[i].path);
        tk->nnodes = i + 1;
        if (!tk->nodes[i].path)
            goto fail;
    }
    /* one init task for the whole module load, so fail-nth counts every init point in order */
    gk_task init_task = {0};
    atomic_store(&init_task.fail_nth, init_fail_nth);
    gk_ctx ic = {.k = tk->gk, .task = &init_task, .mm = NULL, .bypass_filters = init_fail_nth != 0};
    if (tk->ops->init) {
        int ret = tk->ops->init(tk, &ic, misaligned_report_buf, init_status);
        if (ret) {
            *err = ret;
            goto fail;
        }
    }
    if (tk->prof->has_quote) { /* quote.md §2.2: the quote buffer, then tsm_register */
        int ret;
        tk->tsm = tsm_create(tk, &ic, tsm_report_dir ? tsm_report_dir : "",
                             tsm_provider ? tsm_provider : "", fail_decrypt, &ret, leaked_pages);
        if (!tk->tsm) {
            *err = ret;
            goto fail;
        }
    }
    if (tk->prof->has_ioctl_quote)
        notify_setup(tk);
    gk_set_resident(tk->gk, (uint64_t)tk->prof->resident);
    tk->ninit_trace = ic.ntrace;
    memcpy(tk->init_trace, ic.trace, ic.ntrace * sizeof ic.trace[0]);
    *err = 0;
    return tk;
fail:
    if (tk->nodes)
        for (size_t i = 0; i < tk->nnodes; i++)
            free((void *)tk->nodes[i].path);
    free(tk->nodes);
    gk_kernel_destroy(tk->gk);
    free(tk);
    return NULL;
}

void td_kernel_destroy(td_kernel *tk)
{
    if (!tk)
        return;
    /* module exit frees the report buffer; nothing reads the allocator afterwards, so the guest
     * memory (which may already be gone) is not touched here */
    tsm_destroy(tk->tsm);
    if (tk->irq_host && vmm_host_of(tk->m) == tk->irq_host)
        vmm_host_clear_irq(tk->irq_host, tk);
    while (tk->quote_list) { /* requests the host never finished: their guest memory may be gone */
        quote_entry *e = tk->quote_list;
        tk->quote_list = e->next;
        free(e);
    }
    for (size_t i = 0; i < tk->nnodes; i++)
        free((void *)tk->nodes[i].path);
    free(tk->nodes);
    gk_kernel_destroy(tk->gk);
    free(tk);
}

gk_kernel *td_kernel_gk(td_kernel *tk) { return tk->gk; }
int td_kernel_driver(td_kernel *tk) { return tk->driver; }
void td_force_misaligned(td_kernel *tk, int target) { atomic_store(&tk->misalign, target); }

int td_injection_points(int driver, int out[GK_NUM_POINTS])
{
    if (driver < 0 || driver >= TDXM_NUM_PROFILES)
        return -TDXM_EINVAL;
    const tdxm_profile *prof = &TDXM_PROFILES[driver];
    memcpy(out, prof->points, (size_t)prof->npoints * sizeof(int));
    return prof->npoints;
}

td_process *td_process_create(td_kernel *tk)
{
    td_process *p = gk_zalloc_aligned(sizeof *p);
    if (!p)
        return NULL;
    p->tk = tk;
    p->mm = gk_mm_create();
    p->cache = gk_cache_create(tk->gk);
    if (!p->mm || !p->cache) {
        gk_mm_destroy(p->mm);
        gk_cache_destroy(tk->gk, p->cache);
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->trace_lock, NULL);
    return p;
}

void td_process_destroy(td_process *p)
{
    if (!p)
        return;
    /* exit closes every fd: a configfs file commits its inblob as at close */
    for (int fd = 0; fd < FD_LIMIT; fd++)
        if (p->cfs[fd]) {
            gk_ctx c;
            ctx_init(&c, p);
            tsm_release(p->tk->tsm, &c, p->cfs[fd]);
            p->cfs[fd] = NULL;
        }
    gk_mm_destroy(p->mm);
    gk_cache_destroy(p->tk->gk, p->cache);
    pthread_mutex_destroy(&p->trace_lock);
    free(p);
}

gk_mm *td_process_mm(td_process *p) { return p->mm; }
gk_task *td_process_task(td_process *p) { return &p->task; }

void td_fault_user_copy(td_process *p, int armed, size_t at)
{
    atomic_store(&p->partial_at, at); /* before arming: a consumer reads it after the flag */
    atomic_store(&p->partial_armed, armed);
}

unsigned td_init_trace(td_kernel *tk, gk_trace_entry out[GK_TRACE_MAX])
{
    memcpy(out, tk->init_trace, tk->ninit_trace * sizeof out[0]); /* written once, before tk is returned */
    return tk->ninit_trace;
}

unsigned td_last_trace(td_process *p, gk_trace_entry out[GK_TRACE_MAX])
{
    pthread_mutex_lock(&p->trace_lock);
    unsigned n = p->ntrace;
    memcpy(out, p->trace, n * sizeof out[0]);
    pthread_mutex_unlock(&p->trace_lock);
    return n;
}

static void clear_trace(td_process *p)
{
    pthread_mutex_lock(&p->trace_lock);
    p->ntrace = 0;
    pthread_mutex_unlock(&p->trace_lock);
}

#define FD_CONFIGFS 0xFFFFFFu
static const td_node configfs_node = {"", TD_NODE_CONFIGFS, 0, 0};

static int open_configfs(td_process *p, const char *path, int accmode)
{
    int err;
    tsm_file *f = tsm_open(p->tk->tsm, path, accmode, &err);
    if (!f)
        return err;
    uint32_t entry = FD_CONFIGFS | ((uint32_t)accmode << 24);
    for (int fd = 3; fd < FD_LIMIT; fd++) {
        uint32_t expected = 0;
        if (atomic_compare_exchange_strong(&p->fds[fd], &expected, entry)) {
            p->cfs[fd] = f;
            return fd;
        }
    }
    gk_ctx c;
    ctx_init(&c, p);
    tsm_release(p->tk->tsm, &c, f);
    return -TDXM_EMFILE;
}

/* The VFS reads a run of slashes as one (path_lookupat): "report//a" is "report/a". NULL: the path
 * has none (use it as it is), or no memory (*err). The copy is the caller's to free. */
static char *squeeze_slashes(const char *path, int *err)
{
    *err = 0;
    if (!strstr(path, "//"))
        return NULL;
    char *out = malloc(strlen(path) + 1), *o = out;
    if (!out) {
        *err = -TDXM_ENOMEM;
        return NULL;
    }
    for (const char *s = path; *s; s++)
        if (*s != '/' || o == out || o[-1] != '/')
            *o++ = *s;
    *o = 0;
    return out;
}

#define WITH_SQUEEZED_PATH(p, path, call)                                                   \
    do {                                                                                     \
        int err_;                                                                            \
        char *sq_ = squeeze_slashes(path, &err_);                                            \
        if (err_) {                                                                          \
            clear_trace(p);                                                                  \
            return err_;                                                                     \
        }                                                                                    \
        if (sq_)                                                                             \
            path = sq_;                                                                      \
        __typeof__(call) ret_ = (call);                                                      \
        free(sq_);                                                                           \
        return ret_;                                                                         \
    } while (0)

static int open_path(td_process *p, const char *path, int accmode);

int td_open(td_process *p, const char *path, int accmode)
{
    WITH_SQUEEZED_PATH(p, path, open_path(p, path, accmode));
}

static int open_path(td_process *p, const char *path, int accmode)
{
    clear_trace(p);
    td_kernel *tk = p->tk;
    if (accmode < 0 || accmode > 3)
        return -TDXM_EINVAL;
    if (tk->tsm && tsm_owns_path(tk->tsm, path))
        return open_configfs(p, path, accmode);
    for (size_t i = 0; i < tk->nnodes; i++) {
        const td_node *node = &tk->nodes[i];
        if (strcmp(node->path, path) != 0)
            continue;
        /* a 0444 measurement file refuses write access at open (the node's mode governs access) */
        if (node->kind == TD_NODE_MEASUREMENT && !node->writable && accmode != 0)
            return -TDXM_EACCES;
        uint32_t entry = (uint32_t)(i + 1) | ((uint32_t)accmode << 24);
        for (int fd = 3; fd < FD_LIMIT; fd++) {
            uint32_t expected = 0;
            if (atomic_compare_exchange_strong(&p->fds[fd], &expected, entry))
                return fd;
        }
        return -TDXM_EMFILE;
    }
    return -TDXM_ENOENT;
}

int td_close(td_process *p, int fd)
{
    clear_trace(p);
    uint32_t e;
    if (fd < 0 || fd >= FD_LIMIT || (e = atomic_exchange(&p->fds[fd], 0)) == 0)
        return -TDXM_EBADF;
    if ((e & 0xFFFFFF) == FD_CONFIGFS) { /* release: commit, its result ignored (quote.md §1.4) */
        tsm_file *f = p->cfs[fd];
        p->cfs[fd] = NULL;
        gk_ctx c;
        ctx_init(&c, p);
        tsm_release(p->tk->tsm, &c, f);
        ctx_finish(&c, p, 0);
    }
    return 0;
}

/* The node an fd refers to, or NULL; *accmode gets its access mode. */
static const td_node *fd_node(td_process *p, int fd, int *accmode)
{
    if (fd < 0 || fd >= FD_LIMIT)
        return NULL;
    uint32_t e = atomic_load_explicit(&p->fds[fd], memory_order_acquire);
    if (!e)
        return NULL;
    *accmode = (int)(e >> 24);
    if ((e & 0xFFFFFF) == FD_CONFIGFS)
        return &configfs_node;
    return &p->tk->nodes[(e & 0xFFFFFF) - 1];
}

long td_ioctl(td_process *p, int fd, uint32_t cmd, uint64_t arg)
{
    int accmode = 0;
    const td_node *node = fd_node(p, fd, &accmode);
    const tdxm_vfs *vfs;
    gk_ctx c;
    ctx_init(&c, p);
    long ret;
    if (!node)
        ret = -TDXM_EBADF;
    else if (node->kind != TD_NODE_DEVICE)
        ret = -TDXM_ENOTTY;
    else if ((vfs = vfs_command(p->tk->prof, cmd)) != NULL)
        ret = vfs_ioctl(p, vfs, arg); /* do_vfs_ioctl: the driver never sees it (ref §1) */
    else
        ret = p->tk->ops->ioctl(p, &c, cmd, arg);
    return ctx_finish(&c, p, ret);
}

long td_pread(td_process *p, int fd, uint64_t addr, int64_t count, int64_t offset)
{
    int accmode = 0;
    const td_node *node = fd_node(p, fd, &accmode);
    gk_ctx c;
    ctx_init(&c, p);
    long ret;
    if (offset < 0) /* ksys_pread64: before the fd lookup (ref §2.5 last paragraph, [26]) */
        ret = -TDXM_EINVAL;
    else if (!node || accmode == 1)
        ret = -TDXM_EBADF;
    else if (node->kind == TD_NODE_CONFIGFS && count >= 0) {
        int64_t pos = offset;
        ret = tsm_read(p->tk->tsm, &c, p->cfs[fd], addr, count, &pos);
    } else if (count < 0 || node->kind != TD_NODE_MEASUREMENT || !p->tk->ops->read_measurement)
        ret = -TDXM_EINVAL;
    else
        ret = p->tk->ops->read_measurement(p, &c, node, addr, count, offset);
    return ctx_finish(&c, p, ret);
}

long td_pwrite(td_process *p, int fd, uint64_t addr, int64_t count, int64_t offset)
{
    int accmode = 0;
    const td_node *node = fd_node(p, fd, &accmode);
    gk_ctx c;
    ctx_init(&c, p);
    long ret;
    if (offset < 0) /* ksys_pwrite64: before the fd lookup (ref §2.5 last paragraph, [26]) */
        ret = -TDXM_EINVAL;
    else if (!node || accmode == 0)
        ret = -TDXM_EBADF;
    else if (node->kind == TD_NODE_CONFIGFS && count >= 0) {
        int64_t pos = offset;
        ret = tsm_write(p->tk->tsm, &c, p->cfs[fd], addr, count, &pos);
    } else if (count < 0 || node->kind != TD_NODE_MEASUREMENT || !p->tk->ops->write_measurement)
        ret = -TDXM_EINVAL;
    else
        ret = p->tk->ops->write_measurement(p, &c, node, addr, count, offset);
    return ctx_finish(&c, p, ret);
}

/* ---- read/write with the file position, and the configfs directory calls --------------------------- */

/* read(2)/write(2) at the file position: configfs files (quote.md §1.4-§1.5). The device node and the
 * measurement files take pread/pwrite only: -EINVAL here. */
long td_read(td_process *p, int fd, uint64_t addr, int64_t count)
{
    int accmode;
    const td_node *node = fd_node(p, fd, &accmode);
    gk_ctx c;
    ctx_init(&c, p);
    long ret;
    if (!node || accmode == 1)
        ret = -TDXM_EBADF;
    else if (count < 0 || node->kind != TD_NODE_CONFIGFS)
        ret = -TDXM_EINVAL;
    else
        ret = tsm_read(p->tk->tsm, &c, p->cfs[fd], addr, count, tsm_file_pos(p->cfs[fd]));
    return ctx_finish(&c, p, ret);
}

long td_write(td_process *p, int fd, uint64_t addr, int64_t count)
{
    int accmode;
    const td_node *node = fd_node(p, fd, &accmode);
    gk_ctx c;
    ctx_init(&c, p);
    long ret;
    if (!node || accmode == 0)
        ret = -TDXM_EBADF;
    else if (count < 0 || node->kind != TD_NODE_CONFIGFS)
        ret = -TDXM_EINVAL;
    else
        ret = tsm_write(p->tk->tsm, &c, p->cfs[fd], addr, count, tsm_file_pos(p->cfs[fd]));
    return ctx_finish(&c, p, ret);
}

static int mkdir_path(td_process *p, const char *path)
{
    clear_trace(p);
    if (!p->tk->tsm || !tsm_owns_path(p->tk->tsm, path))
        return -TDXM_ENOENT;
    return tsm_mkdir(p->tk->tsm, path);
}

int td_mkdir(td_process *p, const char *path)
{
    WITH_SQUEEZED_PATH(p, path, mkdir_path(p, path));
}

static int rmdir_path(td_process *p, const char *path)
{
    clear_trace(p);
    if (!p->tk->tsm || !tsm_owns_path(p->tk->tsm, path))
        return -TDXM_ENOENT;
    return tsm_rmdir(p->tk->tsm, path);
}

int td_rmdir(td_process *p, const char *path)
{
    WITH_SQUEEZED_PATH(p, path, rmdir_path(p, path));
}

static int stat_path(td_process *p, const char *path, int *kind, int *mode)
{
    clear_trace(p);
    if (!p->tk->tsm || !tsm_owns_path(p->tk->tsm, path))
        return -TDXM_ENOENT;
    return tsm_stat(p->tk->tsm, path, kind, mode);
}

int td_stat(td_process *p, const char *path, int *kind, int *mode)
{
    WITH_SQUEEZED_PATH(p, path, stat_path(p, path, kind, mode));
}

static long readdir_path(td_process *p, const char *path, char *out, size_t cap)
{
    clear_trace(p);
    if (!p->tk->tsm || !tsm_owns_path(p->tk->tsm, path))
        return -TDXM_ENOENT;
    return tsm_readdir(p->tk->tsm, path, out, cap);
}

long td_readdir(td_process *p, const char *path, char *out, size_t cap)
{
    WITH_SQUEEZED_PATH(p, path, readdir_path(p, path, out, cap));
}

/* ---- services of the quote provider (csrc/tsm_report.c) ------------------------------------------ */

const tdxm_profile *td_kernel_profile(td_kernel *tk) { return tk->prof; }
tsm_state *td_kernel_tsm(td_kernel *tk) { return tk->tsm; }
uint64_t td_kernel_tdcall(td_kernel *tk, int leaf, uint64_t rcx, uint64_t rdx) { return kernel_tdcall(tk, leaf, rcx, rdx); }
int td_mr_lock_interruptible(td_kernel *tk, gk_task *task) { return mr_lock_interruptible(tk, task); }
void td_mr_unlock(td_kernel *tk) { mr_unlock(tk); }
uint8_t *td_report_buf(td_kernel *tk) { return tk->report_buf; }
