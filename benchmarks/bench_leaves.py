"""Each TDX module leaf alone (ref §4.3, §4.6, §4.7), on GPAs through ``tdcall``-style entry points
and on host buffers.

Question: what does each leaf cost without the kernel around it, and where does the time of a driver
call go (compare with bench_ioctl.py)?
"""

import pytest

from tdxmodel import abi, bench

PAGE = abi.TDX_PAGE_SIZE
REPORT_GPA = 4 * PAGE          # 1024-aligned output (pages 0..3 are the host's, CONTRACT.md)
REPORTDATA_GPA = 5 * PAGE      # 64-aligned input
EXTEND_GPA = 5 * PAGE + 256    # 64-aligned extend data, private


@pytest.fixture
def module(backend_name):
    m = bench.make_module(backend_name)
    m.set_page_state(REPORT_GPA, 2, "private")
    m.write_memory(REPORTDATA_GPA, bytes(range(64)))
    m.write_memory(EXTEND_GPA, bytes(48))
    return m


def test_mr_report_gpa(benchmark, module):
    benchmark.group = "leaf TDG.MR.REPORT"
    assert benchmark(module.mr_report, REPORT_GPA, REPORTDATA_GPA, 0) == abi.TDX_SUCCESS
    assert module.read_memory(REPORT_GPA + 128, 64) == bytes(range(64))


def test_report_host_buffer(benchmark, module):
    benchmark.group = "leaf TDG.MR.REPORT"
    report = benchmark(module.report, bytes(range(64)))
    assert report[128:192] == bytes(range(64))


def test_mr_report_rejected_r8(benchmark, module):
    """The cheapest path: R8 != 0 fails at step 4, before the lock and the hashes (ref §4.3)."""
    benchmark.group = "leaf TDG.MR.REPORT"
    status = benchmark(module.mr_report, REPORT_GPA, REPORTDATA_GPA, 1)
    assert status == abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8


def test_mr_rtmr_extend_gpa(benchmark, module):
    benchmark.group = "leaf TDG.MR.RTMR.EXTEND"
    assert benchmark(module.mr_rtmr_extend, EXTEND_GPA, 3) == abi.TDX_SUCCESS


def test_extend_host_buffer(benchmark, module):
    benchmark.group = "leaf TDG.MR.RTMR.EXTEND"
    before = module.rtmr(3)
    benchmark(module.extend, 3, bytes(48))
    assert module.rtmr(3) != before


def test_verify_host_buffer(benchmark, module):
    benchmark.group = "leaf TDG.MR.VERIFYREPORT"
    report = module.report(b"verify me")
    assert benchmark(module.verify, report) == abi.TDX_SUCCESS


def test_mr_verifyreport_gpa(benchmark, module):
    benchmark.group = "leaf TDG.MR.VERIFYREPORT"
    module.write_memory(REPORT_GPA, module.report(b"verify me"))
    assert benchmark(module.mr_verifyreport, REPORT_GPA) == abi.TDX_SUCCESS
