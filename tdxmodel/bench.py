"""Throughput workloads, shared by ``tdxmodel bench`` and ``benchmarks/`` (layer 3).

Every workload runs against a backend chosen by name (``"core"`` or ``"reference"``) through
``tdxmodel._backend``, so the Cython core and the pure-Python reference are measured by the same code.

What is measured, and how:

* **floors**: HMAC-SHA-256 over 224 bytes with a precomputed key, and SHA-384 over 512 bytes, in a C
  loop (``tdxmodel._core._ext._floor_hmac224`` / ``_floor_sha384_512``, module-core's OpenSSL
  helpers). A TDREPORT needs at least one such HMAC (ref §4.5: the MAC covers bytes 0..223), so the
  batch API cannot beat ``mac_floor_per_s`` by much; beating it means the caches work.
* **batch**: ``Module.report_batch`` on a (rows, 64) array, one thread.
* **call latency**: one GET_REPORT ioctl through ``Process.ioctl`` (the syscall-like Python API), each
  call timed alone with ``time.perf_counter_ns``; the timer's own cost (the median of empty
  intervals) is subtracted.
* **scaling**: 1..N caller threads, each running ``Module.report_batch`` chunks for a fixed time,
  while a fraction ``extend_ratio`` of all calls are RTMR extends issued by the callers. On v6.16 the
  extends go through the measurement file ``rtmrN:sha384`` (so they take ``mr_lock``, ref §2.5); on
  v6.2 / v4 the driver has no extend, so they go to the module leaf directly, as a concurrent
  extender outside the driver (ref §4.8). A report that meets the held lock gets
  ``TDX_OPERAND_BUSY|RTMR`` (ref §4.3 row 5), counted in ``busy_rate``.
* **ioctl scaling**: the same with callers issuing GET_REPORT ioctls one at a time through the Python
  API (bounded by the GIL for the Python part of each call), and **ioctl_batch scaling** with callers
  issuing them 64 at a time through ``TdxGuest.ioctl_batch`` (one nogil C loop on the core). On
  v6.16 every REPORT takes ``mr_lock``, so driver-path callers serialise by design (ref §2.5).

The ioctl path is driven through the one client, ``tdxmodel.client.TdxGuest`` (``kernel=`` for one
more caller process on a shared kernel). The CLI run and its table are ``tdxmodel.cli.bench``; the
stress oracles (correctness under load) live with their tests, ``tests/stress_oracles.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tdxmodel import _backend, abi, errors, profiles
from tdxmodel.client import TdxGuest, measurement_path
from tdxmodel.config import ModuleConfig

PAGE = abi.TDX_PAGE_SIZE
#: The RTMR the workloads extend (any of 0..3 behaves the same for locking, ref §4.8).
EXTEND_INDEX = 2
#: Rows per report_batch call in the scaling workload: big enough that the Python part of a call (and
#: its GIL hand-over) is small next to the ~100 us nogil loop, small enough to interleave with extends.
#: (With 128 rows the per-call Python cost alone held 2 callers to ~1.6x in a lock-free build.)
SCALING_CHUNK = 512
BUSY_RTMR = abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR
#: Windows per scaling point (the best one counts).
WINDOWS = 3

Progress = Optional[Callable[[str], None]]


# ---------------------------------------------------------------------------------------------
# The driver path
# ---------------------------------------------------------------------------------------------

def has_kernel(backend_name: str) -> bool:
    return hasattr(_backend.load(backend_name), "Kernel")


def make_module(backend_name: str, seed: int = 1):
    return _backend.load(backend_name).Module(ModuleConfig(seed=seed))


def make_kernel(backend_name: str, driver: str, seed: int = 1):
    if driver not in abi.DRIVERS:
        raise ValueError(f"unknown driver {driver!r}; choose one of {', '.join(abi.DRIVERS)}")
    be = _backend.load(backend_name)
    if not hasattr(be, "Kernel"):
        raise ValueError(f"the {backend_name} backend has no Kernel yet (driver path unavailable)")
    return be.Kernel(be.Module(ModuleConfig(seed=seed)), driver, seed=0)


# ---------------------------------------------------------------------------------------------
# Floors
# ---------------------------------------------------------------------------------------------

def _core_ext():
    try:
        from tdxmodel._core import _ext
    except ImportError:
        return None
    return _ext


def floor_functions() -> Tuple[Optional[Callable], Optional[Callable]]:
    """(hmac224(key, n), sha384_512(n)) from the core, or None each when not built."""
    ext = _core_ext()
    return (getattr(ext, "_floor_hmac224", None), getattr(ext, "_floor_sha384_512", None))


def _rate_of_c_loop(fn: Callable[[int], object], seconds: float) -> float:
    """Operations per second of ``fn(n)`` (a C loop of n operations), run for about ``seconds``."""
    n = 1000
    while True:  # grow n until one call takes >= 20 ms, so the Python call cost vanishes
        t0 = time.perf_counter()
        fn(n)
        dt = time.perf_counter() - t0
        if dt >= 0.02 or n >= 1 << 26:
            break
        n *= 4
    best = n / dt
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn(n)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def measure_floors(seconds: float) -> Dict[str, object]:
    """mac_floor_per_s and sha384_floor_per_s (one thread). Best-of-runs rates: a floor is what the
    machine can do, so noise from other processes should not lower it."""
    hmac224, sha384 = floor_functions()
    key = bytes(range(abi.TDX_MAC_KEY_LEN))
    out: Dict[str, object] = {}
    if hmac224 is not None and sha384 is not None:
        out["mac_floor_per_s"] = _rate_of_c_loop(lambda n: hmac224(key, n), seconds / 2)
        out["sha384_floor_per_s"] = _rate_of_c_loop(sha384, seconds / 2)
        out["floor_source"] = "openssl-c-loop"
    else:
        # No compiled floor: Python's hmac/hashlib (per-call Python cost included; a lower floor).
        mac = hmac.new(key, digestmod=hashlib.sha256)
        data224, data512 = bytes(abi.TDX_MAC_COVERED_LEN), bytes(abi.TDX_TDINFO_LEN)

        def py_hmac(n):
            for _ in range(n):
                m = mac.copy()
                m.update(data224)
                m.digest()

        def py_sha(n):
            for _ in range(n):
                hashlib.sha384(data512).digest()

        out["mac_floor_per_s"] = _rate_of_c_loop(py_hmac, seconds / 2)
        out["sha384_floor_per_s"] = _rate_of_c_loop(py_sha, seconds / 2)
        out["floor_source"] = "python-hashlib"
    return out


# ---------------------------------------------------------------------------------------------
# Batch and call latency
# ---------------------------------------------------------------------------------------------

def random_reportdata(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(rows, abi.TDX_REPORTDATA_LEN), dtype=np.uint8)


#: Rows per report_batch call for batch_reports_per_s: 1 MiB of output, a batch size whose output stays
#: in cache (RESULTS.md compares 1024 and 4096 rows).
BATCH_ROWS = 1024


def measure_batch(module, seconds: float, rows: int = BATCH_ROWS) -> float:
    """Reports per second of ``module.report_batch`` on ``rows`` rows, one thread (best run)."""
    data = random_reportdata(rows)
    reports, statuses = module.report_batch(data)  # warm up, and check it did the work
    if statuses.any():
        raise RuntimeError(f"report_batch failed: status 0x{int(statuses.max()):016X}")
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        module.report_batch(data)
        best = max(best, rows / (time.perf_counter() - t0))
        if time.perf_counter() >= deadline:
            return best


def _timer_overhead_ns(samples: int = 20001) -> int:
    pc = time.perf_counter_ns
    gaps = []
    for _ in range(samples):
        t0 = pc()
        t1 = pc()
        gaps.append(t1 - t0)
    return int(statistics.median(gaps))


def measure_call_latency(backend_name: str, driver: str, seconds: float,
                         max_calls: int = 200_000) -> Dict[str, float]:
    """Median and p99 (microseconds) of one GET_REPORT ioctl through ``Process.ioctl``."""
    kernel = make_kernel(backend_name, driver)
    with TdxGuest(kernel=kernel) as caller:
        caller.put_reportdata(bytes(range(64)))
        ret = caller.ioctl()
        if ret != 0:
            raise RuntimeError(f"{backend_name} {driver}: GET_REPORT ioctl failed with {ret}")
        ioctl, fd, cmd, arg = caller.process.ioctl, caller.fd, caller.cmd, caller.buffer
        pc = time.perf_counter_ns
        times: List[int] = []
        deadline = pc() + int(seconds * 1e9)
        while len(times) < max_calls:
            t0 = pc()
            ioctl(fd, cmd, arg)
            t1 = pc()
            times.append(t1 - t0)
            if t1 >= deadline:
                break
    overhead = _timer_overhead_ns()
    times.sort()
    n = len(times)
    median = max(times[n // 2] - overhead, 0) / 1000.0
    p99 = max(times[min(n - 1, (n * 99) // 100)] - overhead, 0) / 1000.0
    return {"median_us": median, "p99_us": p99, "samples": n, "timer_overhead_us": overhead / 1000.0}


# ---------------------------------------------------------------------------------------------
# Concurrent callers
# ---------------------------------------------------------------------------------------------

@dataclass
class _CallerStats:
    reports: int = 0
    busy: int = 0
    extends: int = 0
    extend_busy: int = 0
    other_errors: Dict[int, int] = field(default_factory=dict)


class _Extender:
    """Issues one RTMR extend the way the driver under test allows (see the module docstring)."""

    def __init__(self, kernel, module, driver: str) -> None:
        self.via_driver = bool(profiles.get(driver).measurements) and kernel is not None
        self.caller = TdxGuest(kernel=kernel) if self.via_driver else None
        self.module = module
        self.data = hashlib.sha384(b"tdxmodel bench extend").digest()
        self._rows = np.zeros(0, dtype=np.uint64)
        self._rows_data = np.zeros((0, abi.TDX_EXTEND_DATA_LEN), dtype=np.uint8)

    def extend(self) -> bool:
        """One extend; True on success, False when it met the held RTMR lock (BUSY / -EBUSY)."""
        if self.via_driver:
            ret = self.caller.try_extend(EXTEND_INDEX, self.data)
            if ret == abi.MEASUREMENT_LEN:
                return True
            if ret == -abi.EBUSY:
                return False
            raise errors.errno_exception(-ret, f"write {measurement_path(EXTEND_INDEX)}")
        try:
            self.module.extend(EXTEND_INDEX, self.data)
        except errors.OperandBusy:
            return False
        return True

    def extend_many(self, k: int) -> int:
        """k extends; the number that met the held RTMR lock. Through the module they are one
        ``extend_batch`` call (one GIL release for all k, as report_batch does for reports)."""
        if self.via_driver:
            return sum(not self.extend() for _ in range(k))
        if len(self._rows) < k:
            self._rows = np.full(k, EXTEND_INDEX, dtype=np.uint64)
            self._rows_data = np.tile(np.frombuffer(self.data, dtype=np.uint8), (k, 1))
        statuses = self.module.extend_batch(self._rows[:k], self._rows_data[:k])
        bad = statuses[(statuses != 0) & (statuses != BUSY_RTMR)]
        if bad.size:
            errors.check_status(int(bad[0]), leaf="TDG.MR.RTMR.EXTEND")
        return int(np.count_nonzero(statuses == BUSY_RTMR))

    def close(self) -> None:
        if self.caller is not None:
            self.caller.close()


def _busy_errnos(driver: str) -> Tuple[int, ...]:
    """The ioctl results a module BUSY turns into (ref §2.2: v4 -EIO; §2.4: v6.2 -EIO; §2.5: v6.16
    -EBUSY)."""
    return (-errors.status_errno(BUSY_RTMR, driver),)


def _run_callers(callers: int, seconds: float,
                 make_worker: Callable[[int], Callable[[], None]]) -> Tuple[float, float]:
    """Run ``callers`` threads, each calling its worker in a loop for ``seconds``.

    Returns (elapsed wall seconds, CPU seconds the callers used). CPU / wall is the parallelism the
    machine actually granted: on a shared machine 2 callers may get less than 2 cores.
    """
    workers = [make_worker(i) for i in range(callers)]
    stop = threading.Event()
    start = threading.Barrier(callers + 1)
    failures: List[BaseException] = []
    cpu = [0.0] * callers

    def loop(i, work):
        try:
            start.wait()
            c0 = time.thread_time()
            while True:  # at least one unit of work, however short the window
                work()
                if stop.is_set():
                    break
            cpu[i] = time.thread_time() - c0
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            failures.append(e)
            stop.set()

    threads = [threading.Thread(target=loop, args=(i, w), daemon=True) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise failures[0]
    return elapsed, sum(cpu)


def _pay_owed_extends(ext, owed, per_chunk: float, st) -> None:
    """Issue the RTMR extends a caller owes after a chunk (a fraction R of its calls), counting them
    and those that met BUSY in ``st``; ``owed[0]`` carries the fractional remainder."""
    owed[0] += per_chunk
    k = int(owed[0])
    if k:
        owed[0] -= k
        st.extends += k
        st.extend_busy += ext.extend_many(k)


def measure_batch_scaling(backend_name: str, driver: str, callers: int, seconds: float,
                          extend_ratio: float, chunk: int = SCALING_CHUNK) -> Dict[str, object]:
    """``callers`` threads running ``report_batch(chunk rows)`` on one TD, plus extends making up
    ``extend_ratio`` of all calls. Returns calls/s (reports + extends) and the BUSY counts."""
    be = _backend.load(backend_name)
    kernel = make_kernel(backend_name, driver) if has_kernel(backend_name) else None
    module = kernel.module if kernel is not None else be.Module(ModuleConfig(seed=1))
    data = random_reportdata(chunk)
    stats = [_CallerStats() for _ in range(callers)]
    extenders = [_Extender(kernel, module, driver) if extend_ratio > 0 else None for _ in range(callers)]
    # Extends owed per chunk so that extends / (reports + extends) == extend_ratio.
    per_chunk = chunk * extend_ratio / (1.0 - extend_ratio) if extend_ratio > 0 else 0.0

    def make_worker(i):
        st, ext = stats[i], extenders[i]
        owed = [0.0]

        def work():
            _, statuses = module.report_batch(data)
            st.reports += chunk
            busy = int(np.count_nonzero(statuses == BUSY_RTMR))
            st.busy += busy
            if busy != int(np.count_nonzero(statuses)):
                bad = int(statuses[(statuses != 0) & (statuses != BUSY_RTMR)][0])
                raise RuntimeError(f"report_batch status 0x{bad:016X}")
            if ext is not None:
                _pay_owed_extends(ext, owed, per_chunk, st)
        return work

    try:
        elapsed, cpu = _run_callers(callers, seconds, make_worker)
    finally:
        for e in extenders:
            if e is not None:
                e.close()
    return _summarise(stats, elapsed, cpu)


def measure_ioctl_scaling(backend_name: str, driver: str, callers: int, seconds: float,
                          extend_ratio: float, chunk: int = 64, batched: bool = False) -> Dict[str, object]:
    """``callers`` threads each issuing GET_REPORT ioctls (one process per thread), plus extends
    making up ``extend_ratio`` of all calls: one at a time through ``Process.ioctl``, or with
    ``batched`` ``chunk`` at a time through ``TdxGuest.ioctl_batch`` (one nogil loop on the core)."""
    kernel = make_kernel(backend_name, driver)
    module = kernel.module
    stats = [_CallerStats() for _ in range(callers)]
    drivers = [TdxGuest(kernel=kernel) for _ in range(callers)]
    extenders = [_Extender(kernel, module, driver) if extend_ratio > 0 else None for _ in range(callers)]
    per_chunk = chunk * extend_ratio / (1.0 - extend_ratio) if extend_ratio > 0 else 0.0
    busy_rets = _busy_errnos(driver)

    def make_worker(i):
        st, ext, dc = stats[i], extenders[i], drivers[i]
        ioctl, fd, cmd, arg = dc.process.ioctl, dc.fd, dc.cmd, dc.buffer
        dc.put_reportdata(bytes(64))
        data = random_reportdata(chunk, seed=i)
        owed = [0.0]

        def work():
            if batched:
                rets, _ = dc.ioctl_batch(data)
                failed = rets[rets != 0].tolist()
            else:
                failed = [ret for ret in (ioctl(fd, cmd, arg) for _ in range(chunk)) if ret]
            for ret in failed:
                if ret in busy_rets:
                    st.busy += 1
                else:
                    st.other_errors[ret] = st.other_errors.get(ret, 0) + 1
            st.reports += chunk
            if ext is not None:
                _pay_owed_extends(ext, owed, per_chunk, st)
        return work

    try:
        elapsed, cpu = _run_callers(callers, seconds, make_worker)
    finally:
        for d in drivers:
            d.close()
        for e in extenders:
            if e is not None:
                e.close()
    out = _summarise(stats, elapsed, cpu)
    errs: Dict[int, int] = {}
    for st in stats:
        for k, v in st.other_errors.items():
            errs[k] = errs.get(k, 0) + v
    if errs:
        raise RuntimeError(f"unexpected ioctl results under load: {errs}")
    return out


def _summarise(stats: Sequence[_CallerStats], elapsed: float, cpu: float) -> Dict[str, object]:
    reports = sum(s.reports for s in stats)
    extends = sum(s.extends for s in stats)
    busy = sum(s.busy for s in stats)
    return {"calls_per_s": (reports + extends) / elapsed, "reports": reports, "extends": extends,
            "busy": busy, "extend_busy": sum(s.extend_busy for s in stats),
            "busy_rate": busy / reports if reports else 0.0, "seconds": elapsed,
            "parallelism": cpu / elapsed, "calls_per_cpu_s": (reports + extends) / cpu if cpu > 0 else 0.0}
