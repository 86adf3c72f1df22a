"""Throughput workloads (issue 5), shared by ``tdxmodel bench`` and ``benchmarks/`` (layer 3).

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
  issuing them 64 at a time through ``DriverCaller.ioctl_batch`` (one nogil C loop on the core). On
  v6.16 every REPORT takes ``mr_lock``, so driver-path callers serialise by design (ref §2.5).

``DriverCaller`` and ``ioctl_batch`` drive the ioctl path of any backend with a per-call fault
schedule (``fail_nth``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tdxmodel import _backend, abi, errors, profiles
from tdxmodel.config import ModuleConfig

PAGE = abi.TDX_PAGE_SIZE
#: User address where DriverCaller maps its request buffer (any page-aligned address works).
REQUEST_BUFFER_ADDR = 0x7F00_0000_0000 & ~(PAGE - 1)
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

def _request_layout(driver: str) -> Tuple[int, int, int]:
    """(ioctl cmd, REPORTDATA offset, TDREPORT offset) in the user buffer: the profile's report
    request layout (ref §2.2, §2.4)."""
    req = profiles.get(driver).report
    return req.value, req.field("reportdata").offset, req.field("tdreport").offset


def measurement_path(index: int) -> str:
    """The 6.16 measurement file of RTMR ``index`` (ref §2.5)."""
    if not 0 <= index < abi.TDX_NUM_RTMRS:
        raise ValueError(f"RTMR index must be 0..{abi.TDX_NUM_RTMRS - 1}, got {index}")
    return f"{abi.MEASUREMENT_DIRS[0]}/rtmr{index}:sha384"


class DriverCaller:
    """DriverCaller(kernel) -- one emulated process with the device open and a request buffer mapped.

    ``get_report`` / ``ioctl_batch`` issue the driver's GET_REPORT ioctl (``TDX_CMD_GET_TDREPORT`` on
    v4, ``TDX_CMD_GET_REPORT0`` otherwise); ``extend`` writes a 6.16 measurement file. Each returns the
    syscall result (0 / bytes written, or -errno) rather than raising, because workloads count errnos.
    One DriverCaller belongs to one thread at a time (a process's fail-nth is per task, ref §7).
    """

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.driver: str = kernel.driver
        self.process = kernel.process()
        self.cmd, self.reportdata_off, self.tdreport_off = _request_layout(self.driver)
        self.buffer = REQUEST_BUFFER_ADDR
        # 1088 bytes of tdx_report_req, plus a page for the 48-byte extend data.
        self.extend_addr = self.buffer + PAGE
        self.process.mmap(self.buffer, 2 * PAGE, "rw")
        self.fd = errors.check_ret(self.process.open(kernel.device_path), f"open {kernel.device_path}")
        self._measurement_fds: Dict[int, int] = {}

    def close(self) -> None:
        for fd in self._measurement_fds.values():
            self.process.close(fd)
        self._measurement_fds.clear()
        if self.fd >= 0:
            self.process.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "DriverCaller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def put_reportdata(self, reportdata) -> None:
        data = bytes(reportdata)
        if len(data) > abi.TDX_REPORTDATA_LEN:
            raise ValueError(f"reportdata is {len(data)} bytes; at most {abi.TDX_REPORTDATA_LEN}")
        self.process.poke(self.buffer + self.reportdata_off, data.ljust(abi.TDX_REPORTDATA_LEN, b"\0"))

    def ioctl(self) -> int:
        """ioctl() -> int: one GET_REPORT ioctl on the buffer as it stands (0 or -errno)."""
        return self.process.ioctl(self.fd, self.cmd, self.buffer)

    def read_report(self) -> bytes:
        return self.process.peek(self.buffer + self.tdreport_off, abi.TDX_REPORT_LEN)

    def get_report(self, reportdata=b"") -> Tuple[int, Optional[bytes]]:
        """get_report(reportdata: bytes = b"") -> (ret, report or None)"""
        self.put_reportdata(reportdata)
        ret = self.ioctl()
        return ret, (self.read_report() if ret == 0 else None)

    def _measurement_fd(self, index: int) -> int:
        fd = self._measurement_fds.get(index)
        if fd is None:
            if not profiles.get(self.driver).measurements:
                raise ValueError(f"driver {self.driver} has no measurement files (ref §2.5: v6.16+)")
            fd = errors.check_ret(self.process.open(measurement_path(index), os.O_RDWR),
                                  f"open {measurement_path(index)}")
            self._measurement_fds[index] = fd
        return fd

    def extend(self, index: int, data: bytes) -> int:
        """extend(index: int, data: bytes) -> int: write 48 bytes to ``rtmr<index>:sha384`` (v6.16):
        48 or -errno (ref §2.5)."""
        if len(data) != abi.MEASUREMENT_LEN:
            raise ValueError(f"data is {len(data)} bytes; a measurement write takes {abi.MEASUREMENT_LEN}")
        fd = self._measurement_fd(index)
        self.process.poke(self.extend_addr, bytes(data))
        return self.process.pwrite(fd, self.extend_addr, abi.MEASUREMENT_LEN, 0)

    def read_measurement(self, index: int) -> Tuple[int, Optional[bytes]]:
        """read_measurement(index: int) -> (ret, 48 bytes or None): ``pread`` of ``rtmr<index>:sha384``."""
        fd = self._measurement_fd(index)
        ret = self.process.pread(fd, self.extend_addr, abi.MEASUREMENT_LEN, 0)
        return ret, (self.process.peek(self.extend_addr, abi.MEASUREMENT_LEN) if ret == abi.MEASUREMENT_LEN else None)

    def ioctl_batch(self, reportdata, fail_nth=None) -> Tuple[np.ndarray, np.ndarray]:
        """ioctl_batch(reportdata: uint8[N, 64], fail_nth: None | int[N]) -> (int64[N], uint8[N, 1024])

        ``ioctl_batch`` on this caller's process, device fd, command and request buffer."""
        return ioctl_batch(self.process, self.fd, reportdata, fail_nth, cmd=self.cmd, buffer=self.buffer)


def ioctl_batch(process, fd: int, reportdata, fail_nth=None, *, cmd: int = abi.TDX_CMD_GET_REPORT0,
                buffer: int = REQUEST_BUFFER_ADDR) -> Tuple[np.ndarray, np.ndarray]:
    """ioctl_batch(process, fd: int, reportdata: uint8[N, 64], fail_nth: None | int[N], *, cmd: int = TDX_CMD_GET_REPORT0, buffer: int) -> (int64[N], uint8[N, 1024])

    The driver-path batch: one ``ioctl(fd, cmd, buffer)`` per row of ``reportdata``. ``buffer`` is a
    user address the process has mapped writable for the request: ``struct tdx_report_req`` (1088
    bytes: REPORTDATA at 0, TDREPORT at 64, ref §2.4), or for v4's ``TDX_CMD_GET_TDREPORT`` one
    in-place 1024-byte buffer (ref §2.2). Before row i's call its REPORTDATA is written there and, when
    ``fail_nth[i] > 0``, the process's fail-nth is armed with it (ref §7) for that call only (disarmed
    after it, fired or not); 0 leaves it unarmed. ``rets[i]`` is the ioctl's result (0 or -errno);
    ``reports[i]`` the TDREPORT read back when ``rets[i] == 0``, else zeros.

    On the core this is one C loop with the GIL released (csrc/tdx_batch.c); on the reference, the same
    steps through ``Process.poke`` / ``ioctl`` / ``peek``. A TD exit raises as ``Process.ioctl`` does.
    """
    rows = check_reportdata(reportdata)
    n = rows.shape[0]
    schedule = None
    if fail_nth is not None:
        schedule = np.asarray(fail_nth)
        if schedule.shape != (n,) or schedule.dtype.kind not in "iu":
            raise ValueError(f"fail_nth must be an integer array of shape ({n},), got "
                             f"{schedule.shape} {schedule.dtype}")
        if n and (schedule.min() < 0 or schedule.max() > 0x7FFFFFFF):
            raise ValueError("fail_nth values must be in 0..2**31-1")
    req = profiles.report_command(cmd)   # the request layout that number names (ref §2.2, §2.4)
    reportdata_off, tdreport_off = req.field("reportdata").offset, req.field("tdreport").offset
    native = _native_ioctl_batch(process)
    if native is not None:  # the core: one nogil C loop (csrc/tdx_batch.c)
        return native(process, fd, cmd, buffer, reportdata_off, tdreport_off, rows, schedule)
    rets = np.zeros(n, dtype=np.int64)
    reports = np.zeros((n, abi.TDX_REPORT_LEN), dtype=np.uint8)
    rd_addr, tr_addr = buffer + reportdata_off, buffer + tdreport_off
    for i in range(n):
        process.poke(rd_addr, rows[i].tobytes())
        armed = schedule is not None and schedule[i] != 0
        if armed:
            process.fail_nth = int(schedule[i])
        ret = process.ioctl(fd, cmd, buffer)
        if armed:
            process.fail_nth = 0  # a schedule entry is for its own row only
        rets[i] = ret
        if ret == 0:
            reports[i] = np.frombuffer(process.peek(tr_addr, abi.TDX_REPORT_LEN), dtype=np.uint8)
    return rets, reports


def _native_ioctl_batch(process) -> Optional[Callable]:
    """The core's nogil driver-path batch when ``process`` is a core Process, else None."""
    ext = _core_ext()
    fn = getattr(ext, "_ioctl_batch", None) if ext is not None else None
    if fn is None or not isinstance(process, ext.Process):
        return None
    return fn


def check_reportdata(reportdata) -> np.ndarray:
    if not isinstance(reportdata, np.ndarray):
        raise TypeError("reportdata must be a numpy array of shape (N, 64) and dtype uint8")
    if reportdata.dtype != np.uint8 or reportdata.ndim != 2 or reportdata.shape[1] != abi.TDX_REPORTDATA_LEN:
        raise ValueError(f"reportdata must have shape (N, 64) and dtype uint8, got {reportdata.shape} "
                         f"{reportdata.dtype}")
    return np.ascontiguousarray(reportdata)


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
    with DriverCaller(kernel) as caller:
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
        self.caller = DriverCaller(kernel) if self.via_driver else None
        self.module = module
        self.data = hashlib.sha384(b"tdxmodel bench extend").digest()

    def extend(self) -> bool:
        """One extend; True on success, False when it met the held RTMR lock (BUSY / -EBUSY)."""
        if self.via_driver:
            ret = self.caller.extend(EXTEND_INDEX, self.data)
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
    while owed[0] >= 1.0:
        owed[0] -= 1.0
        st.extends += 1
        if not ext.extend():
            st.extend_busy += 1


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
    ``batched`` ``chunk`` at a time through ``DriverCaller.ioctl_batch`` (one nogil loop on the core)."""
    kernel = make_kernel(backend_name, driver)
    module = kernel.module
    stats = [_CallerStats() for _ in range(callers)]
    drivers = [DriverCaller(kernel) for _ in range(callers)]
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


# ---------------------------------------------------------------------------------------------
# The whole `tdxmodel bench` run
# ---------------------------------------------------------------------------------------------

@dataclass
class BenchOptions:
    callers: int = field(default_factory=lambda: os.cpu_count() or 1)
    seconds: float = 0.5
    extend_ratio: float = 0.0
    driver: str = "v6.2"

    def validate(self) -> None:
        if isinstance(self.callers, bool) or not isinstance(self.callers, int) or not 1 <= self.callers <= 256:
            raise ValueError(f"--callers must be an integer in 1..256, got {self.callers!r}")
        if not (isinstance(self.seconds, (int, float)) and 0 < self.seconds <= 3600):
            raise ValueError(f"--seconds must be in (0, 3600], got {self.seconds!r}")
        if not (isinstance(self.extend_ratio, (int, float)) and 0 <= self.extend_ratio < 1):
            raise ValueError(f"--extend-ratio must be in [0, 1), got {self.extend_ratio!r}")
        if self.driver not in abi.DRIVERS:
            raise ValueError(f"--driver must be one of {', '.join(abi.DRIVERS)}, got {self.driver!r}")


def machine_info() -> Dict[str, object]:
    import platform
    import ssl
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION}


def run(options: BenchOptions, progress: Progress = None) -> Dict[str, object]:
    """Run every workload of ``tdxmodel bench``; the JSON object it prints (keys are a contract)."""
    options.validate()
    say = progress or (lambda msg: None)
    s = options.seconds
    main = _backend.default_name()  # TDXMODEL_BACKEND, else the core when built
    result: Dict[str, object] = {"backend": main, "driver": options.driver, "callers": options.callers,
                                 "seconds": s, "extend_ratio": options.extend_ratio,
                                 "machine": machine_info()}

    say("floors (HMAC-SHA-256 over 224 B, SHA-384 over 512 B)")
    result.update(measure_floors(s))

    say(f"batch API ({main}, one thread)")
    result["batch_reports_per_s"] = measure_batch(make_module(main), s)
    result["batch_rows"] = BATCH_ROWS

    say(f"one GET_REPORT ioctl ({main}, {options.driver})")
    lat = measure_call_latency(main, options.driver, s)
    result["call_median_us"], result["call_p99_us"] = lat["median_us"], lat["p99_us"]
    result["call_samples"] = lat["samples"]
    result["timer_overhead_us"] = lat["timer_overhead_us"]

    say(f"one GET_REPORT ioctl (reference, {options.driver})")
    ref = measure_call_latency("reference", options.driver, s, max_calls=20_000)
    result["reference_call_median_us"] = ref["median_us"]
    result["reference_call_p99_us"] = ref["p99_us"]

    scaling: Dict[str, float] = {}
    ioctl_scaling: Dict[str, float] = {}
    parallelism: Dict[str, float] = {}
    ioctl_batch_scaling: Dict[str, float] = {}
    per_cpu: Dict[str, float] = {}
    busy = reports = ioctl_busy = ioctl_reports = 0
    # Each point is the best of WINDOWS windows: the machine is shared, and a throughput figure
    # should show what the code can do, not what a neighbour's compile left of the cores.
    for n in range(1, options.callers + 1):
        say(f"{n} caller(s): batch API, extend ratio {options.extend_ratio}")
        runs = [measure_batch_scaling(main, options.driver, n, s / WINDOWS, options.extend_ratio)
                for _ in range(WINDOWS)]
        best = max(runs, key=lambda r: r["calls_per_s"])
        scaling[str(n)] = best["calls_per_s"]
        parallelism[str(n)] = best["parallelism"]
        per_cpu[str(n)] = best["calls_per_cpu_s"]
        busy += sum(r["busy"] for r in runs)
        reports += sum(r["reports"] for r in runs)
        say(f"{n} caller(s): ioctl through the Python API, extend ratio {options.extend_ratio}")
        runs = [measure_ioctl_scaling(main, options.driver, n, s / WINDOWS, options.extend_ratio)
                for _ in range(WINDOWS)]
        ioctl_scaling[str(n)] = max(r["calls_per_s"] for r in runs)
        ioctl_busy += sum(r["busy"] for r in runs)
        ioctl_reports += sum(r["reports"] for r in runs)
        say(f"{n} caller(s): driver-path ioctl_batch, extend ratio {options.extend_ratio}")
        runs = [measure_ioctl_scaling(main, options.driver, n, s / WINDOWS, options.extend_ratio, batched=True)
                for _ in range(WINDOWS)]
        ioctl_batch_scaling[str(n)] = max(r["calls_per_s"] for r in runs)
        ioctl_busy += sum(r["busy"] for r in runs)
        ioctl_reports += sum(r["reports"] for r in runs)
    result["scaling"] = scaling
    result["ioctl_scaling"] = ioctl_scaling
    result["scaling_parallelism"] = parallelism
    # Calls per CPU-second relative to one caller. When the callers really ran at once (parallelism near
    # their count), 1.0 means they cost each other nothing (no lock or cache-line contention); when the
    # machine time-sliced them on fewer cores it is ~1.0 whatever the code does.
    result["scaling_cpu_efficiency"] = {k: v / per_cpu["1"] for k, v in per_cpu.items()} if per_cpu.get("1") else {}
    result["ioctl_batch_scaling"] = ioctl_batch_scaling
    result["busy_rate"] = busy / reports if reports else 0.0
    result["ioctl_busy_rate"] = ioctl_busy / ioctl_reports if ioctl_reports else 0.0

    # The issue's targets, as ratios from this one run.
    result["ratios"] = {
        "batch_over_mac_floor": result["batch_reports_per_s"] / result["mac_floor_per_s"],
        "reference_over_core_call": (result["reference_call_median_us"] / result["call_median_us"]
                                     if result["call_median_us"] > 0 else None),
        "scaling_2_over_1": scaling["2"] / scaling["1"] if "2" in scaling and scaling["1"] else None,
    }
    return result


def format_table(result: Dict[str, object]) -> str:
    """The human-readable report of ``run``."""
    m = result["machine"]
    lines = [f"tdxmodel bench: backend {result['backend']}, driver {result['driver']}, "
             f"{result['callers']} caller(s), {result['seconds']} s per workload, "
             f"extend ratio {result['extend_ratio']}",
             f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; {m['openssl']}", ""]
    rows = [
        ("HMAC-SHA-256 224 B floor", f"{result['mac_floor_per_s']:,.0f} /s", result["floor_source"]),
        ("SHA-384 512 B floor", f"{result['sha384_floor_per_s']:,.0f} /s", result["floor_source"]),
        (f"batch API, 1 thread, {result['batch_rows']} rows", f"{result['batch_reports_per_s']:,.0f} reports/s",
         f"{result['ratios']['batch_over_mac_floor']:.2f} x MAC floor"),
        ("GET_REPORT ioctl median", f"{result['call_median_us']:.3f} us", f"p99 {result['call_p99_us']:.3f} us"),
        ("reference ioctl median", f"{result['reference_call_median_us']:.1f} us",
         (f"{result['ratios']['reference_over_core_call']:.0f} x the core"
          if result["ratios"]["reference_over_core_call"] else "")),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    lines += ["", "calls/s (x 1 caller) by caller threads; for the batch API, 'cores' is the CPU its callers got",
              "and 'eff' their calls per CPU-second relative to one caller",
              f"{'callers':>7}  {'batch API':>20}  {'cores':>5}  {'eff':>4}  {'ioctl via Python':>20}  "
              f"{'driver ioctl_batch':>20}"]
    series = [result["scaling"], result["ioctl_scaling"], result["ioctl_batch_scaling"]]
    for k in result["scaling"]:
        cells = [f"{d[k]:>11,.0f} ({d[k] / d['1'] if d['1'] else 0:4.2f})" for d in series]
        lines.append(f"{k:>7}  {cells[0]:>20}  {result['scaling_parallelism'][k]:>5.2f}  "
                     f"{result['scaling_cpu_efficiency'].get(k, 0.0):>4.2f}  {cells[1]:>20}  {cells[2]:>20}")
    lines += ["", f"busy rate (reports meeting TDX_OPERAND_BUSY): batch {result['busy_rate']:.4f}, "
                  f"ioctl {result['ioctl_busy_rate']:.4f}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Correctness under load: REPORTs and EXTENDs from K threads on one TD
# ---------------------------------------------------------------------------------------------

RTMRS_OFF = abi.TDR_OFF_RTMR0
RTMRS_END = abi.TDR_OFF_RTMR0 + abi.TDX_NUM_RTMRS * abi.TDX_SHA384_LEN


@dataclass
class StressLog:
    """What a stress run observed.

    ``extends``: every successful EXTEND as (index, data), in the order the extends held the RTMR
    lock: each one is issued and logged under ``log_lock``, so log order is lock order.
    ``reports``: (thread, lo, hi, reportdata, report) where ``lo`` extends were logged when the
    REPORT started and at most ``hi`` had taken the lock when it returned, so a correct REPORT shows
    the replay after some prefix j with lo <= j <= hi.
    ``reads``: (thread, lo, hi, index, value) for measurement-file reads (driver path).
    """

    initial: Tuple[bytes, ...]
    extends: List[Tuple[int, bytes]] = field(default_factory=list)
    reports: List[Tuple[int, int, int, bytes, bytes]] = field(default_factory=list)
    reads: List[Tuple[int, int, int, int, bytes]] = field(default_factory=list)
    report_busy: int = 0
    extend_busy: int = 0
    errnos: Dict[int, int] = field(default_factory=dict)


def _extend_data(thread: int, seq: int) -> bytes:
    return hashlib.sha384(f"tdxmodel stress {thread} {seq}".encode()).digest()


def _stress_threads(threads: int, ops_per_thread: int, extend_ratio: float, op: Callable) -> None:
    start = threading.Barrier(threads)
    failures: List[BaseException] = []

    def body(t: int) -> None:
        rng = np.random.default_rng(1000 + t)
        kinds = rng.random(ops_per_thread) < extend_ratio
        indices = rng.integers(0, abi.TDX_NUM_RTMRS, size=ops_per_thread)
        try:
            start.wait()
            for seq in range(ops_per_thread):
                op(t, seq, bool(kinds[seq]), int(indices[seq]))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            failures.append(e)

    ts = [threading.Thread(target=body, args=(t,), daemon=True) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if failures:
        raise failures[0]


def stress_module(module, threads: int = 4, ops_per_thread: int = 200,
                  extend_ratio: float = 0.3) -> StressLog:
    """K threads mixing ``Module.report`` and ``Module.extend`` on one TD (ref §4.3, §4.6, §4.8).

    Extends are serialised among themselves by the log lock (so they are logged in lock order) but run
    concurrently with the REPORTs of the other threads, which take the RTMR lock shared; a side that
    meets the other's lock gets BUSY|RTMR, which is counted, not retried.
    """
    log = StressLog(initial=tuple(module.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)))
    log_lock = threading.Lock()
    counts_lock = threading.Lock()

    def op(t: int, seq: int, is_extend: bool, index: int) -> None:
        if is_extend:
            data = _extend_data(t, seq)
            with log_lock:
                try:
                    module.extend(index, data)
                except errors.OperandBusy:
                    with counts_lock:
                        log.extend_busy += 1
                    return
                log.extends.append((index, data))
            return
        reportdata = hashlib.sha512(f"report {t} {seq}".encode()).digest()
        lo = len(log.extends)
        try:
            report = module.report(reportdata)
        except errors.OperandBusy:
            with counts_lock:
                log.report_busy += 1
            return
        hi = len(log.extends) + 1  # at most one more extend (serialised) may hold the lock unlogged
        log.reports.append((t, lo, hi, reportdata, report))

    _stress_threads(threads, ops_per_thread, extend_ratio, op)
    return log


def stress_driver(kernel, threads: int = 4, ops_per_thread: int = 200, extend_ratio: float = 0.3,
                  read_ratio: float = 0.1) -> StressLog:
    """The same on 6.16's driver path (ref §2.5): REPORTs through the GET_REPORT0 ioctl, EXTENDs by
    writing ``rtmrN:sha384``, and a fraction ``read_ratio`` of the REPORTs replaced by reads of a
    measurement file. Each thread is its own process. Every call takes ``mr_lock``, so no call may
    see -EBUSY (ref §4.8); any nonzero result is recorded in ``errnos``.
    """
    if not profiles.get(kernel.driver).measurements:
        raise ValueError(f"stress_driver needs the v6.16 driver (measurement files), not {kernel.driver}")
    module = kernel.module
    log = StressLog(initial=tuple(module.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)))
    log_lock = threading.Lock()
    counts_lock = threading.Lock()
    callers = [DriverCaller(kernel) for _ in range(threads)]

    def failed(ret: int) -> None:
        with counts_lock:
            log.errnos[ret] = log.errnos.get(ret, 0) + 1

    def op(t: int, seq: int, is_extend: bool, index: int) -> None:
        caller = callers[t]
        if is_extend:
            data = _extend_data(t, seq)
            with log_lock:
                ret = caller.extend(index, data)
                if ret != abi.MEASUREMENT_LEN:
                    failed(ret)
                    return
                log.extends.append((index, data))
            return
        lo = len(log.extends)
        if (seq * 7919 + t) % 1000 < read_ratio * 1000:
            ret, value = caller.read_measurement(index)
            hi = len(log.extends) + 1
            if value is None:
                failed(ret)
                return
            log.reads.append((t, lo, hi, index, value))
            return
        reportdata = hashlib.sha512(f"report {t} {seq}".encode()).digest()
        ret, report = caller.get_report(reportdata)
        hi = len(log.extends) + 1
        if report is None:
            failed(ret)
            return
        log.reports.append((t, lo, hi, reportdata, report))

    try:
        _stress_threads(threads, ops_per_thread, extend_ratio, op)
    finally:
        for c in callers:
            c.close()
    return log


def replay(initial: Sequence[bytes], extends: Sequence[Tuple[int, bytes]]) -> List[Tuple[bytes, ...]]:
    """The RTMR state after each prefix of ``extends``: RTMR[i] <- SHA-384(RTMR[i] || data) (ref §4.5)."""
    state = list(initial)
    states = [tuple(state)]
    for index, data in extends:
        state[index] = hashlib.sha384(state[index] + data).digest()
        states.append(tuple(state))
    return states


def check_stress(log: StressLog, final: Sequence[bytes], mac_key: Optional[bytes] = None) -> List[str]:
    """Every violation of the stress invariants, as readable strings (empty when all hold):

    * the final RTMRs equal the serial replay of the whole log (no lost update);
    * every REPORT's four RTMRs equal the replay at one prefix j, lo <= j <= hi (no torn read, and the
      report is linearised inside its own call), with j never decreasing within one thread;
    * every REPORT is self-consistent: TEE_INFO_HASH = SHA-384(TDINFO) (ref §4.5), REPORTDATA echoed,
      and the MAC verifies with ``mac_key`` (HMAC-SHA-256 over bytes 0..223, our design choice);
    * every measurement-file read equals the replay of its RTMR at a prefix within its bounds.
    """
    states = replay(log.initial, log.extends)
    where = {s: j for j, s in enumerate(states)}
    problems: List[str] = []
    if tuple(final) != states[-1]:
        lost = [i for i in range(abi.TDX_NUM_RTMRS) if final[i] != states[-1][i]]
        problems.append(f"final RTMRs {lost} differ from the serial replay of {len(log.extends)} extends")
    last_seen: Dict[int, int] = {}
    hs = abi.TDX_SHA384_LEN
    for n, (t, lo, hi, reportdata, report) in enumerate(log.reports):
        rtmrs = tuple(report[RTMRS_OFF + hs * i:RTMRS_OFF + hs * (i + 1)] for i in range(abi.TDX_NUM_RTMRS))
        j = where.get(rtmrs)
        if j is None:
            problems.append(f"report {n} (thread {t}) shows RTMRs equal to no prefix of the log")
        elif not lo <= j <= hi:
            problems.append(f"report {n} (thread {t}) shows prefix {j}, outside its call's bounds [{lo}, {hi}]")
        elif j < last_seen.get(t, 0):
            problems.append(f"report {n} (thread {t}) went back from prefix {last_seen[t]} to {j}")
        else:
            last_seen[t] = j
        tdinfo = report[abi.TDR_OFF_TDINFO:abi.TDX_REPORT_LEN]
        if report[abi.TDR_OFF_TEE_INFO_HASH:abi.TDR_OFF_TEE_INFO_HASH + hs] != hashlib.sha384(tdinfo).digest():
            problems.append(f"report {n} (thread {t}): TEE_INFO_HASH does not match its TDINFO (torn)")
        if report[abi.TDR_OFF_REPORTDATA:abi.TDR_OFF_REPORTDATA + abi.TDX_REPORTDATA_LEN] != reportdata:
            problems.append(f"report {n} (thread {t}): REPORTDATA is not the caller's")
        if mac_key is not None:
            mac = hmac.new(mac_key, report[:abi.TDX_MAC_COVERED_LEN], hashlib.sha256).digest()
            if report[abi.TDR_OFF_MAC:abi.TDR_OFF_MAC + abi.TDX_MAC_LEN] != mac:
                problems.append(f"report {n} (thread {t}): MAC does not verify")
    per_index = [{s[i]: j for j, s in reversed(list(enumerate(states)))} for i in range(abi.TDX_NUM_RTMRS)]
    for n, (t, lo, hi, index, value) in enumerate(log.reads):
        # The value may stay unchanged over several prefixes: any j in [lo, hi] with that value is fine.
        if not any(states[j][index] == value for j in range(lo, min(hi, len(states) - 1) + 1)):
            seen = per_index[index].get(value)
            problems.append(f"read {n} (thread {t}) of RTMR{index} shows "
                            f"{'no prefix' if seen is None else f'prefix {seen}'}, bounds [{lo}, {hi}]")
    return problems


@dataclass
class PerIndexLog:
    """What ``stress_module_per_index`` observed: per RTMR, its owner thread's successful extends in
    program order (= lock order, one writer per RTMR), and the REPORTs with per-RTMR bounds."""

    initial: Tuple[bytes, ...]
    extends: List[List[bytes]]
    reports: List[Tuple[int, Tuple[int, ...], Tuple[int, ...], bytes, bytes]] = field(default_factory=list)
    report_busy: int = 0
    extend_busy: int = 0


def stress_module_per_index(module, reporters: int = 2, ops_per_thread: int = 200) -> PerIndexLog:
    """Extenders contending with each other for real: one extender thread per RTMR (4), each extending
    only its own RTMR with no lock of ours around the leaf, plus ``reporters`` threads calling REPORT.
    Two extenders meet on the module's exclusive RTMR lock (BUSY|RTMR, ref §4.6 row 4, retried), so
    this checks the lock under writer-writer contention, which ``stress_module`` serialises away."""
    n = abi.TDX_NUM_RTMRS
    log = PerIndexLog(initial=tuple(module.rtmr(i) for i in range(n)), extends=[[] for _ in range(n)])
    counts_lock = threading.Lock()

    def op(t: int, seq: int, _is_extend: bool, _index: int) -> None:
        if t < n:  # extender of RTMR t: retry on BUSY so every extend it issues lands
            data = _extend_data(t, seq)
            while True:
                try:
                    module.extend(t, data)
                    break
                except errors.OperandBusy:
                    with counts_lock:
                        log.extend_busy += 1
            log.extends[t].append(data)
            return
        reportdata = hashlib.sha512(f"report {t} {seq}".encode()).digest()
        lo = tuple(len(e) for e in log.extends)
        try:
            report = module.report(reportdata)
        except errors.OperandBusy:
            with counts_lock:
                log.report_busy += 1
            return
        hi = tuple(len(e) + 1 for e in log.extends)
        log.reports.append((t, lo, hi, reportdata, report))

    _stress_threads(n + reporters, ops_per_thread, 0.0, op)
    return log


def check_stress_per_index(log: PerIndexLog, final: Sequence[bytes]) -> List[str]:
    """Violations of: final RTMR[i] = the replay of its owner's extends (no lost update); every
    REPORT's RTMR[i] = that replay after j_i extends with lo_i <= j_i <= hi_i (no torn or stale
    value); TEE_INFO_HASH = SHA-384(TDINFO) in every REPORT (ref §4.5)."""
    hs = abi.TDX_SHA384_LEN
    problems: List[str] = []
    chains = []
    for i, datas in enumerate(log.extends):
        chain = [log.initial[i]]
        for d in datas:
            chain.append(hashlib.sha384(chain[-1] + d).digest())
        chains.append({v: j for j, v in enumerate(chain)})
        if final[i] != chain[-1]:
            problems.append(f"final RTMR{i} differs from the replay of its {len(datas)} extends")
    for n, (t, lo, hi, reportdata, report) in enumerate(log.reports):
        for i in range(abi.TDX_NUM_RTMRS):
            value = report[RTMRS_OFF + hs * i:RTMRS_OFF + hs * (i + 1)]
            j = chains[i].get(value)
            if j is None or not lo[i] <= j <= hi[i]:
                problems.append(f"report {n} (thread {t}): RTMR{i} shows "
                                f"{'no prefix' if j is None else f'prefix {j}'}, bounds [{lo[i]}, {hi[i]}]")
        tdinfo = report[abi.TDR_OFF_TDINFO:abi.TDX_REPORT_LEN]
        if report[abi.TDR_OFF_TEE_INFO_HASH:abi.TDR_OFF_TEE_INFO_HASH + hs] != hashlib.sha384(tdinfo).digest():
            problems.append(f"report {n} (thread {t}): TEE_INFO_HASH does not match its TDINFO (torn)")
        if report[abi.TDR_OFF_REPORTDATA:abi.TDR_OFF_REPORTDATA + abi.TDX_REPORTDATA_LEN] != reportdata:
            problems.append(f"report {n} (thread {t}): REPORTDATA is not the caller's")
    return problems
