"""The pytest plugin, as a downstream suite uses it: `-p tdxmodel.pytest_plugin` stands in
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


def _installed_plugin_is_this_checkout() -> bool:
    import importlib.metadata
    import importlib.util
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.name == "tdxmodel":
            spec = importlib.util.find_spec(ep.value)
            return spec is not None and os.path.realpath(spec.origin) == os.path.realpath(
                os.path.join(ROOT, "tdxmodel", "pytest_plugin.py"))
    return False


def test_plugin_entry_point_is_registered_by_the_install():
    """./install.sh installs the package, whose pytest11 entry point names our plugin module."""
    import importlib.metadata
    eps = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "tdxmodel"]
    assert eps and eps[0].value == "tdxmodel.pytest_plugin"


def test_downstream_suite_uses_the_fixtures(tmp_path):
    (tmp_path / "test_downstream.py").write_text(DOWNSTREAM)
    env = dict(os.environ, PYTHONPATH=ROOT)
    # A downstream suite gets the plugin from the installed entry point (./install.sh registers it).
    # Where this checkout is not the installed copy, load this checkout's plugin by name instead.
    if _installed_plugin_is_this_checkout():
        plugin_args = []
    else:
        plugin_args = ["-p", "no:tdxmodel", "-p", "tdxmodel.pytest_plugin"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", *plugin_args,
                        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
