# Declarations of csrc/transport/tdx_fuse.h.
from tdxmodel.transport.tdx_server cimport tdxf_server

cdef extern from "tdx_fuse.h" nogil:
    int tdxf_fuse_mount(tdxf_server *s, const char *mountpoint, const char *options, int max_threads)
    int tdxf_fuse_run(tdxf_server *s)
    void tdxf_fuse_stop(tdxf_server *s)
