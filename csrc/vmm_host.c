/*
 * vmm_host.c - KVM + QEMU's TDVMCALL handling and the fault menu (vmm_host.h).
 *
 * Written from quote.md §3-§4 and tdx-abi.md §5 (step tables); no QEMU or KVM source is reproduced.
 * The host reaches guest memory only through pages the guest shared: a read or write of any other
 * page fails, as QEMU's address_space accesses fail on memory it cannot map (a modelling choice; the
 * reference only names the failures, H3/H7/H8).
 */
#include "vmm_host.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tdx_crypto.h"

#define NEVER_NS UINT64_MAX
#define FAULT_QUEUE_MAX 4096
#define MAX_PENDING HOST_MAX_GET_QUOTE_REQUESTS

typedef struct {
    int used;
    uint64_t gpa, size;              /* shared bit stripped (KVM) */
    uint8_t hdr[QUOTE_HDR_LEN];      /* the header as read at H3 */
    uint8_t *payload;                /* in_len bytes read at H7 */
    uint32_t in_len;
    uint64_t due_ns;
    uint64_t seq;
    vmm_fault fault;
} pending_req;

typedef struct {
    int armed;
    uint64_t gpa;     /* of the out_len field */
    uint32_t value;   /* written after the guest's first read */
} out_len_watch;

struct vmm_slots {
    pthread_mutex_t lock;
    vmm_slots_counters c;
};

struct vmm_host {
    tdxm_module *m;
    vmm_slots *slots;        /* NULL: the TD's own 16 (QEMU), else a SharedHost's */
    vmm_clock *clock;
    pthread_mutex_t lock;
    vmm_produce_fn produce;
    void *produce_ctx;
    vmm_irq_fn irq;
    void *irq_ctx;
    unsigned notify_vector; /* 0: none registered */
    unsigned notify_apic;
    pending_req pending[MAX_PENDING];
    out_len_watch watches[MAX_PENDING];
    uint64_t seq;
    vmm_fault *queue;        /* push_fault ring */
    size_t q_head, q_len;
    vmm_fault *schedule;
    size_t sched_len, sched_pos;
    int sched_cycle;
    vmm_counters c;
};

/* ------------------------------------------------------------------------------------------------
 * Guest memory through the shared EPT
 * ------------------------------------------------------------------------------------------------ */

