/*
 * tdx_wire.h - the Unix-socket protocol between `tdxmodel serve --socket` (tdx_socket.c) and the
 * LD_PRELOAD library (csrc/preload/tdx_preload.c). tdxmodel/transport/protocol.py mirrors it.
 *
 * Host-local: native byte order, no versioning beyond TDXW_VERSION (both ends come from one build).
 * Every message is a tdxw_header and `length` payload bytes; the structs below are sent one after
 * another, never as one padded C struct. Plain C, no libfuse: the preload library includes it.
 */
#ifndef TDX_WIRE_H
#define TDX_WIRE_H

#include <stdint.h>

#define TDXW_MAGIC 0x4D584454u /* "TDXM" */
#define TDXW_VERSION 3u        /* 2: HELLO carries the device node's mode, rdev and time; 3: the
                                  served tree (configfs-tsm, CCEL, measurement files) */
#define TDXW_MAX_WINDOW 8192u  /* largest mirror a request may carry (the drivers need <= 1088) */
#define TDXW_MAX_PATH 256u
#define TDXW_MAX_WINDOWS 16u
#define TDXW_MAX_MAPS 8u
#define TDXW_MAX_SERVED 64u
#define TDXW_MAX_IO 65536u     /* most bytes one READ, WRITE or READDIR reply moves */

enum tdxw_op {
    TDXW_OP_HELLO = 0, /* -> tdxw_hello: device path, node attributes, the window of each known cmd */
    TDXW_OP_OPEN = 1,  /* payload: tdxw_open; the connection becomes one open file of the device */
    TDXW_OP_IOCTL = 2, /* payload: tdxw_ioctl + readable bytes; reply tdxw_reply + changed bytes */
    /* The served tree (tdx_ops.h vfs_*): payload tdxw_path + the path's bytes (no NUL); the reply is
     * a tdxw_reply whose wb_length bytes are the data (wb_offset 0). */
    TDXW_OP_VSTAT = 3,   /* reply data: tdxw_vstat */
    TDXW_OP_MKDIR = 4,   /* tdxw_path.mode */
    TDXW_OP_RMDIR = 5,
    TDXW_OP_READDIR = 6, /* reply data: entries "<d|f><name>\0" */
    TDXW_OP_VOPEN = 7,   /* tdxw_path.flags; the connection becomes that open file (close: release) */
    /* on a VOPEN'd connection: payload tdxw_rw (+ count bytes for WRITE) */
    TDXW_OP_READ = 8,    /* reply data: the bytes read */
    TDXW_OP_WRITE = 9,
    TDXW_OP_LSEEK = 10,  /* tdxw_rw.offset, tdxw_rw.whence; result: the new position */
    TDXW_OP_FLUSH = 11,  /* no payload: a close(2) of one of the fds (the release follows the last) */
};
#define TDXW_OP_LAST TDXW_OP_FLUSH

struct tdxw_header {
    uint32_t magic;
    uint16_t version;
    uint16_t op;
    uint32_t length; /* bytes of payload after this header */
};

struct tdxw_window {
    uint64_t cmd;
    uint32_t window;
    uint32_t pad;
};

/* A client path the preload library forwards: `client` exactly (exact = 1) or it and everything below
 * (exact = 0), as `served` (and below) of the daemon's tree. */
struct tdxw_map {
    char client[TDXW_MAX_PATH];
    char served[TDXW_MAX_SERVED];
    uint32_t exact;
    uint32_t pad;
};

struct tdxw_hello {
    char device_path[TDXW_MAX_PATH]; /* NUL-terminated: the node the preload library intercepts */
    uint32_t nwindows;
    uint32_t mode;       /* permission bits of the device node (the daemon's --mode) */
    uint32_t rdev_major; /* what stat answers for the node: a misc character device */
    uint32_t rdev_minor;
    int64_t mtime;       /* the node's times: when the daemon started (seconds since the epoch) */
    struct tdxw_window windows[TDXW_MAX_WINDOWS];
    uint32_t nmaps;
    uint32_t pad;
    struct tdxw_map maps[TDXW_MAX_MAPS];
};

struct tdxw_open {
    int32_t flags; /* the client's open(2) flags */
    uint32_t pad;
};

struct tdxw_ioctl {
    uint64_t cmd;
    uint64_t arg;      /* the client's raw pointer: its page offset is kept in the emulated mirror */
    uint32_t window;   /* bytes of the mirror the client asked about */
    uint32_t readable; /* bytes from arg the client could read (<= window); that many follow */
    uint32_t writable; /* bytes from arg the client could write (<= readable) */
    uint32_t pad;
};

struct tdxw_path {
    int32_t flags;   /* VOPEN: the client's open(2) flags */
    uint32_t mode;   /* MKDIR: the mode */
    uint32_t length; /* bytes of the path that follow (< TDXW_MAX_PATH) */
    uint32_t pad;
};

struct tdxw_vstat {
    uint32_t type; /* 1 directory, 2 file (tdx_ops.h TDXF_VFS_*) */
    uint32_t mode; /* permission bits */
    uint64_t size;
};

struct tdxw_rw {
    int64_t offset;  /* READ/WRITE: < 0 at the open file's position; LSEEK: the offset */
    uint32_t count;  /* READ/WRITE: bytes (<= TDXW_MAX_IO) */
    int32_t whence;  /* LSEEK */
};

struct tdxw_reply {
    int64_t result;     /* 0 / positive, or -errno; also the reply to OPEN */
    uint32_t wb_offset; /* the changed bytes start at arg + wb_offset ... */
    uint32_t wb_length; /* ... and that many follow this struct */
};

#endif /* TDX_WIRE_H */
