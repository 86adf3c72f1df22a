/*
 * tdx_driver.h - the tdx_guest misc device of every driver generation over the guest kernel model.
 * A generation is a row of TDXM_PROFILES[] (generated into tdx_abi.h from tdxmodel/profiles.py: its
 * commands and request layouts, errno map, injection points, locks); its code is the ops table the
 * row names (tdx_driver.c): v4 as posted on 22 Apr 2022 (ref §2.2), upstream 6.2-6.15 (ref §2.4) and
 * 6.16+ with its cached report buffer, mr_lock and sysfs measurement files (ref §2.5). Processes open
 * the nodes and issue open/close/ioctl/pread/pwrite that return what the syscalls would.
 *
 * Layer 1 (C core). Every entry point runs without the GIL; mr_lock is the only thing that waits.
 */
#ifndef TDX_DRIVER_H
#define TDX_DRIVER_H

#include <stdint.h>
#include "guest_kernel.h"

/* Targets of force_misaligned (CONTRACT Kernel.force_misaligned). */
enum td_misalign { TD_MISALIGN_NONE = 0, TD_MISALIGN_TDREPORT = 1, TD_MISALIGN_REPORTDATA = 2 };

/* A file the driver exposes. The Cython layer builds the table from tdxmodel.abi (DEVICE_PATHS,
 * MEASUREMENT_DIRS, MEASUREMENTS), so no path or offset is spelled here. */
enum td_node_kind { TD_NODE_DEVICE = 1, TD_NODE_MEASUREMENT = 2, TD_NODE_CONFIGFS = 3 };
typedef struct {
    const char *path;   /* copied at kernel creation */
    int kind;
    uint32_t tdr_offset; /* measurement: its 48 bytes in the TDREPORT (ref §4.4) */
    int writable;        /* measurement: rtmrN (0644, LIVE) */
} td_node;

typedef struct td_kernel td_kernel;
typedef struct td_process td_process;

/* Create the kernel with generation `driver` (an index of TDXM_PROFILES) loaded. Init follows the driver (6.16: kzalloc the report buffer
 * (point report_buf:kzalloc) and issue one REPORT with zero REPORTDATA, ref §2.5 "Init order").
 * init_fail_nth arms fail-nth for init; because the fault knobs cannot be set before the kernel
 * exists, an armed init fail-nth bypasses the capability filters (ignore-gfp-wait), as the documented
 * sweep would set them. Returns NULL with *err = -errno on a failed init (nothing left allocated; a
 * failed init REPORT leaves its status in *init_status), or -TDXM_ENOMEM when the host is out of memory. */
/* Generations with a quote path (TDXM_PROFILES[].has_quote) then allocate the quote buffer and
 * register with configfs-tsm at tsm_report_dir (csrc/tsm_report.h); fail_decrypt makes the buffer's
 * conversion to shared fail (its pages are leaked: *leaked_pages, quote.md §2.2). */
td_kernel *td_kernel_create(tdxm_module *m, int driver, uint64_t seed, const td_node *nodes, size_t nnodes, unsigned init_fail_nth,
                            int misaligned_report_buf, int *err, uint64_t *init_status,
                            const char *tsm_report_dir, const char *tsm_provider, int fail_decrypt,
                            uint64_t *leaked_pages);
void td_kernel_destroy(td_kernel *tk);
gk_kernel *td_kernel_gk(td_kernel *tk);
int td_kernel_driver(td_kernel *tk);
void td_force_misaligned(td_kernel *tk, int target);
/* 6.16 mr_lock from outside: 1 taken, 0 busy; release: 0, or -TDXM_EINVAL when no outside hold. */
int td_mr_lock_try(td_kernel *tk);
int td_mr_lock_release(td_kernel *tk);
/* The ioctl quote paths' quote_lock from outside (downstream, v4): 1 taken, 0 busy (or no such lock);
 * release: 0, or -TDXM_EINVAL when no outside hold. */
