"""Correctness under load: REPORTs and EXTENDs from K threads on one TD, and the oracles that check
them (used by tests/test_stress.py and benchmarks/bench_stress.py; not part of the package).

``stress_module`` / ``stress_driver`` / ``stress_module_per_index`` run the workloads and log what
every thread saw; ``check_stress`` / ``check_stress_per_index`` list every violation: each REPORT's
RTMRs must be a state the logged extends reach in some serial order (the RTMR chain of ref §4.5), and
its MAC must verify.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tdxmodel import abi, errors, profiles
from tdxmodel.client import TdxGuest
from tdxmodel.state import replay_events

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
    callers = [TdxGuest(kernel=kernel) for _ in range(threads)]

    def failed(ret: int) -> None:
        with counts_lock:
            log.errnos[ret] = log.errnos.get(ret, 0) + 1

    def op(t: int, seq: int, is_extend: bool, index: int) -> None:
        caller = callers[t]
        if is_extend:
            data = _extend_data(t, seq)
            with log_lock:
                ret = caller.try_extend(index, data)
                if ret != abi.MEASUREMENT_LEN:
                    failed(ret)
                    return
                log.extends.append((index, data))
            return
        lo = len(log.extends)
        if (seq * 7919 + t) % 1000 < read_ratio * 1000:
            ret, value = caller.try_read_measurement(index)
            hi = len(log.extends) + 1
            if value is None:
                failed(ret)
                return
            log.reads.append((t, lo, hi, index, value))
            return
        reportdata = hashlib.sha512(f"report {t} {seq}".encode()).digest()
        ret, report = caller.try_get_report(reportdata)
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
    """The RTMR state after each prefix of ``extends`` (tdxmodel.state.replay_events, ref §4.5)."""
    return replay_events([{"rtmr": i, "data": d.hex()} for i, d in extends], list(initial),
                         verify=False, prefixes=True)


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
        chain = [s[i] for s in replay(log.initial, [(i, d) for d in datas])]
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
