/*
 * tdx_socket.h - serve a tdxf_server on a Unix stream socket, spoken by the LD_PRELOAD library
 * (wire format: tdx_wire.h). One thread per connection; a connection is one open file.
 */
#ifndef TDX_SOCKET_H
#define TDX_SOCKET_H

#include "tdx_server.h"

/* Bind and listen on `path` with `mode` (0 keeps umask's), then serve until tdxf_socket_stop:
 * tdxf_socket_run accepts and starts one thread per connection. A malformed message ends its
 * connection (the client sees EIO) and is logged (tdxf_log_client_error), never the daemon. */
int tdxf_socket_listen(tdxf_server *s, const char *path, unsigned mode);
int tdxf_socket_run(tdxf_server *s);
void tdxf_socket_stop(tdxf_server *s);

#endif /* TDX_SOCKET_H */
