/*
 * tdx_devpath.c - the served device's ioctl path on the C core, without Python (see tdx_devpath.h).
 */
#include "tdx_devpath.h"
#include "tdx_driver.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* x86-64 host pages are the TDX page size, so the mirror keeps the client's page layout (ref §4.3) */
#define TDXF_PAGE ((uint32_t)TDX_PAGE_SIZE)

typedef struct {
    pthread_mutex_t lock; /* one call at a time per open file, as the Python path does */
    struct td_process *p;
    int fd;
    int used;
    int plain; /* all mirror pages mapped rw */
} core_file;

struct tdxf_core {
    tdxf_fastpath ops; /* what the transport calls: ctx is this struct */
    unsigned max_files;
    pthread_mutex_t slots_lock;
    _Atomic unsigned fail_nth;
    core_file files[];
};

static long fast_ioctl(void *ctx, tdxf_ioctl_call *call) { return tdxf_core_ioctl(ctx, call); }
static void fast_interrupt(void *ctx, uint64_t handle, int on) { tdxf_core_interrupt(ctx, handle, on); }

const tdxf_fastpath *tdxf_core_fastpath(tdxf_core *c) { return &c->ops; }

tdxf_core *tdxf_core_new(unsigned max_files)
{
    tdxf_core *c = calloc(1, sizeof(*c) + sizeof(core_file) * max_files);
    if (!c)
        return NULL;
    c->ops.ctx = c;
    c->ops.ioctl = fast_ioctl;
    c->ops.interrupt = fast_interrupt;
    c->max_files = max_files;
    pthread_mutex_init(&c->slots_lock, NULL);
    for (unsigned i = 0; i < max_files; i++)
        pthread_mutex_init(&c->files[i].lock, NULL);
    return c;
}

void tdxf_core_free(tdxf_core *c)
{
    if (!c)
        return;
    for (unsigned i = 0; i < c->max_files; i++)
        pthread_mutex_destroy(&c->files[i].lock);
    pthread_mutex_destroy(&c->slots_lock);
    free(c);
}

long tdxf_core_register(tdxf_core *c, struct td_process *p, int fd)
{
    long handle = -EMFILE;
    pthread_mutex_lock(&c->slots_lock);
    for (unsigned i = 0; i < c->max_files; i++) {
        core_file *f = &c->files[i];
        pthread_mutex_lock(&f->lock);
        if (!f->used) {
            f->p = p;
            f->fd = fd;
            f->used = 1;
            f->plain = 1;
            handle = (long)i + 1;
        }
        pthread_mutex_unlock(&f->lock);
        if (handle > 0)
            break;
    }
    pthread_mutex_unlock(&c->slots_lock);
    return handle;
}

void tdxf_core_unregister(tdxf_core *c, uint64_t handle)
{
    if (handle < 1 || handle > c->max_files)
        return;
    core_file *f = &c->files[handle - 1];
    pthread_mutex_lock(&f->lock);
    f->used = 0;
    f->p = NULL;
    pthread_mutex_unlock(&f->lock);
}

unsigned tdxf_core_fail_nth_arm(tdxf_core *c)
{
    return atomic_load(&c->fail_nth) ? atomic_exchange(&c->fail_nth, 0) : 0;
}

void tdxf_core_fail_nth_disarm(tdxf_core *c, unsigned left)
{
    unsigned zero = 0;
    if (left)
        atomic_compare_exchange_strong(&c->fail_nth, &zero, left); /* a newer write wins */
}

void tdxf_core_fail_nth_set(tdxf_core *c, unsigned n) { atomic_store(&c->fail_nth, n); }
unsigned tdxf_core_fail_nth_get(tdxf_core *c) { return atomic_load(&c->fail_nth); }

/* Map the mirror as the client's pages are: rw below `writable`, r below `readable`, nothing after.
 * Both bounds fall on the client's page boundaries (or at the window's end), hence on ours. */
static int core_layout(gk_mm *mm, uint32_t offset, uint32_t readable, uint32_t writable)
{
    if (gk_mm_unmap(mm, TDXF_USER_BASE, (uint64_t)TDXF_MIRROR_PAGES * TDXF_PAGE))
        return 0;
    int plain = 1;
    for (uint32_t k = 0; k < TDXF_MIRROR_PAGES; k++) {
        uint32_t start = k * TDXF_PAGE > offset ? k * TDXF_PAGE - offset : 0;
        int prot = start < writable ? (GK_PROT_READ | GK_PROT_WRITE)
                                    : (start < readable ? GK_PROT_READ : GK_PROT_NONE);
        if (prot != (GK_PROT_READ | GK_PROT_WRITE))
            plain = 0;
        if (prot != GK_PROT_NONE)
            gk_mm_map(mm, TDXF_USER_BASE + (uint64_t)k * TDXF_PAGE, TDXF_PAGE, prot);
    }
    return plain;
}

/* The embedded buffer's mirror (tdx_ops.h): mapped as the client's pages, filled, and the request's
 * pointer (at req + buf_ptr_off in the window mirror) aimed at it; the old bytes go to orig. */
