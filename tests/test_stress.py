"""Correctness under load: K threads mixing REPORTs and EXTENDs on one TD.

Every EXTEND is logged in lock order; the final RTMRs must equal a serial replay of the log, and every
REPORT must show the replay at some prefix of it that lies inside its own call (no lost update, no torn
read; ref §4.5 extend rule, §4.8 contention). Small sizes here (CI); the large size runs as a benchmark
(benchmarks/bench_stress.py). The workload and the checker live in tests/stress_oracles.py.
"""

from __future__ import annotations

import hashlib

from tdxmodel import abi
from tdxmodel.client import TdxGuest
from tests import stress_oracles as oracles

THREADS = 4
OPS = {"core": 400, "reference": 150}


def final_rtmrs(module):
    return [module.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]


def test_module_leaves_under_threads(backend, make_module):
    module = make_module()
    log = oracles.stress_module(module, threads=THREADS, ops_per_thread=OPS[backend.BACKEND_NAME],
                              extend_ratio=0.3)
    assert log.extends and log.reports, "the workload must both extend and report"
    assert oracles.check_stress(log, final_rtmrs(module), module.mac_key) == []
    c = module.counters()
    # A BUSY is counted by the module exactly when the workload saw one (ref §4.3 row 5, §4.6 row 4).
    assert c["rtmr_busy"] == log.report_busy + log.extend_busy
    assert c["rtmr_exclusive_acquired"] == len(log.extends)
    assert c["rtmr_shared_acquired"] == len(log.reports)


def test_module_extenders_contending_per_rtmr(backend, make_module):
    # One extender per RTMR with no lock of ours: extenders meet each other on the exclusive RTMR lock
    # (ref §4.6 row 4) and retry; every extend must land exactly once, in its owner's order.
    module = make_module()
    ops = OPS[backend.BACKEND_NAME]
    log = oracles.stress_module_per_index(module, reporters=2, ops_per_thread=ops)
    assert [len(e) for e in log.extends] == [ops] * abi.TDX_NUM_RTMRS
    assert log.reports
    assert oracles.check_stress_per_index(log, final_rtmrs(module)) == []
    c = module.counters()
    assert c["rtmr_busy"] == log.report_busy + log.extend_busy
    assert c["rtmr_exclusive_acquired"] == ops * abi.TDX_NUM_RTMRS


def test_v616_driver_path_under_threads(backend, make_kernel):
    kernel = make_kernel("v6.16")
    log = oracles.stress_driver(kernel, threads=THREADS, ops_per_thread=OPS[backend.BACKEND_NAME],
                              extend_ratio=0.3, read_ratio=0.2)
    # mr_lock serialises every REPORT and EXTEND the driver issues, so none may meet BUSY (ref §4.8).
    assert log.errnos == {}
    assert log.extends and log.reports and log.reads
    assert oracles.check_stress(log, final_rtmrs(kernel.module), kernel.module.mac_key) == []
    assert kernel.module.counters()["rtmr_busy"] == 0


def test_v616_extend_meets_foreign_report_lock_as_ebusy(backend, make_kernel):
    # The only driver-visible BUSY comes from outside the driver (ref §4.8): hold the RTMR lock shared,
    # as a REPORT on another vCPU does, and a measurement-file write gets -EBUSY (ref §2.5).
    kernel = make_kernel("v6.16")
    module = kernel.module
    before = module.rtmr(2)
    with TdxGuest(kernel=kernel) as caller:
        assert module.rtmr_lock_try(False) == abi.TDX_SUCCESS
        try:
            assert caller.try_extend(2, bytes(48)) == -abi.EBUSY
        finally:
            module.rtmr_unlock(False)
        assert module.rtmr(2) == before
        assert caller.try_extend(2, bytes(48)) == abi.MEASUREMENT_LEN
    assert module.rtmr(2) == hashlib.sha384(before + bytes(48)).digest()


# --- the checker itself must catch what it claims to catch ------------------------------------------

def _small_log(make_module):
    module = make_module()
    log = oracles.stress_module(module, threads=2, ops_per_thread=60, extend_ratio=0.4)
    assert len(log.extends) >= 2 and len(log.reports) >= 2
    return module, log


def test_checker_catches_a_lost_update(backend, make_module):
    module, log = _small_log(make_module)
    log.extends.insert(0, (1, bytes(range(48))))  # an extend the TD never saw
    problems = oracles.check_stress(log, final_rtmrs(module), module.mac_key)
    assert any("final RTMRs [1]" in p for p in problems)


def test_checker_catches_a_torn_read(backend, make_module):
    module, log = _small_log(make_module)
    t, lo, hi, rd, report = log.reports[-1]
    torn = bytearray(report)
    torn[abi.TDR_OFF_RTMR0 + 3 * 48] ^= 1  # one RTMR from a state that never existed
    log.reports[-1] = (t, lo, hi, rd, bytes(torn))
    problems = oracles.check_stress(log, final_rtmrs(module), module.mac_key)
    assert any("equal to no prefix" in p for p in problems)
    assert any("TEE_INFO_HASH" in p for p in problems)


def test_checker_catches_a_bad_mac(backend, make_module):
    module, log = _small_log(make_module)
    t, lo, hi, rd, report = log.reports[0]
    forged = bytearray(report)
    forged[abi.TDR_OFF_MAC] ^= 0x80
    log.reports[0] = (t, lo, hi, rd, bytes(forged))
    assert [p for p in oracles.check_stress(log, final_rtmrs(module), module.mac_key) if "MAC" in p]


def test_per_index_checker_catches_a_lost_extend(backend, make_module):
    module = make_module()
    log = oracles.stress_module_per_index(module, reporters=1, ops_per_thread=20)
    log.extends[2].pop(5)  # one extend of RTMR2 "lost" from the replay
    problems = oracles.check_stress_per_index(log, final_rtmrs(module))
    assert any("final RTMR2" in p for p in problems)


def test_checker_catches_a_stale_report(backend, make_module):
    module, log = _small_log(make_module)
    t, lo, hi, rd, report = log.reports[-1]
    # Claim the report started after every extend: a report from the initial state is then stale.
    stale = make_module().report(rd)
    log.reports[-1] = (t, len(log.extends), len(log.extends) + 1, rd, stale)
    problems = oracles.check_stress(log, final_rtmrs(module), module.mac_key)
    assert any("outside its call's bounds" in p for p in problems)
