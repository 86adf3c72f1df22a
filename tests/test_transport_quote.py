"""The ioctl quote paths through the served device (csrc/transport/): their requests embed a pointer
to the caller's quote buffer (ref §2.2 v4 3/3, quote.md §2.6), which the transports mirror through the
client's pid beside the request window (tdx_ops.h, tdxf_set_buffer) and point the emulated request at;
the bytes the driver changes go back to the client, and the client's pointer stays as it was unless
the driver wrote there (v4's put_user of the TDVMCALL error).

In process over the socket transport (a protocol.Client in this process, whose buffer the server reads
with process_vm_readv), with a Host before the Kernel, on both backends (core: the nogil C path);
then a daemon through FUSE and through the LD_PRELOAD library.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import struct
import subprocess
import sys
import threading

import pytest

from tdxmodel import _backend, abi, profiles
from tdxmodel.config import ModuleConfig

DOWNSTREAM, V4 = "intel-downstream", "v4-2022-04"
LEN = 4 * abi.TDX_PAGE_SIZE
RD = bytes(range(0x30, 0x70))


def test_quote(payload):
    return b"tdxmodel-testq-1" + hashlib.sha384(payload).digest() + payload


test_quote.__test__ = False


def request(driver, ptr, length=LEN, timeout_ms=30000):
    cmd = profiles.get(driver).command("get_quote")
    req = bytearray(cmd.request_len)
    values = {"buf": ptr, "len": length, "timeout": timeout_ms}
    for f in cmd.fields:
        req[f.offset:f.end] = values[f.name].to_bytes(f.size, "little")
    return cmd.value, req


def quote_buffer(tdreport):
    buf = ctypes.create_string_buffer(LEN)
    hdr = struct.pack("<QQII", 1, 0, len(tdreport), 0) + tdreport
    ctypes.memmove(buf, hdr, len(hdr))
    return buf


@pytest.fixture(params=["core", "reference"])
def served(request, tmp_path):
    """served(driver) -> (socket client, kernel, host): an in-process socket server over one TD whose
    host exists before its kernel (the notify vector is registered at boot)."""
    from tdxmodel.transport import protocol
    from tdxmodel.transport._server import DeviceServer
    from tdxmodel.transport.device import EmulatedDevice, driver_buffers, driver_windows
    be = _backend.load(request.param)
    made = []

    def factory(driver):
        m = be.Module(ModuleConfig(seed=3), memory_pages=256)
        h = be.Host(m, producer=be.TestQuoteProducer())
        k = be.Kernel(m, driver)
        device = EmulatedDevice(k)
        fast = None
        if request.param == "core":
            from tdxmodel._core._ext import DevicePath
            fast = DevicePath()
            device.attach_fast_path(fast)
        server = DeviceServer(device, abi.DEVICE_PATHS[driver], fast)
        for cmd, window in driver_windows(driver).items():
            server.set_window(cmd, window)
        for cmd, (ptr_off, len_off) in driver_buffers(driver).items():
            server.set_buffer(cmd, ptr_off, len_off)
        path = str(tmp_path / f"sock{len(made)}")
        server.socket_listen(path, 0o600)
        t = threading.Thread(target=server.socket_run, daemon=True)
        t.start()
        client = protocol.Client(path, os.O_RDWR)
        made.append((server, t, client, h, fast))
        return client, k, h

    yield factory
    for server, t, client, h, fast in made:
        client.close()
        server.socket_stop()
        t.join(10)
        h.close()


def test_buffer_fields_come_from_the_profiles():
    from tdxmodel.transport.device import driver_buffers
    assert driver_buffers(DOWNSTREAM) == {abi.TDX_CMD_GET_QUOTE: (0, 8)}
    assert driver_buffers(V4) == {abi.TDX_CMD_GEN_QUOTE: (0, 8)}
    assert driver_buffers("v6.16") == {}


@pytest.mark.parametrize("driver", [DOWNSTREAM, V4])
def test_a_quote_through_the_socket_lands_in_the_callers_buffer(served, driver):
    client, k, h = served(driver)
    tdreport = k.module.report(RD)
    buf = quote_buffer(tdreport)
    cmd, req = request(driver, ctypes.addressof(buf))
    before = bytes(req)
    assert client.ioctl(cmd, req) == 0
    q = test_quote(tdreport)
    status, out_len = struct.unpack_from("<QI", buf.raw, 8)[0], struct.unpack_from("<I", buf.raw, 20)[0]
    assert (status, out_len) == (abi.GET_QUOTE_SUCCESS, len(q))
    assert buf.raw[24:24 + len(q)] == q
    assert bytes(req) == before                     # the client's pointer, not the mirror's
    assert h.counters()["interrupts"] == 1


def test_v4_put_user_over_the_pointer_reaches_the_client(served):
    client, k, h = served(V4)
    buf = quote_buffer(k.module.report(RD))
    cmd, req = request(V4, ctypes.addressof(buf))
    h.push_fault("retry")
    assert client.ioctl(cmd, req) == -errno.EIO
    assert int.from_bytes(req[:8], "little") == abi.TDVMCALL_STATUS_RETRY   # the driver's write kept


def test_an_unreadable_buffer_is_efault(served):
    client, k, h = served(DOWNSTREAM)
    page = ctypes.create_string_buffer(2 * abi.TDX_PAGE_SIZE)
    # an address in no mapping of this process: process_vm_readv reads nothing
    cmd, req = request(DOWNSTREAM, 0x10)
    assert client.ioctl(cmd, req) == -errno.EFAULT
    assert h.counters()["get_quotes"] == 0
    del page


# ---- a daemon: FUSE and the preload library, the state's TDQE behind GetQuote ---------------------

_CLIENT = r"""
import ctypes, fcntl, os, struct, sys
path, payload_kind, mode = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(path, os.O_RDWR)
rd = bytes(range(0x30, 0x70))
if payload_kind == "tdreport":  # v4: GET_TDREPORT in place, then the raw TDREPORT (ref §2.2)
    rep = bytearray(rd.ljust(1024, b"\0"))
    fcntl.ioctl(fd, 0xC0085401, rep)
    payload, cmd = bytes(rep), 0x80085402
