# Declarations of csrc/transport/tdx_server.h: only what _server.pyx uses.
from libc.stdint cimport uint32_t, uint64_t

from tdxmodel.transport.tdx_ops cimport tdxf_handler

cdef extern from "tdx_server.h" nogil:
    const unsigned TDXW_MAX_WINDOW
    const tdxf_handler tdxf_null_handler

    enum:
        TDXF_NODE_DIR
        TDXF_NODE_DEVICE
        TDXF_NODE_CONTROL
        TDXF_NODE_VFS

    ctypedef struct tdxf_server:
        pass

    tdxf_server *tdxf_server_new(const tdxf_handler *handler, const char *device_path)
    void tdxf_server_free(tdxf_server *s)
    int tdxf_set_window(tdxf_server *s, uint64_t cmd, uint32_t window)
    uint32_t tdxf_window(const tdxf_server *s, uint64_t cmd)
    int tdxf_set_buffer(tdxf_server *s, uint64_t cmd, uint32_t ptr_off, uint32_t len_off)
    void tdxf_set_rdev(tdxf_server *s, uint32_t major, uint32_t minor)
    int tdxf_add_map(tdxf_server *s, const char *client, const char *served, int exact)
    long tdxf_add_node(tdxf_server *s, uint64_t parent, const char *name, int kind, unsigned mode,
                       uint64_t size, int node_id)

    ctypedef struct tdxf_counters:
        uint64_t fuse_ioctls, socket_ioctls, opens, releases, vm_reads, vm_writes, client_gone, malformed
    void tdxf_get_counters(const tdxf_server *s, tdxf_counters *out)