static uint8_t *shared_ptr(vmm_host *h, uint64_t gpa, size_t len)
{
    uint64_t first, last;

    if (len == 0)
        return tdxm_host_ptr(h->m, gpa, 0);
    if (gpa + len < gpa)
        return NULL;
    if (tdxm_host_ptr(h->m, gpa, len) == NULL)
        return NULL;
    first = gpa / TDX_PAGE_SIZE;
    last = (gpa + len - 1) / TDX_PAGE_SIZE;
    for (uint64_t p = first; p <= last; p++)
        if (tdxm_page_state(h->m, p * TDX_PAGE_SIZE) != TDXM_PAGE_SHARED)
            return NULL;
    return tdxm_host_ptr(h->m, gpa, len);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* ------------------------------------------------------------------------------------------------
 * The test producer
 * ------------------------------------------------------------------------------------------------ */

int vmm_test_producer(void *ctx, const uint8_t *in, size_t in_len, uint8_t *out, size_t cap,
                      size_t *out_len)
{
    size_t need = VMM_TEST_QUOTE_MAGIC_LEN + TDX_SHA384_LEN + in_len;

    (void)ctx;
    *out_len = need;
    if (need > cap)
        return 0; /* the host sees *out_len > cap */
    memcpy(out, VMM_TEST_QUOTE_MAGIC, VMM_TEST_QUOTE_MAGIC_LEN);
    tdxc_sha384(in, in_len, out + VMM_TEST_QUOTE_MAGIC_LEN);
    memcpy(out + VMM_TEST_QUOTE_MAGIC_LEN + TDX_SHA384_LEN, in, in_len);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Completion (quote.md §4.1 "Completion" 1-6)
 * ------------------------------------------------------------------------------------------------ */

static int take_due(vmm_host *h, uint64_t now, pending_req *out)
{
    int best = -1;

    for (int i = 0; i < MAX_PENDING; i++) {
        pending_req *p = &h->pending[i];
        if (!p->used || p->due_ns == NEVER_NS || p->due_ns > now)
            continue;
        if (best < 0 || p->due_ns < h->pending[best].due_ns ||
            (p->due_ns == h->pending[best].due_ns && p->seq < h->pending[best].seq))
            best = i;
    }
    if (best < 0)
        return 0;
    *out = h->pending[best];
    memset(&h->pending[best], 0, sizeof h->pending[best]);
    return 1;
}

/* ------------------------------------------------------------------------------------------------
 * QGS framing (quote.md §4.2): a pass-through VMM's payload (vmm_host.h)
 * ------------------------------------------------------------------------------------------------ */

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

/* 1 when in is one whole valid GET_QUOTE_REQ frame: the report's offset and size. */
static int qgs_request_report(const uint8_t *in, size_t in_len, size_t *off, size_t *len)
{
    const uint8_t *m = in + QGS_FRAME_LEN_SIZE;
    uint32_t report_size, id_list_size, size;

    if (in_len < QGS_FRAME_LEN_SIZE + QGS_GET_QUOTE_REQ_LEN || get_be32(in) != in_len - QGS_FRAME_LEN_SIZE)
        return 0;
    size = get_u32(m + 8);
    report_size = get_u32(m + QGS_MSG_HDR_LEN);
    id_list_size = get_u32(m + QGS_MSG_HDR_LEN + 4);
    if ((m[0] | m[1] << 8) != QGS_MSG_LIB_MAJOR_VER || get_u32(m + 4) != QGS_MSG_GET_QUOTE_REQ ||
        size != in_len - QGS_FRAME_LEN_SIZE || report_size == 0 ||
        (uint64_t)QGS_GET_QUOTE_REQ_LEN + report_size + id_list_size != size)
        return 0;
    *off = QGS_FRAME_LEN_SIZE + QGS_GET_QUOTE_REQ_LEN;
    *len = report_size;
    return 1;
}

/* The GET_QUOTE_RESP frame header (28 B) before a quote of quote_len bytes. */
static void qgs_response_header(uint8_t *out, size_t quote_len)
{
    uint8_t *m = out + QGS_FRAME_LEN_SIZE;
    memset(out, 0, QGS_FRAME_LEN_SIZE + QGS_GET_QUOTE_RESP_LEN);
    put_be32(out, (uint32_t)(QGS_GET_QUOTE_RESP_LEN + quote_len));
    m[0] = QGS_MSG_LIB_MAJOR_VER;
    m[2] = QGS_MSG_LIB_MINOR_VER;
    put_u32(m + 4, QGS_MSG_GET_QUOTE_RESP);
    put_u32(m + 8, (uint32_t)(QGS_GET_QUOTE_RESP_LEN + quote_len));   /* size; error_code 0 */
    put_u32(m + QGS_MSG_HDR_LEN + 4, (uint32_t)quote_len);           /* selected_id_size 0 */
}

static void complete(vmm_host *h, pending_req *r, uint8_t *scratch)
{
    uint64_t status = GET_QUOTE_SUCCESS;
    uint32_t out_len = 0;
    size_t quote_len = 0;
    int timed_out = r->fault.service_ns >= (uint64_t)HOST_QGS_TIMEOUT_MS * 1000000ULL;
    vmm_produce_fn produce;
    void *produce_ctx;
    unsigned vector = 0;
    vmm_irq_fn irq = NULL;
    void *irq_ctx = NULL;
    uint8_t hdr[QUOTE_HDR_LEN];
    uint8_t *mem;

    pthread_mutex_lock(&h->lock);
    produce = h->produce;
    produce_ctx = h->produce_ctx;
    pthread_mutex_unlock(&h->lock);

    if (timed_out || r->fault.kind == HOST_FAULT_ERROR) {
        status = GET_QUOTE_ERROR;       /* the 30 s transaction timer, or the service said no */
    } else if (produce == NULL) {
        status = GET_QUOTE_SERVICE_UNAVAILABLE;  /* the service went away: connect failure */
    } else {
        size_t off = 0, in_len = r->in_len;
        size_t hdr_len = QGS_FRAME_LEN_SIZE + QGS_GET_QUOTE_RESP_LEN;
        int framed = qgs_request_report(r->payload, r->in_len, &off, &in_len);
        size_t cap = HOST_GET_QUOTE_MAX_BUF_LEN - (framed ? hdr_len : 0);
        if (produce(produce_ctx, r->payload + off, in_len, scratch + (framed ? hdr_len : 0), cap,
                    &quote_len) != 0 || quote_len > cap) {
            status = GET_QUOTE_ERROR;
        } else if (quote_len > r->size - HOST_QUOTE_OVERHEAD) {
            status = GET_QUOTE_ERROR;   /* the QGS frame exceeds the receive capacity size - 24 */
        } else if (framed) {
            qgs_response_header(scratch, quote_len);  /* passed back framed (vmm_host.h) */
            quote_len += hdr_len;
        }
    }

    pthread_mutex_lock(&h->lock);
    if (status == GET_QUOTE_SUCCESS) {
        out_len = (uint32_t)quote_len;
        mem = shared_ptr(h, r->gpa + QUOTE_HDR_LEN, quote_len);     /* 1: the quote at GPA + 24 */
        if (mem != NULL)
            memcpy(mem, scratch, quote_len);
        if (r->fault.kind == HOST_FAULT_OVERSIZE_OUT_LEN)
            out_len = r->fault.out_len ? r->fault.out_len : (uint32_t)r->size;
    }
    memcpy(hdr, r->hdr, sizeof hdr);
    put_u64(hdr + QUOTE_HDR_OFF_STATUS, status);                    /* 2 */
    put_u32(hdr + QUOTE_HDR_OFF_OUT_LEN, out_len);
    __atomic_thread_fence(__ATOMIC_RELEASE);                         /* 3: smp_wmb */
    mem = shared_ptr(h, r->gpa, QUOTE_HDR_LEN);                     /* 4: the header */
    if (mem != NULL) {
        memcpy(mem, hdr, sizeof hdr);
        h->c.completed++;
    }
    if (status == GET_QUOTE_SUCCESS && r->fault.kind == HOST_FAULT_OUT_LEN_CHANGES) {
        for (int i = 0; i < MAX_PENDING; i++) {
            if (!h->watches[i].armed) {
                h->watches[i].armed = 1;
                h->watches[i].gpa = r->gpa + QUOTE_HDR_OFF_OUT_LEN;
                h->watches[i].value = r->fault.out_len ? r->fault.out_len : (uint32_t)r->size;
                break;
            }
        }
    }
    if (h->notify_vector != 0 && r->fault.kind != HOST_FAULT_NO_INTERRUPT) {  /* 5 */
        vector = h->notify_vector;
        h->c.interrupts++;
        h->c.last_vector = vector;
        irq = h->irq;
        irq_ctx = h->irq_ctx;
    }
    h->c.in_flight--;                                                /* 6: num-- */
    if (h->slots != NULL) {
        pthread_mutex_lock(&h->slots->lock);
        h->slots->c.in_flight--;
        if (mem != NULL)
            h->slots->c.completed++;
        pthread_mutex_unlock(&h->slots->lock);
    }
    pthread_mutex_unlock(&h->lock);
    if (vector != 0 && irq != NULL)
        irq(irq_ctx, vector);
    free(r->payload);
}

static void on_clock(void *ctx, uint64_t now)
{
    vmm_host *h = ctx;
    pending_req r;
    uint8_t *scratch = NULL;

    for (;;) {
        int got;
        pthread_mutex_lock(&h->lock);
        got = take_due(h, now, &r);
        pthread_mutex_unlock(&h->lock);
        if (!got)
            break;
        if (scratch == NULL)
            scratch = malloc(HOST_GET_QUOTE_MAX_BUF_LEN);
        if (scratch == NULL) { /* the host is out of memory: the service fails */
            r.fault.kind = HOST_FAULT_ERROR;
            uint8_t none[1];
            complete(h, &r, none);
            continue;
        }
        complete(h, &r, scratch);
    }
    free(scratch);
}

/* ------------------------------------------------------------------------------------------------
 * Faults
 * ------------------------------------------------------------------------------------------------ */

static int fault_valid(const vmm_fault *f)
{
    return f->kind >= HOST_FAULT_NONE && f->kind <= HOST_FAULT_NO_INTERRUPT;
}

static vmm_fault next_fault(vmm_host *h)
{
    vmm_fault f = {HOST_FAULT_NONE, (uint64_t)HOST_SERVICE_TIME_US * 1000ULL, 0};

    if (h->q_len > 0) {
        f = h->queue[h->q_head];
        h->q_head = (h->q_head + 1) % FAULT_QUEUE_MAX;
        h->q_len--;
    } else if (h->sched_len > 0 && h->sched_pos < h->sched_len) {
        f = h->schedule[h->sched_pos++];
        if (h->sched_cycle && h->sched_pos == h->sched_len)
            h->sched_pos = 0;
    }
    return f;
}

int vmm_host_push_fault(vmm_host *h, const vmm_fault *f)
{
    int rc = 0;

    if (!fault_valid(f))
        return -TDXM_EINVAL;
    pthread_mutex_lock(&h->lock);
    if (h->q_len == FAULT_QUEUE_MAX)
        rc = -TDXM_ENOMEM;
    else {
        h->queue[(h->q_head + h->q_len) % FAULT_QUEUE_MAX] = *f;
        h->q_len++;
    }
    pthread_mutex_unlock(&h->lock);
    return rc;
}

int vmm_host_set_schedule(vmm_host *h, const vmm_fault *faults, size_t n, int cycle)
{
    vmm_fault *copy = NULL;

    for (size_t i = 0; i < n; i++)
        if (!fault_valid(&faults[i]))
            return -TDXM_EINVAL;
    if (n > 0) {
        copy = malloc(n * sizeof *copy);
        if (copy == NULL)
            return -TDXM_ENOMEM;
        memcpy(copy, faults, n * sizeof *copy);
    }
    pthread_mutex_lock(&h->lock);
    free(h->schedule);
    h->schedule = copy;
    h->sched_len = n;
    h->sched_pos = 0;
    h->sched_cycle = cycle != 0;
    pthread_mutex_unlock(&h->lock);
    return 0;
}

void vmm_host_clear_faults(vmm_host *h)
{
    pthread_mutex_lock(&h->lock);
    h->q_head = h->q_len = 0;
    free(h->schedule);
    h->schedule = NULL;
    h->sched_len = h->sched_pos = 0;
    pthread_mutex_unlock(&h->lock);
}

/* ------------------------------------------------------------------------------------------------
 * The sub-functions
 * ------------------------------------------------------------------------------------------------ */

/* H6's num < 16, then num++: the TD's own count (QEMU), or the shared host's across its TDs. */
static int take_slot(vmm_host *h)
{
    int ok;

    if (h->slots == NULL)
        return h->c.in_flight < HOST_MAX_GET_QUOTE_REQUESTS;
    pthread_mutex_lock(&h->slots->lock);
    ok = h->slots->c.in_flight < HOST_MAX_GET_QUOTE_REQUESTS;
    if (ok && ++h->slots->c.in_flight > h->slots->c.peak_in_flight)
        h->slots->c.peak_in_flight = h->slots->c.in_flight;
    pthread_mutex_unlock(&h->slots->lock);
    return ok;
}

/* GetQuote: KVM's check, then QEMU's tdx_handle_get_quote H1-H9 (quote.md §3.2, §4.1). */
static uint64_t get_quote(vmm_host *h, uint64_t r12, uint64_t r13)
{
    uint64_t gpa, size = r13;
    uint8_t hdr[QUOTE_HDR_LEN];
    uint8_t *mem;
    uint32_t in_len;
    uint8_t *payload;
    vmm_fault f;
    int slot = -1;

    h->c.get_quotes++;
    f = next_fault(h);
    if (!(r12 & TDX_GPA_SHARED_BIT))                      /* KVM: a private GPA */
        return TDVMCALL_STATUS_INVALID_OPERAND;
    gpa = r12 & ~(uint64_t)TDX_GPA_SHARED_BIT;            /* KVM strips the shared bit */
    if (size == 0)                                        /* H1 */
        return TDVMCALL_STATUS_INVALID_OPERAND;
    if (gpa % TDX_PAGE_SIZE || size % TDX_PAGE_SIZE)      /* H2 */
        return TDVMCALL_STATUS_ALIGN_ERROR;
    mem = shared_ptr(h, gpa, QUOTE_HDR_LEN);              /* H3 */
    if (mem == NULL)
        return TDVMCALL_STATUS_INVALID_OPERAND;
    memcpy(hdr, mem, sizeof hdr);
    if (get_u64(hdr + QUOTE_HDR_OFF_VERSION) != GET_QUOTE_CMD_VER)
        return TDVMCALL_STATUS_INVALID_OPERAND;
    in_len = get_u32(hdr + QUOTE_HDR_OFF_IN_LEN);         /* H4 */
    if (size > HOST_GET_QUOTE_MAX_BUF_LEN || in_len > size - QUOTE_HDR_LEN)
        return TDVMCALL_STATUS_INVALID_OPERAND;
    if (h->produce == NULL || f.kind == HOST_FAULT_SERVICE_UNAVAILABLE) { /* H5 */
        put_u64(hdr + QUOTE_HDR_OFF_STATUS, GET_QUOTE_SERVICE_UNAVAILABLE);
        memcpy(mem, hdr, sizeof hdr);
        return TDVMCALL_STATUS_SUCCESS;
    }
    if (f.kind == HOST_FAULT_RETRY || !take_slot(h)) {   /* H6 */
        h->c.retries++;
        if (h->slots != NULL) {
            pthread_mutex_lock(&h->slots->lock);
            h->slots->c.retries++;
            pthread_mutex_unlock(&h->slots->lock);
        }
        return TDVMCALL_STATUS_RETRY;
    }
    h->c.in_flight++;                                     /* H7: num++, read the payload */
    mem = shared_ptr(h, gpa + QUOTE_HDR_LEN, in_len);
    payload = malloc(in_len ? in_len : 1);
    if (mem == NULL || payload == NULL) {
        free(payload);
        h->c.leaked_slots++;                              /* no num--: the slot leaks */
        return TDVMCALL_STATUS_INVALID_OPERAND;
    }
    memcpy(payload, mem, in_len);
    if (f.kind != HOST_FAULT_NO_IN_FLIGHT) {              /* H8: IN_FLIGHT before returning */
        mem = shared_ptr(h, gpa, QUOTE_HDR_LEN);
        if (mem == NULL) {                                /* unreachable here: H3 read it */
            free(payload);
            h->c.leaked_slots++;
            return TDVMCALL_STATUS_INVALID_OPERAND;
        }
        put_u64(mem + QUOTE_HDR_OFF_STATUS, GET_QUOTE_IN_FLIGHT);
    }
    for (int i = 0; i < MAX_PENDING; i++)                 /* H9: start the task */
        if (!h->pending[i].used) {
            slot = i;
            break;
        }
    /* in_flight <= 16 and leaked slots hold no entry, so a free entry exists */
    pending_req *p = &h->pending[slot];
    p->used = 1;
    p->gpa = gpa;
    p->size = size;
    memcpy(p->hdr, hdr, sizeof hdr);
    p->payload = payload;
    p->in_len = in_len;
    p->fault = f;
    p->seq = h->seq++;
    {
        uint64_t timer = (uint64_t)HOST_QGS_TIMEOUT_MS * 1000000ULL;
        uint64_t service = f.service_ns < timer ? f.service_ns : timer;
        uint64_t now = vmm_clock_now_ns(h->clock);
        p->due_ns = f.kind == HOST_FAULT_NEVER ? NEVER_NS : vmm_clock_add_ns(now, service);
    }
    h->c.accepted++;
    if (h->slots != NULL) {
        pthread_mutex_lock(&h->slots->lock);
        h->slots->c.accepted++;
        pthread_mutex_unlock(&h->slots->lock);
    }
    return TDVMCALL_STATUS_SUCCESS;
}

/* SetupEventNotifyInterrupt (quote.md §3.1, §3.3): a vector in 32..255 is stored with the caller's
 * APIC ID. Out of range: "none registered"; the reference gives no R10 for it, we answer
 * INVALID_OPERAND and keep the previous registration (a choice). One vCPU: APIC ID 0. */
static uint64_t setup_event_notify(vmm_host *h, uint64_t vector)
{
    if (vector < EVENT_NOTIFY_VECTOR_MIN || vector > EVENT_NOTIFY_VECTOR_MAX)
        return TDVMCALL_STATUS_INVALID_OPERAND;
    h->notify_vector = (unsigned)vector;
    h->notify_apic = 0;
    return TDVMCALL_STATUS_SUCCESS;
}

/* GetTdVmCallInfo (quote.md §3.1): leaf 0 answers R11..R14 = 0 (every base TDVMCALL); leaf 1 the
 * optional bitmap in R11: bit 1 SetupEventNotifyInterrupt. Another leaf: INVALID_OPERAND (a choice:
 * the reference names only leaves 0 and 1). */
static uint64_t get_td_vm_call_info(tdxm_vmcall_regs *regs)
{
    uint64_t leaf = regs->r12;

    if (leaf > 1)
        return TDVMCALL_STATUS_INVALID_OPERAND;
    regs->r11 = leaf == 1 ? TDVMCALL_INFO_SETUP_EVENT_NOTIFY : 0;
    regs->r12 = regs->r13 = regs->r14 = 0;
    return TDVMCALL_STATUS_SUCCESS;
}

void vmm_host_vmcall(void *host, tdxm_vmcall_regs *regs)
{
    vmm_host *h = host;
    uint64_t r10;

    pthread_mutex_lock(&h->lock);
    h->c.vmcalls++;
    if (regs->r10 != 0) {
        /* a vendor-specific TDVMCALL: nobody handles it (choice; KVM's default answer) */
        r10 = TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED;
    } else {
        switch (regs->r11) {
        case TDVMCALL_GET_QUOTE:
            r10 = get_quote(h, regs->r12, regs->r13);
            break;
        case TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT:
            r10 = setup_event_notify(h, regs->r12);
            break;
        case TDVMCALL_GET_TD_VM_CALL_INFO:
            r10 = get_td_vm_call_info(regs);
            break;
        default: /* MapGPA, ReportFatalError, ...: not modelled */
            r10 = TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED;
            break;
        }
    }
    regs->r10 = r10;
    pthread_mutex_unlock(&h->lock);
    /* a request due at once (service time 0) completes before the guest's first check */
    vmm_clock_poll(h->clock);
}

void vmm_host_guest_read(vmm_host *h, uint64_t gpa, size_t len)
{
    gpa &= ~(uint64_t)TDX_GPA_SHARED_BIT;
    pthread_mutex_lock(&h->lock);
    for (int i = 0; i < MAX_PENDING; i++) {
        out_len_watch *w = &h->watches[i];
        if (w->armed && w->gpa >= gpa && w->gpa + 4 <= gpa + len) {
            uint8_t *mem = shared_ptr(h, w->gpa, 4);
            if (mem != NULL)
                put_u32(mem, w->value);
            w->armed = 0;
        }
    }
    pthread_mutex_unlock(&h->lock);
}

/* ------------------------------------------------------------------------------------------------
 * Lifecycle and inspection
 * ------------------------------------------------------------------------------------------------ */

vmm_host *vmm_host_create(tdxm_module *m, vmm_clock *clock, vmm_produce_fn produce, void *produce_ctx)
{
    vmm_host *h = calloc(1, sizeof *h);

    if (h == NULL)
        return NULL;
    h->queue = calloc(FAULT_QUEUE_MAX, sizeof *h->queue);
    if (h->queue == NULL) {
        free(h);
        return NULL;
    }
    h->m = m;
    h->clock = clock;
    h->produce = produce;
    h->produce_ctx = produce_ctx;
    pthread_mutex_init(&h->lock, NULL);
    if (vmm_clock_set_listener(clock, on_clock, h) != 0) {
        pthread_mutex_destroy(&h->lock);
        free(h->queue);
        free(h);
        return NULL;
    }
    if (tdxm_set_vmm(m, vmm_host_vmcall, h) != 0) {
        vmm_clock_set_listener(clock, NULL, NULL);
        pthread_mutex_destroy(&h->lock);
        free(h->queue);
        free(h);
        return NULL;
    }
    return h;
}

void vmm_host_destroy(vmm_host *h)
{
    if (h == NULL)
        return;
    tdxm_set_vmm(h->m, NULL, NULL);
    vmm_clock_set_listener(h->clock, NULL, NULL);
    if (h->slots != NULL) { /* the TD goes away: its slots (leaked ones too) go back */
        pthread_mutex_lock(&h->slots->lock);
        h->slots->c.in_flight -= h->c.in_flight;
        h->slots->c.hosts--;
        pthread_mutex_unlock(&h->slots->lock);
    }
    for (int i = 0; i < MAX_PENDING; i++)
        free(h->pending[i].payload);
    free(h->schedule);
    free(h->queue);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

vmm_clock *vmm_host_clock(vmm_host *h)
{
    return h->clock;
}

vmm_host *vmm_host_of(tdxm_module *m)
{
    return tdxm_vmm(m);
}

void vmm_host_set_producer(vmm_host *h, vmm_produce_fn produce, void *produce_ctx)
{
    pthread_mutex_lock(&h->lock);
    h->produce = produce;
    h->produce_ctx = produce_ctx;
    pthread_mutex_unlock(&h->lock);
}

void vmm_host_set_irq(vmm_host *h, vmm_irq_fn fn, void *ctx)
{
    pthread_mutex_lock(&h->lock);
    h->irq = fn;
    h->irq_ctx = ctx;
    pthread_mutex_unlock(&h->lock);
}

void vmm_host_clear_irq(vmm_host *h, void *ctx)
{
    pthread_mutex_lock(&h->lock);
    if (h->irq_ctx == ctx) {
        h->irq = NULL;
        h->irq_ctx = NULL;
    }
    pthread_mutex_unlock(&h->lock);
}

uint64_t vmm_host_next_due_ns(vmm_host *h)
{
    uint64_t due = NEVER_NS;

    pthread_mutex_lock(&h->lock);
    for (int i = 0; i < MAX_PENDING; i++)
        if (h->pending[i].used && h->pending[i].due_ns < due)
            due = h->pending[i].due_ns;
    pthread_mutex_unlock(&h->lock);
    return due;
}

void vmm_host_get_counters(vmm_host *h, vmm_counters *out)
{
    pthread_mutex_lock(&h->lock);
    *out = h->c;
    pthread_mutex_unlock(&h->lock);
}

unsigned vmm_host_notify_vector(vmm_host *h)
{
    unsigned v;

    pthread_mutex_lock(&h->lock);
    v = h->notify_vector;
    pthread_mutex_unlock(&h->lock);
    return v;
}

/* ------------------------------------------------------------------------------------------------
 * A host several TDs share (vmm_slots)
 * ------------------------------------------------------------------------------------------------ */

vmm_slots *vmm_slots_create(void)
{
    vmm_slots *s = calloc(1, sizeof *s);

    if (s != NULL)
        pthread_mutex_init(&s->lock, NULL);
    return s;
}

void vmm_slots_destroy(vmm_slots *s)
{
    if (s == NULL)
        return;
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void vmm_slots_get_counters(vmm_slots *s, vmm_slots_counters *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->c;
    pthread_mutex_unlock(&s->lock);
}

int vmm_host_share_slots(vmm_host *h, vmm_slots *s)
{
    int rc = 0;

    pthread_mutex_lock(&h->lock);
    if (h->slots != NULL || h->c.get_quotes != 0 || s == NULL) {
        rc = -TDXM_EINVAL;
    } else {
        h->slots = s;
        pthread_mutex_lock(&s->lock);
        s->c.hosts++;
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&h->lock);
    return rc;
}
