"""One GET_REPORT ioctl through the Python API (``Process.ioctl``), per driver generation.

Question: what does one attestation report cost a caller of the emulated device, and how far is the
Cython core from the pure-Python reference? Targets: core median <= 1.0 us, reference / core
>= 50.
"""

import pytest

from tdxmodel import bench
from tdxmodel.client import TdxGuest


@pytest.fixture
def caller(backend_name, driver):
    kernel = bench.make_kernel(backend_name, driver)
    with TdxGuest(kernel=kernel) as c:
        c.put_reportdata(bytes(range(64)))
        yield c


def test_get_report_ioctl(benchmark, caller, backend_name, driver):
    benchmark.group = f"ioctl GET_REPORT {driver}"
    ret = benchmark(caller.process.ioctl, caller.fd, caller.cmd, caller.buffer)
    assert ret == 0


def test_get_report_with_copies(benchmark, caller, backend_name, driver):
    """The same call plus writing REPORTDATA and reading the TDREPORT back (what a client does)."""
    benchmark.group = f"ioctl GET_REPORT {driver} + user copies"
    ret, report = benchmark(caller.try_get_report, bytes(range(64)))
    assert ret == 0 and report[128:192] == bytes(range(64))  # ref §3 selftest check
