"""The pytest plugin, as a downstream suite uses it (issue 6): `-p tdxmodel.pytest_plugin` stands in
for the entry point an installed tdxmodel registers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOWNSTREAM = '''
import fcntl, os, pytest
from tdxmodel import abi
REQ_LEN, GET_REPORT0, TDREPORT = abi.TDX_REPORT_REQ_LEN, abi.TDX_CMD_GET_REPORT0, abi.TDX_REPORT_REQ_OFF_TDREPORT
RD, RTMR0 = abi.TDR_OFF_REPORTDATA, abi.TDR_OFF_RTMR0

def get_report(path, nonce):                      # "your real client code"
    fd = os.open(path, os.O_RDWR | os.O_SYNC)
    try:
        req = bytearray(REQ_LEN); req[:64] = nonce
        fcntl.ioctl(fd, GET_REPORT0, req)
        return bytes(req[TDREPORT:])
    finally:
        os.close(fd)

def test_client_reports(tdx_device):
    report = get_report(tdx_device.path, b"n" * 64)
    assert report[RD:RD + 64] == b"n" * 64 and report[RTMR0:RTMR0 + 48] == tdx_device.rtmr(0)
    tdx_device.fault("fail_usercopy", probability=100, times=1)
    with pytest.raises(OSError):
        get_report(tdx_device.path, b"n" * 64)

@pytest.mark.parametrize("tdx_driver", ["v6.16"])
def test_measurements_and_extend(tdx_device, tdx_driver):
    before = tdx_device.rtmr(3)
    tdx_device.extend(3, bytes(48))
    assert tdx_device.rtmr(3) != before
    assert get_report(tdx_device.path, bytes(64))[RTMR0 + 144:RTMR0 + 192] == tdx_device.rtmr(3)
'''


def test_downstream_suite_uses_the_fixtures(tmp_path):
    (tmp_path / "test_downstream.py").write_text(DOWNSTREAM)
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tdxmodel.pytest_plugin",
                        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
