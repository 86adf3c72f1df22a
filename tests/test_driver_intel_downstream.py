"""Intel's out-of-tree tdx-guest driver (quote.md §2.6; intel/td-partitioning tdx-guest.c @1b3c1894),
row by row on both backends: GET_REPORT0 as upstream 6.2 (ref §2.4), TDX_CMD_VERIFY_REPORT and
TDX_CMD_EXTEND_RTMR with its index rule.
"""

import hashlib

import pytest

from tdxmodel import abi, profiles

DRIVER = "intel-downstream"
PROF = profiles.get(DRIVER)
PAGE = abi.TDX_PAGE_SIZE
REQ = 0x20000
FILL = 0xA5
REPORTDATA = bytes(range(64))
VERIFY = PROF.command("verify_report")
EXTEND = PROF.command("extend_rtmr")
ERR_OFF = VERIFY.field("err_code").offset
INDEX_OFF = EXTEND.field("index").offset
DATA = hashlib.sha384(b"downstream extend").digest()


def test_command_numbers_decode_as_the_uapi_header_says():
    # include/uapi/linux/tdx-guest.h @074bb0ff: _IOR('T', 2, {u8[256]; u64}), _IOR('T', 3, {u8[48]; u8})
    assert abi.ioc(abi.IOC_READ, ord("T"), 2, VERIFY.request_len) == abi.TDX_CMD_VERIFY_REPORT == 0x81085402
    assert abi.ioc(abi.IOC_READ, ord("T"), 3, EXTEND.request_len) == abi.TDX_CMD_EXTEND_RTMR == 0x80315403
    assert (VERIFY.request_len, ERR_OFF, EXTEND.request_len, INDEX_OFF) == (264, 256, 49, 48)
    assert PROF.device_path == "/dev/tdx_guest" and PROF.report.value == abi.TDX_CMD_GET_REPORT0


@pytest.fixture
def dev(make_kernel):
    k = make_kernel(DRIVER)
    p = k.process()
    p.mmap(REQ - PAGE, 3 * PAGE, "rw")
    p.poke(REQ - PAGE, bytes([FILL]) * 3 * PAGE)
    fd = p.open(PROF.device_path)
    assert fd >= 3
    yield k, p, fd
    p.close(fd)


def sweep(k):
    """The documented fail-nth sweep settings (ref §7): allocations may fail."""
    k.fault("failslab").ignore_gfp_wait = False


def window(p):
    return p.peek(REQ - PAGE, 3 * PAGE)


# ---- GET_REPORT0: ref §2.4 rows 1-6 ------------------------------------------------------------

def test_report_success_writes_the_tdreport_after_the_reportdata(dev):
    k, p, fd = dev
    p.poke(REQ, REPORTDATA)
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, REQ) == 0
    assert p.peek(REQ + 64, 1024) == k.module.report(REPORTDATA)
    assert p.peek(REQ, 64) == REPORTDATA
    assert [t[0] for t in p.last_trace()] == list(PROF.report.points)


@pytest.mark.parametrize("nth,point", [(1, "reportdata:kmalloc"), (2, "tdreport:kzalloc")])
def test_report_allocation_failure_is_enomem(dev, nth, point):
    k, p, fd = dev
    sweep(k)
    before = window(p)
    p.fail_nth = nth
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, REQ) == -abi.ENOMEM
    assert p.last_trace()[-1] == (point, "failslab", True)
    assert window(p) == before


def test_report_copy_in_fault_is_efault(dev):
    k, p, fd = dev
    p.mprotect(REQ, PAGE, "w")
    before = window(p)
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, REQ) == -abi.EFAULT
    assert window(p) == before


@pytest.mark.parametrize("status,err", [
    (abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8, abi.EINVAL),
    (abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR, abi.EIO),
])
def test_report_tdcall_failure_maps_as_upstream_6_2(dev, status, err):
    k, p, fd = dev
    before = window(p)
    k.force_tdcall(status, leaf=abi.TDG_MR_REPORT)
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, REQ) == -err
    assert window(p) == before


def test_report_copy_out_fault_is_efault(dev):
    k, p, fd = dev
    p.mprotect(REQ + PAGE, PAGE, "r")
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, REQ + PAGE - 64 - 512) == -abi.EFAULT


@pytest.mark.parametrize("cmd", [abi.TDX_CMD_GET_TDREPORT, 0xC0A00401])
def test_unknown_command_is_enotty(dev, cmd):
    k, p, fd = dev
    before = window(p)
    assert p.ioctl(fd, cmd, REQ) == -abi.ENOTTY
    assert window(p) == before


# ---- TDX_CMD_VERIFY_REPORT: tdx_verify_report rows 1-5 ----------------------------------------

def _reportmac(k, p, fd):
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, REQ) == 0
    return p.peek(REQ + 64, abi.TDX_REPORTMACSTRUCT_LEN)


