"""The Python convenience layer ``tdxmodel.client.TdxGuest`` and a syscall-level client reproducing the
kernel selftest (ref §3), on both backends.
"""

import hashlib
import os

import pytest

from tdxmodel import abi, errors, profiles
from tdxmodel.config import ModuleConfig
from tdxmodel.client import TdxGuest


def assert_balanced(guest):
    c = guest.kernel.counters()
    assert c["outstanding"] == c["resident"] and c["locks_held"] == 0, c


@pytest.fixture(params=abi.DRIVERS)
def guest(request, backend):
    g = TdxGuest(request.param, backend=backend.BACKEND_NAME, config=ModuleConfig(seed=3))
    yield g
    assert_balanced(g)
    g.close()


def test_selftest_through_the_syscall_api(backend, make_kernel):
    """tools/testing/selftests/tdx/tdx_guest_test.c's verify_report, step by step (ref §3)."""
    k = make_kernel("v6.2")
    p = k.process()
    req = 0x7FFF0000
    p.mmap(req, 2 * abi.TDX_PAGE_SIZE, "rw")
    fd = p.open("/dev/tdx_guest", os.O_RDWR | os.O_SYNC)
    assert 0 < fd                                                # 1
    p.poke(req, bytes(range(64)))                                # 2
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, req) == 0        # 3
    report = p.peek(req + abi.TDX_REPORT_REQ_OFF_TDREPORT, abi.TDX_REPORT_LEN)
    assert report[128:192] == bytes(range(64))                   # 4: TDREPORT 128..191
    assert p.peek(req + 192, 64) == bytes(range(64))             # 4: req bytes 192..255
    assert p.close(fd) == 0                                      # 5


def test_get_report(guest):
    report = guest.get_report(b"nonce")
    assert len(report) == abi.TDX_REPORT_LEN
    assert report == guest.module.report(b"nonce")
    assert report[abi.TDR_OFF_REPORTDATA:abi.TDR_OFF_REPORTDATA + 64] == b"nonce".ljust(64, b"\0")
    assert guest.get_report() == guest.module.report(b"")
    assert_balanced(guest)


def test_get_report_bad_input(guest):
    with pytest.raises(ValueError, match="reportdata"):
        guest.get_report(bytes(65))
    with pytest.raises(TypeError, match="reportdata"):
        guest.get_report("text")


def test_get_report_errors_are_oserrors_with_errno(guest):
    status = abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8
    expected = {"v4-2022-04": abi.EIO, "v6.2": abi.EINVAL, "v6.16": abi.ENXIO}.get(
        guest.driver, guest.profile.status_errno(status))
    assert expected == guest.profile.status_errno(status)
    guest.kernel.force_tdcall(status, leaf=abi.TDG_MR_REPORT)
    with pytest.raises(errors.KernelError) as e:
        guest.get_report(b"x")
    assert isinstance(e.value, OSError) and e.value.errno == expected
    if guest.profile.status_writeback is not None:  # v4: the status written back to user bytes 0..7
        assert e.value.status == status & abi.LINUX_V4_STATUS_MASK
    guest.process.fail_nth = 2  # allocations are filtered by default: the copy-out
    with pytest.raises(errors.UserCopyFault) as e:
        guest.get_report(b"x")
    assert e.value.errno == abi.EFAULT
    assert guest.get_report(b"x") == guest.module.report(b"x")


def test_measurements_and_extend_on_6_16(backend):
    with TdxGuest("v6.16", backend=backend.BACKEND_NAME, config=ModuleConfig(seed=3)) as g:
        assert g.read_measurement("mrtd:sha384") == ModuleConfig(seed=3).mrtd
        old = g.read_measurement("rtmr2:sha384")
        g.extend_rtmr(2, bytes([1]) * 48)
        assert g.read_measurement("rtmr2:sha384") == hashlib.sha384(old + bytes([1]) * 48).digest()
        assert g.get_report()[abi.TDR_OFF_RTMR0 + 96:abi.TDR_OFF_RTMR0 + 144] == g.module.rtmr(2)
        g.kernel.force_tdcall(abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR,
                              leaf=abi.TDG_MR_RTMR_EXTEND)
        with pytest.raises(errors.KernelError) as e:
            g.extend_rtmr(0, bytes(48))
        assert e.value.errno == abi.EBUSY
        assert_balanced(g)


@pytest.mark.parametrize("driver", ["v4-2022-04", "v6.2"])
def test_measurements_do_not_exist_before_6_16(backend, driver):
    with TdxGuest(driver, backend=backend.BACKEND_NAME) as g:
        with pytest.raises(errors.KernelError) as e:
            g.read_measurement("rtmr0:sha384")
        assert e.value.errno == abi.ENOENT
        with pytest.raises(errors.KernelError) as e:
            g.extend_rtmr(0, bytes(48))
        assert e.value.errno == abi.ENOENT


def test_measurement_bad_input(backend):
    with TdxGuest("v6.16", backend=backend.BACKEND_NAME) as g:
        with pytest.raises(ValueError, match="name"):
            g.read_measurement("rtmr9:sha384")
        with pytest.raises(ValueError, match="index"):
            g.extend_rtmr(4, bytes(48))
        with pytest.raises(ValueError, match="data"):
            g.extend_rtmr(0, bytes(47))
        with pytest.raises(TypeError, match="index"):
            g.extend_rtmr("0", bytes(48))


def test_bad_driver_and_backend_names(backend):
    with pytest.raises(ValueError, match="driver"):
        TdxGuest("v7", backend=backend.BACKEND_NAME)
    with pytest.raises(ValueError, match="backend"):
        TdxGuest("v6.2", backend="gpu")
    with pytest.raises(TypeError, match="config"):
        TdxGuest("v6.2", backend=backend.BACKEND_NAME, config={"seed": 1})


def test_closed_guest_refuses_calls(backend):
    g = TdxGuest("v6.2", backend=backend.BACKEND_NAME)
    g.close()
    g.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        g.get_report()
