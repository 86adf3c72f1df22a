/*
 * tdx_fuse.h - serve a tdxf_server as a FUSE file system (libfuse3 low-level API, multithreaded
 * loop): the device file, the 6.16 measurement files and the fault-injection control files.
 */
#ifndef TDX_FUSE_H
#define TDX_FUSE_H

#include "tdx_server.h"

/* Mount on `mountpoint` and run the multithreaded loop until tdxf_fuse_stop (call from a dedicated
 * thread, without the GIL). `options` is a comma-separated libfuse -o string or NULL.
 * tdxf_fuse_mount returns 0 or -errno; tdxf_fuse_run returns the loop's result. */
int tdxf_fuse_mount(tdxf_server *s, const char *mountpoint, const char *options, int max_threads);
int tdxf_fuse_run(tdxf_server *s);
/* Make the loop return and unmount (lazily: clients that keep files open get errors once the loop
 * has ended). Safe from any thread, idempotent; waits up to about a second for the loop. */
void tdxf_fuse_stop(tdxf_server *s);

#endif /* TDX_FUSE_H */
