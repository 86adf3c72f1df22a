"""The FUSE device file of `tdxmodel serve` answers like the emulated kernel.

Needs root and /dev/fuse (marker `fuse`). Every daemon runs in a subprocess and is stopped and
unmounted at teardown (tdxmodel.pytest_plugin.ServedDevice).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import stat
import subprocess
import time

import pytest

from tdxmodel import abi, profiles
from tdxmodel.pytest_plugin import ServedDevice, tdx_device, tdx_driver  # noqa: F401 (fixtures)

pytestmark = pytest.mark.fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = abi.TDX_PAGE_SIZE
REQ = abi.TDX_REPORT_REQ_LEN
TDR = abi.TDX_REPORT_REQ_OFF_TDREPORT
RD = abi.TDR_OFF_REPORTDATA
RDLEN = abi.TDX_REPORTDATA_LEN
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


@pytest.fixture(scope="session")
def selftest_client(tmp_path_factory):
    """tests/clients/selftest.c compiled with cc (ref §3's check)."""
    out = tmp_path_factory.mktemp("clients") / "selftest"
    subprocess.run(["cc", "-O2", "-Wall", "-I", os.path.join(ROOT, "csrc"), "-o", str(out),
                    os.path.join(ROOT, "tests", "clients", "selftest.c")], check=True, timeout=120)
    return str(out)


BACKENDS = ("core", "reference")


@pytest.fixture(scope="module")
def served():
    """One daemon per (driver, backend) for the tests of this module that do not change its state.
    On the core the ioctl path is the nogil C one; on the reference it is the Python handler."""
    devices = {}

    def get(driver, backend="core"):
        if (driver, backend) not in devices:
            devices[driver, backend] = ServedDevice(driver, backend=backend).start()
        return devices[driver, backend]

    yield get
    for d in devices.values():
        d.stop()


def layout(driver):
    return profiles.get(driver).report.client_layout


def get_report(path, reportdata, driver="v6.2"):
    fd = os.open(path, os.O_RDWR | os.O_SYNC)
    try:
        report = profiles.get(driver).report
        tdr = report.field("tdreport").offset
        buf = bytearray(report.request_len)
        buf[:RDLEN] = reportdata
        fcntl.ioctl(fd, report.value, buf)
        if not report.in_place:
            assert buf[:RDLEN] == reportdata  # arg+0..63 unchanged (ref §2.4 row 6)
        return bytes(buf[tdr:tdr + abi.TDX_REPORT_LEN])
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_c_selftest_through_fuse(served, selftest_client, driver, backend):
    d = served(driver, backend)
    r = subprocess.run([selftest_client, d.path, layout(driver)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_python_fcntl_selftest(served, driver, backend):
    d = served(driver, backend)
    reportdata = bytes(range(RDLEN))
    report = get_report(d.path, reportdata, driver)
    assert report[RD:RD + RDLEN] == reportdata
    # the TD's own measurements are in the report (ref §4.4)
    cfg_rtmrs = [d.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]
    for i, value in enumerate(cfg_rtmrs):
        assert report[abi.TDR_OFF_RTMR0 + 48 * i:][:48] == value
    assert d.counters()["kernel"]["outstanding"] == d.counters()["kernel"]["resident"]


def test_unknown_command_is_enotty_on_v62(served, selftest_client):
    d = served("v6.2")
    fd = os.open(d.path, os.O_RDWR)
    try:
        for cmd in (0xC0A00401, 0xC0400101, abi.TDX_CMD_GET_TDREPORT):  # ref §1: wrong numbers seen
            with pytest.raises(OSError) as e:
                fcntl.ioctl(fd, cmd, bytearray(abi.ioc_size(cmd) or 8))
            assert e.value.errno == errno.ENOTTY
    finally:
        os.close(fd)
    r = subprocess.run([selftest_client, d.path, "v6", "c0a00401"], capture_output=True, text=True,
                       timeout=30)
    assert r.stdout.split() == ["-1", str(errno.ENOTTY)]


def test_unknown_command_returns_zero_on_v4(served):
    # ref §2.2: the v4 patch only logs "not supported" and returns 0
    d = served("v4-2022-04")
    fd = os.open(d.path, os.O_RDWR)
    try:
        assert fcntl.ioctl(fd, abi.TDX_CMD_GET_REPORT0, bytearray(REQ)) == 0
    finally:
        os.close(fd)


def raw_ioctl(fd, cmd, address):
    """ioctl with a raw pointer (fcntl.ioctl only takes buffers or a C int); -errno on failure."""
    r = _libc.ioctl(fd, ctypes.c_ulong(cmd), ctypes.c_void_p(address))
    return -ctypes.get_errno() if r < 0 else r


def _guarded_buffer(accessible):
    """A buffer whose first `accessible` bytes are rw and the rest up to 2 pages PROT_NONE; returns
    (mapping, address of the buffer start)."""
    m = mmap.mmap(-1, 3 * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    start = base + PAGE - accessible
    assert _libc.mprotect(ctypes.c_void_p(base + PAGE), 2 * PAGE, 0) == 0
    return m, base, start


@pytest.mark.parametrize("backend", BACKENDS)
def test_v4_short_buffer_gets_efault_and_the_prefix(served, backend):
    """v4 writes the TDREPORT in place through the raw arg (process_vm_writev): a buffer with only
    512 writable bytes gets -EFAULT and the first 512 bytes of the report (ref §2.2 row 5, §7)."""
    d = served("v4-2022-04", backend)
    full = get_report(d.path, bytes(RDLEN), "v4-2022-04")
    m, base, start = _guarded_buffer(512)
    try:
        ctypes.memset(start, 0, 512)
        fd = os.open(d.path, os.O_RDWR)
        try:
            assert raw_ioctl(fd, abi.TDX_CMD_GET_TDREPORT, start) == -errno.EFAULT
        finally:
            os.close(fd)
        prefix = ctypes.string_at(start, 512)
        # same TD, same REPORTDATA: the same report, cut where the user memory ends
        assert prefix == full[:512]
    finally:
        _libc.mprotect(ctypes.c_void_p(base + PAGE), 2 * PAGE, 3)
        m.close()
    assert d.counters()["kernel"]["outstanding"] == 0


def test_v62_struct_not_fully_accessible_is_efault(served):
    """FUSE copies the whole encoded 1088 bytes in before the daemon sees the call: a struct that is
    not wholly accessible gets -EFAULT and, unlike the kernel, no TDREPORT prefix (documented; the
    preload path is exact)."""
    d = served("v6.2")
    m, base, start = _guarded_buffer(512)
    try:
        fd = os.open(d.path, os.O_RDWR)
        try:
            assert raw_ioctl(fd, abi.TDX_CMD_GET_REPORT0, start) == -errno.EFAULT
        finally:
            os.close(fd)
    finally:
        _libc.mprotect(ctypes.c_void_p(base + PAGE), 2 * PAGE, 3)
        m.close()


@pytest.mark.fault
@pytest.mark.parametrize("backend", BACKENDS)
def test_faults_injected_at_run_time_give_their_errno(backend):
    with ServedDevice("v6.2", backend=backend) as d:
        rd = bytes(RDLEN)
        # ref §7: ignore-gfp-wait defaults to Y, so the GFP_KERNEL kmalloc never fails until N
        d.fault("failslab", probability=100, times=1)
        get_report(d.path, rd)
        d.fault("failslab", ignore_gfp_wait=False, probability=100, times=1)
        with pytest.raises(OSError) as e:
            get_report(d.path, rd)
        assert e.value.errno == errno.ENOMEM
        get_report(d.path, rd)  # times was 1: spent
        assert d.control("fail/failslab/times").read_text() == "0\n"
        d.fault("fail_usercopy", probability=100, times=1)
        with pytest.raises(OSError) as e:
            get_report(d.path, rd)
        assert e.value.errno == errno.EFAULT
        # fail-nth: with failslab's filter off, point 1 is the REPORTDATA kmalloc, point 3 the copy-in
        d.fault("failslab", probability=0)
        assert d.fail_nth(1) == 1
        with pytest.raises(OSError) as e:
            get_report(d.path, rd)
        assert e.value.errno == errno.ENOMEM
        assert d.fail_nth() == 0  # fired
        d.fail_nth(3)
        with pytest.raises(OSError) as e:
            get_report(d.path, rd)
        assert e.value.errno == errno.EFAULT
        get_report(d.path, rd)
        # fail-nth runs on across calls (ref §7): v6.2's GET_REPORT0 passes 4 points, so N = 6 spares
        # the first call and fails the second call's 2nd point, the TDREPORT kzalloc
        d.fail_nth(6)
        get_report(d.path, rd)
        assert d.fail_nth() == 2
        with pytest.raises(OSError) as e:
            get_report(d.path, rd)
        assert e.value.errno == errno.ENOMEM
        assert d.fail_nth() == 0
        c = d.counters()
        assert c["fast_path"] == (backend == "core")
        assert c["kernel"]["outstanding"] == c["kernel"]["resident"] and c["kernel"]["locks_held"] == 0
        # a malformed knob value is refused with EINVAL, as debugfs does
        with pytest.raises(OSError) as e:
            d.control("fail/failslab/probability").write_text("lots\n")
        assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("backend", BACKENDS)
def test_measurement_files_v616(backend):
    with ServedDevice("v6.16", backend=backend) as d:
        m = d.control("measurements")
        assert sorted(os.listdir(m)) == sorted(abi.MEASUREMENTS)
        for name, (_off, writable) in abi.MEASUREMENTS.items():
            assert stat.S_IMODE(os.stat(m / name).st_mode) == (0o644 if writable else 0o444)
        before = (m / "rtmr2:sha384").read_bytes()
        assert len(before) == abi.MEASUREMENT_LEN
        data = bytes(range(48))
        d.extend(2, data)
        after = (m / "rtmr2:sha384").read_bytes()
        assert after == hashlib.sha384(before + data).digest()  # ref §4.6: extend = SHA-384(old || data)
        # the report sees it (one TD), and the state directory recorded it
        assert get_report(d.path, bytes(RDLEN), "v6.16")[abi.TDR_OFF_RTMR0 + 96:][:48] == after
        from tdxmodel.state import StateStore
        assert StateStore(str(d.state)).load().rtmr[2] == after
        # ref §2.5 write rules: count != 48 -> EINVAL; read-only files cannot be opened for writing
        fd = os.open(m / "rtmr1:sha384", os.O_WRONLY)
        try:
            with pytest.raises(OSError) as e:
                os.write(fd, b"x" * 47)
            assert e.value.errno == errno.EINVAL
        finally:
            os.close(fd)
        with pytest.raises(OSError) as e:
            os.open(m / "mrtd:sha384", os.O_WRONLY)
        assert e.value.errno == errno.EACCES
        from tdxmodel import eventlog  # the refused write left RTMR1 at its boot value
        assert (m / "rtmr1:sha384").read_bytes() == eventlog.replay(StateStore(str(d.state)).boot_events())[1]


def test_cli_extend_is_seen_by_the_daemon():
    """`tdxmodel extend` on the state directory reaches the running TD (StateStore generation)."""
    with ServedDevice("v6.2") as d:
        data = bytes([7]) * 48
        env = dict(os.environ, PYTHONPATH=ROOT)
        subprocess.run([os.sys.executable, "-m", "tdxmodel", "extend", "--rtmr", "3", "--data",
                        data.hex(), "--state", str(d.state)], check=True, timeout=60, env=env,
                       capture_output=True)
        want = hashlib.sha384(bytes(48) + data).digest()
        deadline = time.monotonic() + 10
        while True:
            got = get_report(d.path, bytes(RDLEN))[abi.TDR_OFF_RTMR0 + 144:][:48]
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got == want


def test_plugin_fixture_serves_a_device(tdx_device):
    assert (tdx_device.driver,) == ("v6.2",)  # the plugin's default generation
    report = get_report(tdx_device.path, b"n" * RDLEN)
    assert report[RD:RD + RDLEN] == b"n" * RDLEN
    tdx_device.fault("fail_usercopy", probability=100, times=1)
    with pytest.raises(OSError) as e:
        get_report(tdx_device.path, b"n" * RDLEN)
    assert e.value.errno == errno.EFAULT
