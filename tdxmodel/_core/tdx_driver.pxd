# Declarations of csrc/tdx_driver.h: only what the Cython layer uses.

from libc.stdint cimport uint32_t, uint64_t, int64_t

from tdxmodel._core.guest_kernel cimport gk_kernel, gk_mm, gk_task, gk_trace_entry
from tdxmodel._core.tdx_module cimport tdxm_module

cdef extern from "tdx_driver.h" nogil:
    enum:
        TD_MISALIGN_NONE
        TD_MISALIGN_TDREPORT
        TD_MISALIGN_REPORTDATA
        TD_NODE_DEVICE
        TD_NODE_MEASUREMENT
        TD_NODE_CONFIGFS
    long TD_RET_TD_EXIT
    long TD_RET_HUNG

    ctypedef struct td_node:
        const char *path
        int kind
        uint32_t tdr_offset
        int writable

    ctypedef struct td_kernel:
        pass
    ctypedef struct td_process:
        pass

    td_kernel *td_kernel_create(tdxm_module *m, int driver, uint64_t seed, const td_node *nodes,
                                size_t nnodes, unsigned init_fail_nth, int misaligned_report_buf, int *err,
                                uint64_t *init_status, const char *tsm_report_dir, const char *tsm_provider, int fail_decrypt,
                                uint64_t *leaked_pages)
    void td_kernel_destroy(td_kernel *tk)
    gk_kernel *td_kernel_gk(td_kernel *tk)
    void td_force_misaligned(td_kernel *tk, int target)
    int td_mr_lock_try(td_kernel *tk)
    int td_mr_lock_release(td_kernel *tk)
    int td_quote_lock_try(td_kernel *tk)
    int td_quote_lock_release(td_kernel *tk)
    int td_locks_leaked(td_kernel *tk)
    void td_mr_cache_stale(td_kernel *tk)
    int td_injection_points(int driver, int *out)

    td_process *td_process_create(td_kernel *tk)
    void td_process_destroy(td_process *p)
    gk_mm *td_process_mm(td_process *p)
    gk_task *td_process_task(td_process *p)
    void td_fault_user_copy(td_process *p, int armed, size_t at)
    unsigned td_last_trace(td_process *p, gk_trace_entry *out)
    unsigned td_init_trace(td_kernel *tk, gk_trace_entry *out)
    int td_last_exit(td_process *p, uint64_t *gpa)

    int td_open(td_process *p, const char *path, int accmode)
    int td_close(td_process *p, int fd)
    long td_ioctl(td_process *p, int fd, uint32_t cmd, uint64_t arg)
    long td_pread(td_process *p, int fd, uint64_t addr, int64_t count, int64_t offset)
    long td_pwrite(td_process *p, int fd, uint64_t addr, int64_t count, int64_t offset)
    long td_read(td_process *p, int fd, uint64_t addr, int64_t count)
    long td_write(td_process *p, int fd, uint64_t addr, int64_t count)
    int td_mkdir(td_process *p, const char *path)
    int td_rmdir(td_process *p, const char *path)
    int td_stat(td_process *p, const char *path, int *kind, int *mode)
    long td_readdir(td_process *p, const char *path, char *out, size_t cap)
    ctypedef struct tsm_state:
        pass
    tsm_state *td_kernel_tsm(td_kernel *tk)

cdef extern from "tsm_report.h" nogil:
    long TSM_RET_OOPS
    enum:
        TSM_STAT_DIR
        TSM_STAT_FILE
    void tsm_unregister(tsm_state *s)
    int tsm_register(tsm_state *s)
    int tsm_registered(tsm_state *s)
    int tsm_quote_lock_try(tsm_state *s)
    int tsm_quote_lock_release(tsm_state *s)
    int tsm_set_generations(tsm_state *s, const char *name, uint64_t write_gen, uint64_t read_gen)
    uint64_t tsm_quote_buf_gpa(tsm_state *s)
    unsigned tsm_quote_buf_size(tsm_state *s)
    uint32_t tsm_getquote_timeout(tsm_state *s)
    void tsm_set_getquote_timeout(tsm_state *s, uint32_t polls)
    int tsm_set_completion(tsm_state *s, int mode, uint32_t interval_ms, uint32_t cap_ms, int sleep, uint32_t hz)
    int tsm_notify_registered(tsm_state *s)
    uint64_t tsm_notify_irqs(tsm_state *s)
