"""User memory and the Linux user copies, reference backend; paired with csrc/gk_usermem.c.

Page-granular mappings with permissions (``UserMemory``, a part of ``Process``); ``copy_from_user`` /
``copy_to_user`` return the number of bytes not copied, copy byte-exactly up to the first faulting byte,
and ``copy_from_user`` zero-fills the uncopied tail of the kernel buffer. An injected ``fail_usercopy``
copies nothing (ref §7 "User-copy side effects"). ``put_user`` of 8 bytes is all or nothing.
"""

from __future__ import annotations

import threading
from typing import Dict

from tdxmodel import abi
from tdxmodel._reference._args import U64 as _U64, check_int as _check_int

PAGE_SIZE = abi.TDX_PAGE_SIZE
_PROTS = ("", "r", "w", "rw")


class UserMemory:
    """One process's address space: zero-filled pages with a protection each. Host-side ``poke`` /
    ``peek`` ignore protection; the user copies below honour it."""

    def _init_memory(self) -> None:
        self._lock = threading.Lock()
        self._pages: Dict[int, bytearray] = {}
        self._prot: Dict[int, str] = {}

    @staticmethod
    def _range(addr: int, length: int) -> range:
        _check_int("addr", addr, 0, _U64)
        _check_int("length", length, 1, _U64)
        if addr % PAGE_SIZE:
            raise ValueError(f"addr 0x{addr:x} is not page-aligned")
        if addr + length > _U64 + 1:
            raise ValueError("addr + length is beyond the 64-bit address space")
        return range(addr // PAGE_SIZE, (addr + length + PAGE_SIZE - 1) // PAGE_SIZE)

    @staticmethod
    def _check_prot(prot: str) -> str:
        if prot not in _PROTS:
            raise ValueError(f"prot must be one of '', 'r', 'w', 'rw', not {prot!r}")
        return prot

    def mmap(self, addr: int, length: int, prot: str) -> None:
        """mmap(addr: int, length: int, prot: str) -> None: map zero-filled pages (no overlap)."""
        pages = self._range(addr, length)
        self._check_prot(prot)
        with self._lock:
            if any(p in self._pages for p in pages):
                raise ValueError(f"mmap: [0x{addr:x}, +{length}) overlaps an existing mapping")
            for p in pages:
                self._pages[p] = bytearray(PAGE_SIZE)
                self._prot[p] = prot

    def mprotect(self, addr: int, length: int, prot: str) -> None:
        """mprotect(addr: int, length: int, prot: str) -> None: every page must be mapped."""
        pages = self._range(addr, length)
        self._check_prot(prot)
        with self._lock:
            if any(p not in self._pages for p in pages):
                raise ValueError(f"mprotect: [0x{addr:x}, +{length}) is not wholly mapped")
            for p in pages:
                self._prot[p] = prot

    def munmap(self, addr: int, length: int) -> None:
        """munmap(addr: int, length: int) -> None: unmapped pages in the range are ignored."""
        pages = self._range(addr, length)
        with self._lock:
            for p in pages:
                self._pages.pop(p, None)
                self._prot.pop(p, None)

    def _host_range_check(self, addr: int, n: int) -> None:
        _check_int("addr", addr, 0, _U64)
        _check_int("n", n, 0, _U64)
        if addr + n > _U64 + 1:
            raise ValueError("addr + n is beyond the 64-bit address space")
        if n == 0:  # no byte, so no page is named (as the core, and as a 0-byte copy never faults)
            return
        for p in range(addr // PAGE_SIZE, (addr + n + PAGE_SIZE - 1) // PAGE_SIZE):
            if p not in self._pages:
                raise ValueError(f"addr: page 0x{p * PAGE_SIZE:x} is not mapped")

    def poke(self, addr: int, data: bytes) -> None:
        """poke(addr: int, data: bytes) -> None: host-side write ignoring protection."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        data = bytes(data)
        self._host_range_check(addr, len(data))
        self._store(addr, data)

    def peek(self, addr: int, n: int) -> bytes:
        """peek(addr: int, n: int) -> bytes: host-side read ignoring protection."""
        self._host_range_check(addr, n)
        return self._load(addr, n)

    def _store(self, addr: int, data: bytes) -> None:
        off = 0
        while off < len(data):
            a = addr + off
            p, o = divmod(a, PAGE_SIZE)
            take = min(PAGE_SIZE - o, len(data) - off)
            self._pages[p][o:o + take] = data[off:off + take]
            off += take

    def _load(self, addr: int, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            p, o = divmod(addr + len(out), PAGE_SIZE)
            take = min(PAGE_SIZE - o, n - len(out))
            out += self._pages[p][o:o + take]
        return bytes(out)

    def _accessible_prefix(self, uaddr: int, n: int, perm: str) -> int:
        """How many bytes from uaddr are accessible with ``perm`` before the first faulting byte."""
        done = 0
        while done < n:
            a = uaddr + done
            if a > _U64:
                break
            p, o = divmod(a, PAGE_SIZE)
            prot = self._prot.get(p)
            if prot is None or perm not in prot:
                break
            done += min(PAGE_SIZE - o, n - done)
        return done

    def _user_accessible(self, uaddr: int, n: int, perm: str) -> bool:
        return self._accessible_prefix(uaddr, n, perm) == n

    def _read_user(self, uaddr: int, n: int) -> bytes:
        return self._load(uaddr, self._accessible_prefix(uaddr, n, "r"))

    def _write_user(self, uaddr: int, data: bytes) -> int:
        k = self._accessible_prefix(uaddr, len(data), "w")
        self._store(uaddr, data[:k])
        return k


# -- user copies: ``faults`` is the kernel's gk_fault.Faults, ``memory`` its Module (kernel memory by GPA),
# ``task`` the calling Process (its trace, its UserMemory, its one-shot partial-copy fault)

def copy_in(faults, task, point: str, uaddr: int, n: int) -> bytes:
    """copy_in(faults, task, point, uaddr, n) -> bytes: the user bytes up to the first faulting one, or
    nothing when fail_usercopy fails the point (a buffer sysfs keeps, or copy_from_user's source)."""
    if faults.inject(task, point, "fail_usercopy", 1):
        return b""
    return task._read_user(uaddr, n)


def copy_from_user(faults, memory, task, point: str, kdst: int, uaddr: int, n: int) -> int:
    """copy_from_user(...) -> int: bytes not copied; the kernel buffer's uncopied tail is zero-filled."""
    data = copy_in(faults, task, point, uaddr, n)
    memory.write_memory(kdst, data + bytes(n - len(data)))
    return n - len(data)


def copy_to_user(faults, memory, task, point: str, uaddr: int, ksrc: int, n: int) -> int:
    """copy_to_user(...) -> int: bytes not copied; the copied prefix stays."""
    if faults.inject(task, point, "fail_usercopy", 1):
        return n
    limit = n
    if task._partial_to_user is not None:  # model-only genuine mid-copy fault, one shot
        limit = min(n, task._partial_to_user)
        task._partial_to_user = None
    copied = task._write_user(uaddr, memory.read_memory(ksrc, limit))
    return n - copied


def copy_out(faults, task, point: str, uaddr: int, data: bytes) -> int:
    """copy_out(...) -> int: copy_to_user from a kernel value that is not in guest memory (a stack
    variable of the driver): bytes not copied; the copied prefix stays."""
    n = len(data)
    if faults.inject(task, point, "fail_usercopy", 1):
        return n
    limit = n
    if task._partial_to_user is not None:  # model-only genuine mid-copy fault, one shot
        limit = min(n, task._partial_to_user)
        task._partial_to_user = None
    return n - task._write_user(uaddr, data[:limit])


def put_user(faults, task, point: str, value: int, uaddr: int) -> int:
    """put_user(...) -> int: 0 or -EFAULT; one 8-byte store, all or nothing."""
    if faults.inject(task, point, "fail_usercopy", 1):
        return -abi.EFAULT
    data = (value & _U64).to_bytes(8, "little")
    if not task._user_accessible(uaddr, 8, "w"):
        return -abi.EFAULT
    task._write_user(uaddr, data)
    return 0