static uint64_t core_buffer_in(gk_mm *mm, const tdxf_ioctl_call *call, uint64_t req, uint8_t orig[8])
{
    uint32_t offset = (uint32_t)(call->buf % TDXF_PAGE);
    uint32_t pages = (offset + call->buf_window + TDXF_PAGE - 1) / TDXF_PAGE;
    gk_mm_unmap(mm, TDXF_BUF_BASE, (uint64_t)TDXF_BUF_PAGES * TDXF_PAGE);
    for (uint32_t k = 0; k < pages; k++) {
        uint32_t start = k * TDXF_PAGE > offset ? k * TDXF_PAGE - offset : 0;
        int prot = start < call->buf_writable ? (GK_PROT_READ | GK_PROT_WRITE)
                                              : (start < call->buf_readable ? GK_PROT_READ : GK_PROT_NONE);
        if (prot != GK_PROT_NONE)
            gk_mm_map(mm, TDXF_BUF_BASE + (uint64_t)k * TDXF_PAGE, TDXF_PAGE, prot);
    }
    uint64_t addr = TDXF_BUF_BASE + offset;
    if (call->buf_readable)
        gk_mm_poke(mm, addr, call->buf_image, call->buf_readable);
    uint8_t ptr[8];
    for (int i = 0; i < 8; i++)
        ptr[i] = (uint8_t)(addr >> (8 * i));
    gk_mm_peek(mm, req + call->buf_ptr_off, orig, 8);
    gk_mm_poke(mm, req + call->buf_ptr_off, ptr, 8);
    return addr;
}

/* After the call: the buffer's bytes back to the image, and the client's pointer back in the request
 * unless the driver wrote there itself (v4's put_user of the TDVMCALL error, ref §2.2). */
static void core_buffer_out(gk_mm *mm, tdxf_ioctl_call *call, uint64_t req, uint64_t addr,
                            const uint8_t orig[8])
{
    uint8_t now[8], ptr[8];
    if (call->buf_writable)
        gk_mm_peek(mm, addr, call->buf_image, call->buf_writable);
    for (int i = 0; i < 8; i++)
        ptr[i] = (uint8_t)(addr >> (8 * i));
    gk_mm_peek(mm, req + call->buf_ptr_off, now, 8);
    if (memcmp(now, ptr, 8) == 0)
        gk_mm_poke(mm, req + call->buf_ptr_off, orig, 8);
    gk_mm_unmap(mm, TDXF_BUF_BASE, (uint64_t)TDXF_BUF_PAGES * TDXF_PAGE);
}

/* Called only while an ioctl on `handle` is in flight (op_ioctl's interrupt window), when the file is
 * registered and its process alive: no lock needed (the ioctl holds the file's). */
void tdxf_core_interrupt(tdxf_core *c, uint64_t handle, int on)
{
    if (handle < 1 || handle > c->max_files)
        return;
    struct td_process *p = c->files[handle - 1].p;
    if (p)
        atomic_store(&td_process_task(p)->signal_pending, on);
}

long tdxf_core_ioctl(tdxf_core *c, tdxf_ioctl_call *call)
{
    if (call->handle < 1 || call->handle > c->max_files)
        return -EBADF;
    core_file *f = &c->files[call->handle - 1];
    pthread_mutex_lock(&f->lock);
    if (!f->used) {
        pthread_mutex_unlock(&f->lock);
        return -EBADF;
    }
    gk_mm *mm = td_process_mm(f->p);
    gk_task *task = td_process_task(f->p);
    uint32_t offset = (uint32_t)(call->arg % TDXF_PAGE);
    uint64_t addr = TDXF_USER_BASE + offset;
    int plain = call->readable == call->window && call->writable == call->window;
    if (!plain || !f->plain)
        f->plain = core_layout(mm, plain ? 0 : offset, plain ? call->window : call->readable,
                               plain ? call->window : call->writable);
    if (call->readable)
        gk_mm_poke(mm, addr, call->image, call->readable);
    uint8_t orig[8];
    uint64_t buf_addr = call->buf_image ? core_buffer_in(mm, call, addr, orig) : 0;
    unsigned armed = tdxf_core_fail_nth_arm(c);
    if (armed)
        atomic_store(&task->fail_nth, armed);
    long ret = td_ioctl(f->p, f->fd, (uint32_t)call->cmd, addr);
    if (armed) {
        unsigned left = atomic_exchange(&task->fail_nth, 0);
        tdxf_core_fail_nth_disarm(c, left);
    }
    if (call->buf_image)
        core_buffer_out(mm, call, addr, buf_addr, orig);
    if (call->writable)
        gk_mm_peek(mm, addr, call->image, call->writable);
    pthread_mutex_unlock(&f->lock);
    /* a TD exit needs the host to unmap the kernel's own pages, which the daemon never does; a task
     * that would hang for good (v4's leaked quote_lock) is answered EIO rather than hold a thread */
    return ret == TD_RET_TD_EXIT || ret == TD_RET_HUNG ? -EIO : ret;
}
