"""The served tree of ``tdxmodel serve`` (layer 4): the configfs-tsm tree as the emulated kernel has
it, and the daemon's control files by path, for both transports (FUSE below ``DIR/tsm``, the socket
for the LD_PRELOAD library).

Paths are relative to the mount: ``tsm``, ``tsm/report``, ``tsm/report/<item>/<attribute>`` are
``/sys/kernel/config/tsm...`` of the emulated kernel; every other path names a control file (or a
directory of them) of ``EmulatedDevice.control_nodes``, e.g. ``measurements/rtmr0:sha384`` or
``acpi/tables/data/CCEL``.

configfs-tsm calls go to the emulated kernel's syscalls, so every errno is the kernel's (quote.md
§1, docs/CONTRACT.md "configfs-tsm"):

* one open file of a client (a FUSE open, or a preload connection) is one emulated ``Process``
  holding one fd of the attribute; the transport's release (FUSE's RELEASE comes at the last close
  of the client's file, dup'd and inherited fds included; a preload connection ends at its last
  close too) is that fd's close, i.e. configfs's release, which commits a buffered inblob;
* reads and writes go at the transport's offset (``pread``/``pwrite`` of the emulated fd; FUSE sends
  the file position), so the double read of the first outblob read, EOF for an empty outblob,
  -EFBIG past 64 bytes, the open-mode -EACCES and the generation counter are the kernel's own;
* mkdir, rmdir, stat and readdir run on a fresh Process each;
* the release of a last close comes after the client's close(2) has returned, on both transports
  (FUSE sends RELEASE in the background, fs/fuse/file.c; a preload connection's end is read by
  another thread), while configfs commits an inblob before close returns. So every close is
  announced first (FUSE's FLUSH, the preload library's FLUSH request, both synchronous), and a
  call on the tree waits, at most RELEASE_WAIT seconds, for the release of a written file whose fd
  was closed: a client's next call sees the commit, as on the kernel. (A file with another fd
  still open, dup'd or inherited, gets no release: the wait then ends at the bound.)
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any, Dict, List, Optional, Tuple, Union

from tdxmodel import abi, profiles

PAGE = abi.TDX_PAGE_SIZE
#: Where an open file's Process maps its buffer for reads and writes (any page-aligned address).
IO_BASE = 0x7C0000000000
#: The most one read or write moves (a shorter read is what read(2) may return; outblobs are
#: <= 32 KiB up to 6.19, quote.md §1.1, and a 16 MiB v7.0 one takes several reads).
IO_MAX = 16 * PAGE
#: Served-tree prefix of the configfs-tsm tree, and the emulated kernel's path it shows.
TSM = "tsm"
TSM_KERNEL_DIR = profiles.TSM_REPORT_DIR.rsplit("/", 1)[0]   # /sys/kernel/config/tsm
DIR, FILE = 1, 2   # tdx_ops.h TDXF_VFS_DIR, TDXF_VFS_FILE
_TEXT_ATTRS = {"generation", "provider"}

Stat = Tuple[int, int, int]   # (DIR | FILE, permission bits, st_size)
#: The longest a call on the tree waits for the release of a closed, written file (seconds).
RELEASE_WAIT = 0.5


class _TsmFile:
    __slots__ = ("process", "fd", "lock", "pos", "size", "writes")

    def __init__(self, process: Any, fd: int, size: int, writes: bool) -> None:
        self.process, self.fd, self.size, self.writes = process, fd, size, writes
        self.lock = threading.Lock()
        self.pos = 0


class _ControlFile:
    __slots__ = ("node", "lock", "pos", "size")

    def __init__(self, node: int, size: int) -> None:
        self.node, self.size = node, size
        self.lock = threading.Lock()
        self.pos = 0


def _kernel_path(path: str) -> Optional[str]:
    if path == TSM:
        return TSM_KERNEL_DIR
    if path.startswith(TSM + "/"):
        return TSM_KERNEL_DIR + path[len(TSM):]
    return None


class ServedTree:
    """ServedTree(device): the vfs_* callbacks of ``tdxmodel.transport._server.DeviceServer`` for
    one ``EmulatedDevice`` (its kernel, its control files and its fail-nth)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.kernel = device.kernel
        self.has_tsm = device.profile.quote is not None
        self._files: Dict[int, Union[_TsmFile, _ControlFile]] = {}
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._closing: set = set()   # written files whose fd was closed, release not yet seen
        self._next = 1
        self._controls: Dict[str, Tuple[int, int, int]] = {}   # path -> (node, mode, size)
        self._dirs: Dict[str, List[Tuple[str, bool]]] = {}      # control directories -> entries

    def add_controls(self, nodes: List[Tuple[str, int, int]], sizes: Dict[str, int]) -> None:
        """The control files (EmulatedDevice.control_nodes) and their directories, by path."""
        for path, node, mode in nodes:
            size = sizes.get(path, abi.MEASUREMENT_LEN if path.startswith("measurements/") else 0)
            self._controls[path] = (node, mode, size)
            parts = path.split("/")
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth])
                entry = (parts[depth], depth < len(parts) - 1)
                if entry not in self._dirs.setdefault(parent, []):
                    self._dirs[parent].append(entry)
        if self.has_tsm and (TSM, True) not in self._dirs.setdefault("", []):
            self._dirs[""].append((TSM, True))

    # ------------------------------------------------------------------ paths
    def _tsm(self, path: str) -> Optional[str]:
        kpath = _kernel_path(path) if self.has_tsm else None
        if kpath is not None and self._closing:
            self._await_releases()
        return kpath

    def _await_releases(self) -> None:
        with self._released:
            self._released.wait_for(lambda: not self._closing, RELEASE_WAIT)
            self._closing.clear()   # past the bound: an fd still open elsewhere, no release coming

    def vfs_flush(self, handle: int) -> None:
        """A close(2) of one of the open file's fds: a release may follow (see the module doc)."""
        with self._lock:
            f = self._files.get(handle)
            if isinstance(f, _TsmFile) and f.writes:
                self._closing.add(handle)

    def vfs_stat(self, path: str) -> Union[Stat, int]:
        kpath = self._tsm(path)
        if kpath is not None:
            st = self.kernel.process().stat(kpath)
            if isinstance(st, int):
                return st
            if st["type"] == "dir":
                return DIR, st["mode"], 0
            name = kpath.rsplit("/", 1)[1]
            size = abi.TSM_TEXT_ATTR_SIZE if name in _TEXT_ATTRS else abi.TSM_BIN_ATTR_SIZE
            return FILE, st["mode"], size
        if path in self._controls:
            _node, mode, size = self._controls[path]
            return FILE, mode, size
        if path in self._dirs:
            return DIR, 0o755, 0
        return -errno.ENOENT

    def vfs_readdir(self, path: str) -> Union[List[Tuple[str, bool]], int]:
        kpath = self._tsm(path)
        if kpath is not None:
            p = self.kernel.process()
            names = p.readdir(kpath)
            if isinstance(names, int):
                return names
            out = []
            for name in names:
                st = p.stat(f"{kpath}/{name}")
                out.append((name, isinstance(st, dict) and st["type"] == "dir"))
            return out
        if path in self._dirs:
            return sorted(self._dirs[path])
        return -errno.ENOTDIR if path in self._controls else -errno.ENOENT

    def vfs_mkdir(self, path: str, mode: int, pid: int) -> int:
        kpath = self._tsm(path)
        if kpath is None:
            return -errno.EPERM
        return self.kernel.process().mkdir(kpath, mode & 0o7777)

    def vfs_rmdir(self, path: str, pid: int) -> int:
        kpath = self._tsm(path)
        if kpath is None:
            return -errno.ENOTDIR if path in self._controls else -errno.EPERM
        return self.kernel.process().rmdir(kpath)

    # ------------------------------------------------------------------ open files
    def _add(self, f: Union[_TsmFile, _ControlFile]) -> int:
        with self._lock:
            handle = self._next
            self._next += 1
            self._files[handle] = f
        return handle

    def vfs_open(self, path: str, flags: int, pid: int) -> int:
        if flags & os.O_CREAT:
            # configfs and kernfs have no create: a new name is -EACCES, O_EXCL on one that exists
            # -EEXIST (fs/namei.c lookup_open); the preload library's opens arrive here with O_CREAT
            st = self.vfs_stat(path)
            if isinstance(st, tuple) and flags & os.O_EXCL:
                return -errno.EEXIST
            if st == -errno.ENOENT:
                parent = self.vfs_stat(path.rsplit("/", 1)[0]) if "/" in path else (DIR, 0o755, 0)
                return -errno.EACCES if isinstance(parent, tuple) and parent[0] == DIR else -errno.ENOENT
        kpath = self._tsm(path)
        if kpath is not None:
            p = self.kernel.process()
            fd = p.open(kpath, flags)
            if fd < 0:
                return fd
            p.mmap(IO_BASE, IO_MAX, "rw")
            st = self.vfs_stat(path)
            return self._add(_TsmFile(p, fd, st[2] if isinstance(st, tuple) else 0,
                                      flags & os.O_ACCMODE != os.O_RDONLY))
        if path in self._controls:
            node, mode, size = self._controls[path]
            # kernfs refuses to open a read-only attribute for writing, even for root
            if flags & os.O_ACCMODE != os.O_RDONLY and not mode & 0o222:
                return -errno.EACCES
            if flags & os.O_ACCMODE != os.O_WRONLY and not mode & 0o444:
                return -errno.EACCES
            return self._add(_ControlFile(node, size))
        if path in self._dirs:   # a directory opens for reading only; read(2) on it is -EISDIR
            return -errno.EISDIR if flags & os.O_ACCMODE != os.O_RDONLY else self._add(_ControlFile(-1, 0))
        return -errno.ENOENT

    def vfs_release(self, handle: int) -> None:
        with self._lock:
            f = self._files.pop(handle, None)
        if isinstance(f, _TsmFile):
            with f.lock:
                f.process.close(f.fd)   # configfs's release: a buffered inblob commits here
        with self._released:
            self._closing.discard(handle)
            self._released.notify_all()

    def vfs_read(self, handle: int, size: int, offset: int) -> Union[bytes, int]:
        if self._closing:
            self._await_releases()
        f = self._files.get(handle)
        if f is None:
            return -errno.EBADF
        if not isinstance(f, _ControlFile):
            self.device._catch_up()  # a configfs read (a quote) sees a `tdxmodel tcb` or extend at once
        with f.lock:
            pos = f.pos if offset < 0 else offset
            if isinstance(f, _ControlFile):
                data = self.device.control_read(f.node, 0, size, pos) if f.node >= 0 else -errno.EISDIR
            else:
                p = f.process
                count = min(size, IO_MAX)
                n = self.device._syscall(p, lambda: p.pread(f.fd, IO_BASE, count, pos))
                data = n if n < 0 else p.peek(IO_BASE, n)
            if offset < 0 and not isinstance(data, int):
                f.pos = pos + len(data)
            return data

    def vfs_write(self, handle: int, data: bytes, offset: int) -> int:
        if self._closing:
            self._await_releases()
        f = self._files.get(handle)
        if f is None:
            return -errno.EBADF
        with f.lock:
            pos = f.pos if offset < 0 else offset
            if isinstance(f, _ControlFile):
                n = self.device.control_write(f.node, 0, data, pos) if f.node >= 0 else -errno.EBADF
            else:
                p = f.process
                # beyond the mapped buffer the copy faults as a client's unmapped page would
                count = len(data)
                p.poke(IO_BASE, data[:IO_MAX])
                n = self.device._syscall(p, lambda: p.pwrite(f.fd, IO_BASE, count, pos))
            if offset < 0 and n > 0:
                f.pos = pos + n
            return n

    def vfs_lseek(self, handle: int, offset: int, whence: int) -> int:
        """generic_file_llseek, as configfs's and kernfs's files have: SEEK_END is from st_size."""
        f = self._files.get(handle)
        if f is None:
            return -errno.EBADF
        with f.lock:
            base = {os.SEEK_SET: 0, os.SEEK_CUR: f.pos, os.SEEK_END: f.size}.get(whence)
            if base is None:
                return -errno.EINVAL
            if base + offset < 0:
                return -errno.EINVAL
            f.pos = base + offset
            return f.pos

    def close(self) -> None:
        with self._lock:
            handles = list(self._files)
        for h in handles:
            self.vfs_release(h)