else:                          # GET_REPORT0, then libtdx_attest's QGS frame (quote.md §2.7)
    rep = bytearray(rd + bytes(1024))
    fcntl.ioctl(fd, 0xC4405401, rep)
    msg = struct.pack("<HHIIIII", 1, 1, 0, 24 + 1024, 0, 1024, 0) + bytes(rep[64:])
    payload, cmd = len(msg).to_bytes(4, "big") + msg, 0x80105404
buf = ctypes.create_string_buffer(16384)
hdr = struct.pack("<QQII", 1, 0, len(payload), 0) + payload
ctypes.memmove(buf, hdr, len(hdr))
req = bytearray(struct.pack("<QQI4x", ctypes.addressof(buf) if mode == "good" else 0x10, 16384, 30000))
try:
    fcntl.ioctl(fd, cmd, req)
    ret = 0
except OSError as e:
    ret = -e.errno
status, out_len = struct.unpack_from("<QI", buf.raw, 8)[0], struct.unpack_from("<I", buf.raw, 20)[0]
print(ret, status, req[:8].hex(), buf.raw[24:24 + min(out_len, 16384 - 24)].hex())
"""


@pytest.fixture(scope="module")
def daemons():
    from tdxmodel.pytest_plugin import ServedDevice
    made = {}

    def get(driver):
        if driver not in made:
            made[driver] = ServedDevice(driver, backend="core").start()
        return made[driver]

    yield get
    for d in made.values():
        d.stop()


def _run(path, driver, mode, env=None):
    r = subprocess.run([sys.executable, "-c", _CLIENT, path, profiles.get(driver).ioctl_quote.payload, mode], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    ret, status, head, data = (r.stdout.split() + [""])[:4]
    return int(ret), int(status), int.from_bytes(bytes.fromhex(head), "little"), bytes.fromhex(data)


@pytest.mark.fuse
@pytest.mark.parametrize("how", ["fuse", "preload"])
@pytest.mark.parametrize("driver", [DOWNSTREAM, V4])
def test_the_daemon_serves_a_quote_through_the_ioctl(daemons, driver, how):
    from tdxmodel import quote as Q
    from tdxmodel.client import qgs_get_quote_response
    d = daemons(driver)
    path, env = (d.path, None) if how == "fuse" else (d.device_node, d.preload_env())
    ret, status, head, data = _run(path, driver, "good", env)
    assert (ret, status) == (0, abi.GET_QUOTE_SUCCESS)
    raw = qgs_get_quote_response(data) if driver == DOWNSTREAM else data
    assert Q.parse_quote(raw).reportdata == RD        # the state's TDQE, for this request
    ret, status, head, data = _run(path, driver, "bad", env)
    assert (ret, head) == (-errno.EFAULT, 0x10)       # an unmapped buffer faults at the copy-in