def test_verify_a_genuine_reportmacstruct_returns_0_and_a_zero_err_code(dev):
    k, p, fd = dev
    mac = _reportmac(k, p, fd)
    p.poke(REQ, mac + bytes([FILL]) * 8)
    assert p.ioctl(fd, abi.TDX_CMD_VERIFY_REPORT, REQ) == 0
    assert p.peek(REQ + ERR_OFF, 8) == bytes(8)
    assert [t[0] for t in p.last_trace()] == list(VERIFY.points)


def test_verify_a_tampered_mac_is_eio_with_the_status_in_err_code(dev):
    k, p, fd = dev
    mac = bytearray(_reportmac(k, p, fd))
    mac[abi.TDR_OFF_MAC] ^= 1
    p.poke(REQ, bytes(mac))
    assert p.ioctl(fd, abi.TDX_CMD_VERIFY_REPORT, REQ) == -abi.EIO
    assert int.from_bytes(p.peek(REQ + ERR_OFF, 8), "little") == abi.TDX_INVALID_REPORTMACSTRUCT


def test_verify_any_failing_status_is_eio(dev):
    k, p, fd = dev
    status = abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX   # no INVALID -> -EINVAL here
    k.force_tdcall(status, leaf=abi.TDG_MR_VERIFYREPORT)
    assert p.ioctl(fd, abi.TDX_CMD_VERIFY_REPORT, REQ) == -abi.EIO
    assert int.from_bytes(p.peek(REQ + ERR_OFF, 8), "little") == status


def test_verify_allocation_failure_is_enomem_and_touches_nothing(dev):
    k, p, fd = dev
    sweep(k)
    before = window(p)
    p.fail_nth = 1
    assert p.ioctl(fd, abi.TDX_CMD_VERIFY_REPORT, REQ) == -abi.ENOMEM
    assert p.last_trace() == [("reportmac:kmalloc", "failslab", True)]
    assert window(p) == before


def test_verify_copy_in_fault_is_efault_before_the_tdcall(dev):
    k, p, fd = dev
    p.mprotect(REQ + PAGE, PAGE, "w")
    before = window(p)
    assert p.ioctl(fd, abi.TDX_CMD_VERIFY_REPORT, REQ + PAGE - 128) == -abi.EFAULT
    assert window(p) == before
    assert [t[0] for t in p.last_trace()] == ["reportmac:kmalloc", "reportmac:copy_from_user"]


@pytest.mark.parametrize("tamper", [False, True])
def test_verify_err_code_copy_out_fault_is_efault_whatever_the_status(dev, tamper):
    k, p, fd = dev
    mac = bytearray(_reportmac(k, p, fd))
    if tamper:
        mac[abi.TDR_OFF_MAC] ^= 1
    p.poke(REQ, bytes(mac))
    sweep(k)
    p.fail_nth = 3   # after the kmalloc and the copy-in: the err_code copy_to_user
    assert p.ioctl(fd, abi.TDX_CMD_VERIFY_REPORT, REQ) == -abi.EFAULT
    assert p.last_trace()[-1] == ("err_code:copy_to_user", "fail_usercopy", True)


# ---- TDX_CMD_EXTEND_RTMR: tdx_extend_rtmr rows 1-6 ---------------------------------------------

def _extend_request(p, index, data=DATA, at=REQ):
    p.poke(at, data + bytes([index]))


@pytest.mark.parametrize("index", [2, 3])
def test_extend_rtmr_2_and_3_extends_the_register(dev, index):
    k, p, fd = dev
    old = k.module.rtmr(index)
    _extend_request(p, index)
    assert p.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, REQ) == 0
    assert k.module.rtmr(index) == hashlib.sha384(old + DATA).digest()
    assert [t[0] for t in p.last_trace()] == list(EXTEND.points)


@pytest.mark.parametrize("index", [0, 1])
def test_extend_rtmr_0_and_1_is_einval_before_any_allocation(dev, index):
    k, p, fd = dev
    old = [k.module.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]
    allocs = k.counters()["allocs"]
    _extend_request(p, index)
    assert p.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, REQ) == -abi.EINVAL
    assert k.counters()["allocs"] == allocs
    assert p.last_trace() == [("rtmr_index:copy_from_user", "fail_usercopy", False)]
    assert [k.module.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)] == old


@pytest.mark.parametrize("index", [4, 255])
def test_extend_an_index_the_module_has_not_is_einval(dev, index):
    # the module answers OPERAND_INVALID (RDX) (ref §4.6), which tdx_mcall_extend_rtmr maps to -EINVAL
    k, p, fd = dev
    _extend_request(p, index)
    assert p.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, REQ) == -abi.EINVAL


