/*
 * tsm_report.h - configfs-tsm report (the tsm core with configfs's file mechanics) and the tdx_guest
 * quote provider, for the generations whose profile has a quote path (TDXM_PROFILES[].has_quote).
 *
 * Layer 1 (C core), part of the guest kernel. Facts: shared/reference/quote.md §1 (configfs-tsm:
 * §1.3 generations, §1.4 write, §1.5 read R1-R8, §1.6 mkdir/rmdir), §2.2-§2.4 (the provider P1-P11
 * and the wait loop) and tdx-abi.md §2.6-§2.7, §7. The host side is reached only through the module's
 * TDG.VP.VMCALL, the shared buffer and the platform clock (csrc/vmm_host.h).
 *
 * Every entry point runs without the GIL. Locks: the global tsm_rwsem (uninterruptible, as the
 * guard(rwsem_*) of report.c), quote_lock (interruptible), and per open file configfs's buffer mutex.
 */
#ifndef TSM_REPORT_H
#define TSM_REPORT_H

#include <stdint.h>
#include "guest_kernel.h"

typedef struct td_kernel td_kernel;
typedef struct tsm_state tsm_state;
typedef struct tsm_file tsm_file;

/* Returned by a configfs read that dereferences the NULL provider (<= 6.15 `provider` after
 * unregister, quote.md §1.7): the Python layer raises tdxmodel.errors.KernelOops. */
#define TSM_RET_OOPS (-4097L)

/* stat kinds */
enum { TSM_STAT_DIR = 1, TSM_STAT_FILE = 2 };

/* Init (quote.md §2.2): the quote buffer (alloc_pages_exact at point quote_buf:alloc_pages, order from
 * the profile, zeroed, converted to shared), then tsm_register. NULL with *err = -errno on failure;
 * with fail_decrypt the conversion fails and the pages are deliberately leaked (*leaked_pages). */
tsm_state *tsm_create(td_kernel *tk, gk_ctx *init, const char *report_dir, const char *provider, int fail_decrypt, int *err,
                      uint64_t *leaked_pages);
void tsm_destroy(tsm_state *s);

/* 1 when path is under the configfs mount this model serves (the report dir's grandparent). */
int tsm_owns_path(tsm_state *s, const char *path);

/* The syscalls, returning what they would (0 / a count / -errno). accmode as td_open. */
tsm_file *tsm_open(tsm_state *s, const char *path, int accmode, int *err);
long tsm_read(tsm_state *s, gk_ctx *c, tsm_file *f, uint64_t uaddr, int64_t count, int64_t *pos);
long tsm_write(tsm_state *s, gk_ctx *c, tsm_file *f, uint64_t uaddr, int64_t count, int64_t *pos);
int64_t *tsm_file_pos(tsm_file *f);
void tsm_release(tsm_state *s, gk_ctx *c, tsm_file *f); /* close: commit a written inblob, ignore its result */
int tsm_mkdir(tsm_state *s, const char *path);
int tsm_rmdir(tsm_state *s, const char *path);
int tsm_stat(tsm_state *s, const char *path, int *kind, int *mode);
/* NUL-terminated names back to back in out (at most cap bytes), sorted; returns how many, or -errno
 * (-ERANGE when cap is too small). */
long tsm_readdir(tsm_state *s, const char *path, char *out, size_t cap);

/* The provider's registration (tdx_guest module unload / reload of its TSM part, quote.md §1.6). */
void tsm_unregister(tsm_state *s);
int tsm_register(tsm_state *s); /* 0, or -EBUSY */
int tsm_registered(tsm_state *s);

/* quote_lock from outside (a test playing another task; only tdx_report_new takes it, under the tsm
 * write lock): 1 taken, 0 busy; release: 0, or -EINVAL when there is no outside hold. */
int tsm_quote_lock_try(tsm_state *s);
int tsm_quote_lock_release(tsm_state *s);

/* Model-only (tests): set an item's generation counters (the wrap guard needs 2^64 writes). */
int tsm_set_generations(tsm_state *s, const char *name, uint64_t write_gen, uint64_t read_gen);
/* The quote buffer's GPA and size; the number of quotes in flight in the host's view (status IN_FLIGHT). */
uint64_t tsm_quote_buf_gpa(tsm_state *s);
/* How P7 waits (profiles.QuoteCompletion; QUOTE_WAIT_*, QUOTE_SLEEP_*): set at init. The interrupt
 * mode registers QUOTE_NOTIFY_VECTOR with SetupEventNotifyInterrupt then. 0, or -EINVAL. */
int tsm_set_completion(tsm_state *s, int mode, uint32_t interval_ms, uint32_t cap_ms, int sleep, uint32_t hz);
int tsm_notify_registered(tsm_state *s);
uint64_t tsm_notify_irqs(tsm_state *s);   /* notify vectors received */
unsigned tsm_quote_buf_size(tsm_state *s);
/* Model-only (tests): the wait loop's poll limit, getquote_timeout (a static u32 = 30 in the kernel,
 * quote.md §2.2), so a real-clock test can run a 5-poll loop. */
uint32_t tsm_getquote_timeout(tsm_state *s);
void tsm_set_getquote_timeout(tsm_state *s, uint32_t polls);

#endif /* TSM_REPORT_H */