int td_quote_lock_try(td_kernel *tk);
int td_quote_lock_release(td_kernel *tk);
/* Locks a call returned to user space still holding (v4's quote_lock, ref §2.2): 0 or 1. */
int td_locks_leaked(td_kernel *tk);
/* Mark the 6.16 tsm-mr cache stale (host-side state sync after tdxm_set_rtmr); harmless elsewhere. */
void td_mr_cache_stale(td_kernel *tk);
/* The injection points of generation `driver` in the order the driver reaches them (its profile's
 * table); returns how many, or -TDXM_EINVAL for no such generation. */
int td_injection_points(int driver, int out[GK_NUM_POINTS]);

/* Processes */
td_process *td_process_create(td_kernel *tk);
void td_process_destroy(td_process *p);
gk_mm *td_process_mm(td_process *p);
gk_task *td_process_task(td_process *p);
void td_fault_user_copy(td_process *p, int armed, size_t at);
/* The points the last syscall passed; returns the count (<= GK_TRACE_MAX). */
unsigned td_last_trace(td_process *p, gk_trace_entry out[GK_TRACE_MAX]);
unsigned td_init_trace(td_kernel *tk, gk_trace_entry out[GK_TRACE_MAX]);

/* A TDCALL the kernel issued ended in a TD exit (only possible when the host unmapped the kernel's own
 * pages): the syscall cleans up as on an error and returns TD_RET_TD_EXIT; td_last_exit() tells the
 * kind (tdxm_exit_kind) and GPA, and the Cython layer raises tdxmodel.errors.EptViolation / #VE. */
#define TD_RET_TD_EXIT (-4096L)
/* The task would block forever in mutex_lock on a lock its holder returned to user space with (v4's
 * leaked quote_lock, ref §2.2): the syscall never returns; the Cython layer raises TaskHung. */
#define TD_RET_HUNG (-4098L)
int td_last_exit(td_process *p, uint64_t *gpa);

/* accmode: flags & O_ACCMODE (0 read, 1 write, 2 both; 3 is kept and allows both, as Linux stores it).
 * fd >= 3, or -ENOENT / -EACCES / -EMFILE. pread/pwrite: offset < 0 -> -EINVAL before the fd lookup,
 * count < 0 -> -EINVAL after -EBADF (ksys_pread64, rw_verify_area). */
int td_open(td_process *p, const char *path, int accmode);
int td_close(td_process *p, int fd);
long td_ioctl(td_process *p, int fd, uint32_t cmd, uint64_t arg);
long td_pread(td_process *p, int fd, uint64_t addr, int64_t count, int64_t offset);
long td_pwrite(td_process *p, int fd, uint64_t addr, int64_t count, int64_t offset);

/* read(2)/write(2) at the file position (configfs files; others -EINVAL), and the configfs directory
 * calls (a path outside the configfs tree, or a generation without one: -ENOENT). */
long td_read(td_process *p, int fd, uint64_t addr, int64_t count);
long td_write(td_process *p, int fd, uint64_t addr, int64_t count);
int td_mkdir(td_process *p, const char *path);
int td_rmdir(td_process *p, const char *path);
int td_stat(td_process *p, const char *path, int *kind, int *mode);
long td_readdir(td_process *p, const char *path, char *out, size_t cap);

/* Services of the quote provider (csrc/tsm_report.c). */
typedef struct tsm_state tsm_state;
const tdxm_profile *td_kernel_profile(td_kernel *tk);
tsm_state *td_kernel_tsm(td_kernel *tk); /* NULL: no quote path */
uint64_t td_kernel_tdcall(td_kernel *tk, int leaf, uint64_t rcx, uint64_t rdx);
int td_mr_lock_interruptible(td_kernel *tk, gk_task *task);
void td_mr_unlock(td_kernel *tk);
uint8_t *td_report_buf(td_kernel *tk);

#endif /* TDX_DRIVER_H */