def test_extend_index_fault_is_efault_before_the_index_check(dev):
    k, p, fd = dev
    at = REQ + PAGE - INDEX_OFF   # the index byte is the first byte of a page that cannot be read
    _extend_request(p, 0, at=at)
    p.mprotect(REQ + PAGE, PAGE, "w")
    assert p.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, at) == -abi.EFAULT
    assert [t[0] for t in p.last_trace()] == ["rtmr_index:copy_from_user"]


def test_extend_allocation_failure_is_enomem(dev):
    k, p, fd = dev
    sweep(k)
    old = k.module.rtmr(2)
    _extend_request(p, 2)
    p.fail_nth = 2
    assert p.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, REQ) == -abi.ENOMEM
    assert p.last_trace()[-1] == ("extend_data:kmalloc", "failslab", True)
    assert k.module.rtmr(2) == old


def test_extend_data_fault_is_efault_and_extends_nothing(dev):
    k, p, fd = dev
    old = k.module.rtmr(3)
    _extend_request(p, 3)
    sweep(k)
    p.fail_nth = 3
    assert p.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, REQ) == -abi.EFAULT
    assert p.last_trace()[-1] == ("extend_data:copy_from_user", "fail_usercopy", True)
    assert k.module.rtmr(3) == old


def test_extend_meeting_a_held_rtmr_lock_is_ebusy(dev):
    k, p, fd = dev
    old = k.module.rtmr(2)
    _extend_request(p, 2)
    assert k.module.rtmr_lock_try(False) == abi.TDX_SUCCESS   # a REPORT in flight on another vCPU
    try:
        assert p.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, REQ) == -abi.EBUSY
    finally:
        k.module.rtmr_unlock(False)
    assert k.module.rtmr(2) == old


def test_extend_other_failing_status_is_eio(dev):
    k, p, fd = dev
    k.force_tdcall(abi.TDX_INVALID_CPUSVN, leaf=abi.TDG_MR_RTMR_EXTEND)
    _extend_request(p, 2)
    assert p.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, REQ) == -abi.EIO


# ---- the same commands through the served device (FUSE and LD_PRELOAD) -------------------------

@pytest.fixture(scope="module")
def served_downstream(request):
    from tdxmodel.pytest_plugin import ServedDevice
    devices = {}

    def get(backend):
        if backend not in devices:
            devices[backend] = ServedDevice(DRIVER, backend=backend).start()
        return devices[backend]

    yield get
    for d in devices.values():
        d.stop()


@pytest.mark.fuse
@pytest.mark.parametrize("backend_name", ["core", "reference"])
def test_verify_and_extend_through_fuse(served_downstream, backend_name):
    import fcntl
    import os
    d = served_downstream(backend_name)
    fd = os.open(d.path, os.O_RDWR)
    try:
        req = bytearray(abi.TDX_REPORT_REQ_LEN)
        fcntl.ioctl(fd, abi.TDX_CMD_GET_REPORT0, req)
        report = bytes(req[64:])
        vreq = bytearray(report[:abi.TDX_REPORTMACSTRUCT_LEN] + bytes([FILL]) * 8)
        assert fcntl.ioctl(fd, abi.TDX_CMD_VERIFY_REPORT, vreq) == 0
        assert vreq[ERR_OFF:] == bytes(8)                     # the status copied back (row 4)
        ereq = bytearray(DATA + bytes([2]))
        assert fcntl.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, ereq) == 0
        fcntl.ioctl(fd, abi.TDX_CMD_GET_REPORT0, req)
        rtmr2 = abi.TDR_OFF_RTMR0 + 2 * abi.TDX_SHA384_LEN
        old = report[rtmr2:rtmr2 + 48]
        assert bytes(req[64 + rtmr2:64 + rtmr2 + 48]) == hashlib.sha384(old + DATA).digest()
        with pytest.raises(OSError) as e:
            fcntl.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, bytearray(DATA + bytes([1])))
        assert e.value.errno == abi.EINVAL                    # RTMR 1 is the kernel's (row 2)
    finally:
        os.close(fd)


@pytest.mark.fuse
@pytest.mark.parametrize("cmd,err", [(abi.TDX_CMD_EXTEND_RTMR, abi.EINVAL),   # zeroed request: index 0
                                     (abi.TDX_CMD_VERIFY_REPORT, abi.EIO)])   # zero MAC does not verify
def test_downstream_commands_reach_the_driver_through_preload(served_downstream, tmp_path_factory, cmd, err):
    import os
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    client = str(tmp_path_factory.mktemp("clients") / "selftest")
    subprocess.run(["cc", "-O2", "-Wall", "-I", os.path.join(root, "csrc"), "-o", client,
                    os.path.join(root, "tests", "clients", "selftest.c")], check=True, timeout=120)
    d = served_downstream("core")
    r = subprocess.run([client, d.device_node, "v6", f"{cmd:x}"], capture_output=True, text=True,
                       timeout=30, env=d.preload_env())
    assert r.stdout.split() == ["-1", str(err)], r.stderr
