# Declarations of csrc/transport/tdx_socket.h.
from tdxmodel.transport.tdx_server cimport tdxf_server

cdef extern from "tdx_socket.h" nogil:
    int tdxf_socket_listen(tdxf_server *s, const char *path, unsigned mode)
    int tdxf_socket_run(tdxf_server *s)
    void tdxf_socket_stop(tdxf_server *s)
