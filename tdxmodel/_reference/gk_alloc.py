"""The kernel's allocators over guest physical memory, reference backend; paired with csrc/gk_alloc.c.

The kernel owns guest pages ``KERNEL_FIRST_PAGE..memory_pages-1`` of its Module; a kernel pointer *is*
the GPA (pa(ptr) == ptr), so the module's REPORT writes straight into kernel buffers. The page
allocator hands out order-n blocks aligned to their size (first fit from the lowest page). ``kmalloc``
rounds up to the Linux size classes ``SLAB_CLASSES`` and carves one-page slabs, so power-of-two objects
are naturally aligned. ``kmalloc`` objects are filled with ``abi.SLAB_POISON_INUSE`` (so a disclosure of
uninitialised memory is visible); ``kzalloc`` and ``get_zeroed_page`` zero. ``kfree`` leaves the bytes
as they are; a slab whose last object is freed goes back to the page allocator. Counters count the
allocator calls drivers make (a slab's backing page is not a page allocation).
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Tuple

from tdxmodel import abi

PAGE_SIZE = abi.TDX_PAGE_SIZE
#: CONTRACT: pages 0..3 are the host's; the kernel's allocator owns 16..memory_pages-1.
KERNEL_FIRST_PAGE = abi.KERNEL_FIRST_PAGE
#: Linux's kmalloc caches (kmalloc-8 ... kmalloc-4096, plus kmalloc-96 and kmalloc-192).
SLAB_CLASSES = abi.SLAB_CLASSES
#: force_misaligned / misaligned_report_buf: the allocation is returned this far past its alignment.
MISALIGN_OFFSET = 8


class Allocator:
    """Page and slab allocators over ``module``'s pages ``first..memory_pages-1``; every allocation
    passes its injection point through ``faults`` first (ref §7)."""

    def __init__(self, module, faults, first: int = KERNEL_FIRST_PAGE) -> None:
        self._module = module
        self._faults = faults
        self._lock = threading.Lock()
        self.counters = dict(allocs=0, frees=0, slab_allocs=0, page_allocs=0)
        # page allocator: one byte per kernel page, 1 = in use
        self._first = first
        self._page_used = bytearray(module.memory_pages - first)
        # slab: class -> {page gpa: [free offsets]}; live allocations: ptr -> (kind, base, class/order)
        self._slabs: Dict[int, Dict[int, List[int]]] = {c: {} for c in SLAB_CLASSES}
        self._live: Dict[int, Tuple[str, int, int]] = {}

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def _alloc_pages_locked(self, order: int) -> Optional[int]:
        n = 1 << order
        used = self._page_used
        first = self._first
        start = (-first) % n  # index of the first naturally aligned pfn
        for i in range(start, len(used) - n + 1, n):
            if not any(used[i:i + n]):
                used[i:i + n] = b"\x01" * n
                return (first + i) * PAGE_SIZE
        return None

    def _free_pages_locked(self, gpa: int, order: int) -> None:
        i = gpa // PAGE_SIZE - self._first
        self._page_used[i:i + (1 << order)] = bytes(1 << order)

    def _slab_alloc_locked(self, size_class: int) -> Optional[int]:
        slabs = self._slabs[size_class]
        for page, free in slabs.items():
            if free:
                return page + free.pop(0)
        page = self._alloc_pages_locked(0)
        if page is None:
            return None
        free = list(range(0, PAGE_SIZE - size_class + 1, size_class))
        slabs[page] = free
        return page + free.pop(0)

    def _slab_free_locked(self, base: int, size_class: int) -> None:
        page = base - base % PAGE_SIZE
        free = self._slabs[size_class][page]
        free.append(base - page)
        free.sort()
        if len(free) == PAGE_SIZE // size_class:  # slab empty: give the page back
            del self._slabs[size_class][page]
            self._free_pages_locked(page, 0)

    def kmalloc(self, task, size: int, point: str, *, zero: bool = False,
                misaligned: bool = False, nofail: bool = False) -> Optional[int]:
        """kmalloc(task, size, point, *, zero=False, misaligned=False) -> int | None

        A slab object (kzalloc with ``zero``); None when failslab fails it (ref §7)."""
        extra = MISALIGN_OFFSET if misaligned else 0
        size_class = next((c for c in SLAB_CLASSES if c >= size), None)
        if extra and size_class is not None:  # room for the offset, same alignment: a power of two up
            size_class = next((c for c in SLAB_CLASSES if c >= 2 * size_class and c & (c - 1) == 0), None)
        if size_class is None or size <= 0:
            raise ValueError(f"kmalloc: size {size} is outside the slab classes of this model")
        if not nofail and self._faults.inject(task, point, "failslab", size_class):
            return None
        with self._lock:
            base = self._slab_alloc_locked(size_class)
            if base is None:
                return None
            ptr = base + extra
            self._live[ptr] = ("slab", base, size_class)
            self.counters["allocs"] += 1
            self.counters["slab_allocs"] += 1
        fill = b"\x00" if zero else bytes([abi.SLAB_POISON_INUSE])
        self._module.write_memory(base, fill * size_class)
        return ptr

    def alloc_pages(self, task, order: int, point: str, *, zero: bool = False,
                    misaligned: bool = False, nofail: bool = False) -> Optional[int]:
        """alloc_pages(task, order, point, *, zero=False, misaligned=False) -> int | None

        2**order pages aligned to their size; unzeroed pages hold the slab poison too."""
        if not nofail and self._faults.inject(task, point, "fail_page_alloc", 1 << order, order):  # space counts pages (mm/fail_page_alloc.c)
            return None
        with self._lock:
            base = self._alloc_pages_locked(order)
            if base is None:
                return None
            ptr = base + (MISALIGN_OFFSET if misaligned else 0)
            self._live[ptr] = ("page", base, order)
            self.counters["allocs"] += 1
            self.counters["page_allocs"] += 1
        fill = b"\x00" if zero else bytes([abi.SLAB_POISON_INUSE])
        self._module.write_memory(base, fill * (PAGE_SIZE << order))
        return ptr

    def kfree(self, ptr: int) -> None:
        """kfree(ptr: int) -> None (also frees pages: one free for both allocators)."""
        with self._lock:
            kind, base, size = self._live.pop(ptr)  # KeyError: a driver bug, never user input
            if kind == "slab":
                self._slab_free_locked(base, size)
            else:
                self._free_pages_locked(base, size)
            self.counters["frees"] += 1
