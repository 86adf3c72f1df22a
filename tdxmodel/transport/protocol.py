"""The Unix-socket protocol between ``tdxmodel serve --socket`` and the LD_PRELOAD library.

The C definition is ``csrc/transport/tdx_wire.h`` (``struct tdxw_*``); this module mirrors it for
Python clients and tests. Host-local: native byte order (little-endian on x86-64).

A connection carries, in order:

1. any number of ``HELLO`` exchanges: the reply names the device node the daemon serves, what stat
   answers for it (its mode, a misc device number ``abi.DEVICE_RDEV``, the daemon's start time) and,
   per known ioctl command, the "window": how many bytes from ``arg`` the driver may read or write
   (TDX_CMD_GET_REPORT0: 1088, v4's TDX_CMD_GET_TDREPORT: 1024; ref §2.2, §2.4);
2. one ``OPEN`` (the client's open flags); the reply's result is 0 or -errno. From then on the
   connection *is* one open file of the device; closing it closes the emulated file;
3. ``IOCTL`` requests: cmd, the client's raw arg, the window, how many bytes from arg the client
   could read and write, and the readable bytes. The daemon reproduces that memory (same page
   offset, same permissions) in the emulated Process, runs the ioctl, and replies with the result
   (0 / -errno) and the range of bytes the emulated kernel changed, which the client writes back.

Or, instead of 2-3, the served tree (configfs-tsm, the CCEL files, the measurement files, at the
client paths HELLO's ``maps`` name): path ops ``VSTAT``, ``MKDIR``, ``RMDIR``, ``READDIR`` (a path
header and the path; the reply's data is the answer), or one ``VOPEN`` that makes the connection one
open file of the tree, then ``READ``, ``WRITE``, ``LSEEK`` and ``FLUSH`` (a close of one of the
client's fds); the connection's end is the file's release.

Every message is a 12-byte header (magic "TDXM", version 3, op, payload length) and a payload. A
malformed message ends its connection and the daemon logs what was wrong (rate-limited).
"""

from __future__ import annotations

import socket
import struct
from typing import Dict, NamedTuple, Tuple

MAGIC = 0x4D584454
VERSION = 3
OP_HELLO, OP_OPEN, OP_IOCTL = 0, 1, 2
OP_VSTAT, OP_MKDIR, OP_RMDIR, OP_READDIR, OP_VOPEN, OP_READ, OP_WRITE, OP_LSEEK, OP_FLUSH = range(3, 12)
MAX_WINDOW = 8192
MAX_PATH = 256
MAX_WINDOWS = 16
MAX_MAPS = 8
MAX_SERVED = 64
MAX_IO = 65536

HEADER = struct.Struct("<IHHI")
HELLO = struct.Struct(f"<{MAX_PATH}sIIIIq" + "QII" * MAX_WINDOWS + "II" + f"{MAX_PATH}s{MAX_SERVED}sII" * MAX_MAPS)
PATH = struct.Struct("<iIII")
VSTAT = struct.Struct("<IIQ")
RW = struct.Struct("<qIi")
OPEN = struct.Struct("<iI")
IOCTL = struct.Struct("<QQIIII")
REPLY = struct.Struct("<qII")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv_message(sock: socket.socket) -> bytes:
    magic, version, _op, length = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if magic != MAGIC or version != VERSION:
        raise ConnectionError("not a tdxmodel daemon")
    return _recv_exact(sock, length)


class Hello(NamedTuple):
    device: str                #: the node the preload library intercepts
    mode: int                  #: permission bits of the device node
    rdev: Tuple[int, int]      #: (major, minor) stat answers for it
    mtime: int                 #: its times (the daemon's start), seconds since the epoch
    windows: Dict[int, int]    #: {cmd: bytes from arg the driver may touch}
    maps: Tuple[Tuple[str, str, bool], ...] = ()   #: (client path, served path, exact) forwarded


def hello_info(path: str) -> Hello:
    """hello_info(path: str) -> Hello: ask a daemon what it serves."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(HEADER.pack(MAGIC, VERSION, OP_HELLO, 0))
        fields = HELLO.unpack(_recv_message(s))
    device = fields[0].split(b"\0", 1)[0].decode()
    n, mode, major, minor, mtime = fields[1:6]
    windows = {fields[6 + 3 * i]: fields[7 + 3 * i] for i in range(min(n, MAX_WINDOWS))}
    at = 6 + 3 * MAX_WINDOWS
    nmaps = fields[at]
    maps = tuple((fields[at + 2 + 4 * i].split(b"\0", 1)[0].decode(),
                  fields[at + 3 + 4 * i].split(b"\0", 1)[0].decode(), bool(fields[at + 4 + 4 * i]))
                 for i in range(min(nmaps, MAX_MAPS)))
    return Hello(device, mode, (major, minor), mtime, windows, maps)


def hello(path: str) -> Tuple[str, Dict[int, int]]:
    """hello(path: str) -> (device_path, {cmd: window}): ask a daemon what it serves."""
    info = hello_info(path)
    return info.device, info.windows


class Client:
    """Client(path: str, flags: int): one open file of the device over the socket (for tests and
    tools that cannot preload). ``ioctl(cmd, buf)`` runs the command on a bytearray as if ``buf``
    were the client's memory at a page-aligned arg, and returns the result (0 or -errno)."""

    def __init__(self, path: str, flags: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        _, self.windows = hello(path)
        self.sock.sendall(HEADER.pack(MAGIC, VERSION, OP_OPEN, OPEN.size) + OPEN.pack(flags, 0))
        result, _, _ = REPLY.unpack(_recv_message(self.sock)[:REPLY.size])
        if result < 0:
            self.sock.close()
            raise OSError(-result, "open over the socket failed")

    def ioctl(self, cmd: int, buf: bytearray, arg: int = 0x10000) -> int:
        window = min(self.windows.get(cmd, 0), len(buf))
        req = IOCTL.pack(cmd, arg, window, window, window, 0) + bytes(buf[:window])
        self.sock.sendall(HEADER.pack(MAGIC, VERSION, OP_IOCTL, len(req)) + req)
        payload = _recv_message(self.sock)
        result, off, length = REPLY.unpack(payload[:REPLY.size])
        buf[off:off + length] = payload[REPLY.size:REPLY.size + length]
        return result

    def close(self) -> None:
        self.sock.close()
