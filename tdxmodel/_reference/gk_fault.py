"""Fault injection in the kernel's vocabulary (ref §7), reference backend; paired with csrc/gk_fault.c.

The capability filters (ignore-gfp-wait for failslab and fail_page_alloc, min-order for
fail_page_alloc) run first and hide a point from ``should_fail`` entirely, fail-nth included; then
``should_fail``'s order: per-task fail-nth, probability 0, task filter, times 0, space budget, interval,
random draw. Each failure decrements ``times`` unless it is -1 (fail-nth failures too, as the kernel
does). Every point a syscall passes is recorded in the task's trace as ``(point, capability, failed)``,
filtered or not. ``Faults`` also holds the model-only forced TDCALL results (``Kernel.force_tdcall``).
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Tuple

from tdxmodel import abi
from tdxmodel._reference._args import I31, U64 as _U64, check_bool as _check_bool, check_int as _check_int


class _SplitMix64:
    """The fault draw's generator, specified so both backends draw the same numbers: SplitMix64
    (state += 0x9E3779B97F4A7C15, then the two xor-shift-multiply rounds), one state per capability,
    starting at ``(seed + capability_index) mod 2**64``; a draw is ``next() % 100``."""

    __slots__ = ("state",)

    def __init__(self, state: int) -> None:
        self.state = state & _U64

    def below_100(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _U64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
        return (z ^ (z >> 31)) % 100


class FaultAttr:
    """One fault capability's debugfs knobs (ref §7) with the kernel's defaults.

    ``probability`` (0..100), ``interval`` (>= 1), ``times`` (-1 or >= 0), ``space`` (>= 0), ``verbose``
    (0..2), ``task_filter`` (bool). ``ignore_gfp_wait`` exists for failslab and fail_page_alloc (default
    True) and ``min_order`` for fail_page_alloc (default 1); on the other capabilities they read as
    False / 0 and setting them raises ValueError. Not constructible from Python: use ``Kernel.fault``.
    """

    def __init__(self, _capability: str, _seed: int, _lock: threading.Lock) -> None:
        if _capability not in abi.FAULT_CAPABILITIES:
            raise ValueError(f"capability must be one of {', '.join(abi.FAULT_CAPABILITIES)}")
        self._capability = _capability
        self._lock = _lock
        self._probability = abi.FAULT_DEFAULTS["probability"]
        self._interval = abi.FAULT_DEFAULTS["interval"]
        self._times = abi.FAULT_DEFAULTS["times"]
        self._space = abi.FAULT_DEFAULTS["space"]
        self._verbose = abi.FAULT_DEFAULTS["verbose"]
        self._task_filter = False
        self._ignore_gfp_wait = abi.FAULT_IGNORE_GFP_WAIT_DEFAULT.get(_capability, False)
        self._min_order = abi.FAULT_PAGE_MIN_ORDER_DEFAULT if _capability == "fail_page_alloc" else 0
        self._count = 0  # calls seen by the interval check
        self._rng = _SplitMix64(_seed + abi.FAULT_CAPABILITIES.index(_capability))

    def __repr__(self) -> str:
        return (f"FaultAttr({self._capability}: probability={self._probability} interval={self._interval} "
                f"times={self._times} space={self._space} ignore_gfp_wait={self._ignore_gfp_wait} "
                f"min_order={self._min_order} task_filter={self._task_filter})")

    @property
    def capability(self) -> str:
        return self._capability

    @property
    def probability(self) -> int:
        return self._probability

    @probability.setter
    def probability(self, value: int) -> None:
        self._probability = _check_int("probability", value, 0, 100)

    @property
    def interval(self) -> int:
        return self._interval

    @interval.setter
    def interval(self, value: int) -> None:
        self._interval = _check_int("interval", value, 1, _U64)

    @property
    def times(self) -> int:
        return self._times

    @times.setter
    def times(self, value: int) -> None:
        self._times = _check_int("times", value, -1, I31)

    @property
    def space(self) -> int:
        return self._space

    @space.setter
    def space(self, value: int) -> None:
        self._space = _check_int("space", value, 0, I31)

    @property
    def verbose(self) -> int:
        return self._verbose

    @verbose.setter
    def verbose(self, value: int) -> None:
        self._verbose = _check_int("verbose", value, 0, 2)

    @property
    def task_filter(self) -> bool:
        return self._task_filter

    @task_filter.setter
    def task_filter(self, value: bool) -> None:
        self._task_filter = _check_bool("task_filter", value)

    @property
    def ignore_gfp_wait(self) -> bool:
        return self._ignore_gfp_wait

    @ignore_gfp_wait.setter
    def ignore_gfp_wait(self, value: bool) -> None:
        if self._capability not in abi.FAULT_IGNORE_GFP_WAIT_DEFAULT:
            raise ValueError(f"ignore_gfp_wait: {self._capability} has no such knob (ref §7)")
        self._ignore_gfp_wait = _check_bool("ignore_gfp_wait", value)

    @property
    def min_order(self) -> int:
        return self._min_order

    @min_order.setter
    def min_order(self, value: int) -> None:
        if self._capability != "fail_page_alloc":
            raise ValueError(f"min_order: {self._capability} has no such knob (only fail_page_alloc, ref §7)")
        self._min_order = _check_int("min_order", value, 0, 10)

    # -- should_fail (ref §7), called with the kernel's fault lock held -----------------------------
    def _fire(self) -> bool:
        if self._times > 0:  # atomic_dec_not_zero unless -1
            self._times -= 1
        return True

    def _should_fail(self, task: "_Task", size: int) -> bool:
        # 1. per-task fail-nth bypasses everything below
        if task._fail_nth > 0:
            task._fail_nth -= 1
            return self._fire() if task._fail_nth == 0 else False
        # 2. probability 0: nothing fails
        if self._probability == 0:
            return False
        # 3. task filter (make-it-fail)
        if self._task_filter and not task.make_it_fail:
            return False
        # 4. times exhausted
        if self._times == 0:
            return False
        # 5. stack filter: not modelled. 6. space budget
        if self._space > size:
            self._space -= size
            return False
        # 7. interval
        if self._interval > 1:
            self._count += 1
            if self._count % self._interval:
                return False
        # 8. random draw below probability
        if self._probability <= self._rng.below_100():
            return False
        return self._fire()


class _Task:
    """What the kernel knows of the calling task: fail-nth, make-it-fail, signals, the trace."""

    def __init__(self) -> None:
        self._fail_nth = 0
        self.make_it_fail = False
        self.signal_pending = False
        self._signal_at: Optional[int] = None  # a signal due at this clock time
        self._trace: List[Tuple[str, str, bool]] = []


class Faults:
    """The kernel's fault state: one ``FaultAttr`` per capability under one lock, and the forced
    TDCALL results."""

    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        self.attrs: Dict[str, FaultAttr] = {cap: FaultAttr(cap, seed, self._lock)
                                            for cap in abi.FAULT_CAPABILITIES}
        self._forced: Optional[Tuple[int, Optional[int], int]] = None  # (status, leaf, remaining)

    def fault(self, capability: str) -> FaultAttr:
        if capability not in self.attrs:
            raise ValueError(f"capability must be one of {', '.join(abi.FAULT_CAPABILITIES)}, "
                             f"not {capability!r}")
        return self.attrs[capability]

    def sweep_settings(self):
        """Set the documented fail-nth sweep's filters (ignore-gfp-wait N, min-order 0, ref §7) and
        return what to restore."""
        slab, page = self.attrs["failslab"], self.attrs["fail_page_alloc"]
        saved = (slab._ignore_gfp_wait, page._ignore_gfp_wait, page._min_order)
        slab._ignore_gfp_wait = page._ignore_gfp_wait = False
        page._min_order = 0
        return saved

    def restore_settings(self, saved) -> None:
        slab, page = self.attrs["failslab"], self.attrs["fail_page_alloc"]
        slab._ignore_gfp_wait, page._ignore_gfp_wait, page._min_order = saved

    def inject(self, task: _Task, point: str, capability: str, size: int, order: int = 0) -> bool:
        """inject(task, point, capability, size, order=0) -> bool: pass one injection point; True
        means fail. All of this driver's allocations are GFP_KERNEL (they may sleep), so
        ignore-gfp-wait hides them (ref §7 "Filters applied first")."""
        attr = self.attrs[capability]
        with self._lock:
            eligible = True
            if capability in abi.FAULT_IGNORE_GFP_WAIT_DEFAULT and attr._ignore_gfp_wait:
                eligible = False
            if capability == "fail_page_alloc" and order < attr._min_order:
                eligible = False
            failed = eligible and attr._should_fail(task, size)
        task._trace.append((point, capability, failed))
        return failed

    def force_tdcall(self, status: int, leaf: Optional[int], count: int) -> None:
        _check_int("status", status, 0, _U64)
        if leaf is not None:
            _check_int("leaf", leaf, 0, _U64)
        _check_int("count", count, 1, I31)
        with self._lock:
            self._forced = (status, leaf, count)

    def take_forced_tdcall(self, leaf: int) -> Optional[int]:
        """The forced status for this TDCALL (consuming one), or None."""
        with self._lock:
            forced = self._forced
            if forced is not None and (forced[1] is None or forced[1] == leaf):
                status, want, left = forced
                self._forced = (status, want, left - 1) if left > 1 else None
                return status
        return None
