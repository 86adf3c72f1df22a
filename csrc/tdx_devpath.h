/*
 * tdx_devpath.h - the ioctl hot path of `tdxmodel serve` on the C core, without the GIL (layer 1).
 *
 * Each open file of the served device is registered as (emulated process, emulated fd);
 * tdxf_core_ioctl mirrors the client's memory into that process at TDXF_USER_BASE + the page offset
 * of arg (with the client's permissions), runs td_ioctl and reads the result back. fail-nth armed
 * through DIR/fail-nth lives here so both this path and the Python control path count the same
 * points. The transport (a separate extension, csrc/transport/) reaches it only through the
 * tdxf_fastpath table (csrc/transport/tdx_ops.h): the core links no transport code.
 */
#ifndef TDX_DEVPATH_H
#define TDX_DEVPATH_H

#include <stdint.h>

#include "transport/tdx_ops.h"

#define TDXF_USER_BASE 0x7E0000000000ull
#define TDXF_MIRROR_PAGES 3u /* a window of <= 8192 bytes at any offset spans <= 3 pages */
/* The mirror of a request's embedded buffer (tdxf_ioctl_call.buf_image): the client's page offset
 * kept; the request's pointer is pointed at it for the call and put back afterwards. */
#define TDXF_BUF_BASE 0x7E0100000000ull
#define TDXF_BUF_PAGES ((4096u << 10) / 4096u + 1u) /* TDXF_MAX_BUFFER at any offset */

struct td_process;
typedef struct tdxf_core tdxf_core;
tdxf_core *tdxf_core_new(unsigned max_files);
void tdxf_core_free(tdxf_core *c);
/* ioctl and interrupt below, as the transport's table; valid as long as c */
const tdxf_fastpath *tdxf_core_fastpath(tdxf_core *c);
/* the process must have TDXF_MIRROR_PAGES pages mapped rw at TDXF_USER_BASE; handle >= 1 or -EMFILE */
long tdxf_core_register(tdxf_core *c, struct td_process *p, int fd);
/* waits for a call in progress on the handle; afterwards the process may be closed */
void tdxf_core_unregister(tdxf_core *c, uint64_t handle);
long tdxf_core_ioctl(tdxf_core *c, tdxf_ioctl_call *call);
/* the emulated task of `handle` gets (on = 1) or loses (on = 0) a pending signal */
void tdxf_core_interrupt(tdxf_core *c, uint64_t handle, int on);
/* daemon-wide fail-nth: arm takes the pending count (0 if none) for one syscall; disarm gives back
 * what that syscall left unreached (ref §7: the count runs on across calls until it fires). */
unsigned tdxf_core_fail_nth_arm(tdxf_core *c);
void tdxf_core_fail_nth_disarm(tdxf_core *c, unsigned left);
void tdxf_core_fail_nth_set(tdxf_core *c, unsigned n);
unsigned tdxf_core_fail_nth_get(tdxf_core *c);

#endif /* TDX_DEVPATH_H */
