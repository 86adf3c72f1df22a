"""The transports are their own extension: the core links no libfuse, and `tdxmodel serve` runs the
reference backend on a machine where the C core cannot be imported."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys

import pytest

from tdxmodel import abi, profiles
from tdxmodel.pytest_plugin import ServedDevice
from tdxmodel.transport import protocol

pytestmark = pytest.mark.fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def needed(path):
    """The DT_NEEDED entries of a shared object."""
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def test_core_extension_does_not_link_libfuse():
    from tdxmodel._core import _ext
    from tdxmodel.transport import _server
    core, transport = needed(_ext.__file__), needed(_server.__file__)
    assert any(lib.startswith("libcrypto") for lib in core)
    assert not any("fuse" in lib for lib in core), core
    assert any(lib.startswith("libfuse3") for lib in transport), transport
    assert not any(lib.startswith("libcrypto") for lib in transport), transport
    # nor does it call into libfuse some other way
    undefined = subprocess.run(["nm", "-D", "--undefined-only", _ext.__file__], capture_output=True,
                               text=True, check=True, timeout=60).stdout
    assert "fuse_" not in undefined


# Run the CLI with tdxmodel._core._ext unimportable, as on a machine where the core was not built.
NO_CORE = r"""
import importlib.abc, sys

class NoCore(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tdxmodel._core._ext":
            raise ImportError("tdxmodel._core._ext is blocked by the test")
        return None

sys.meta_path.insert(0, NoCore())
from tdxmodel.cli import main
code = main(sys.argv[1:])
assert "tdxmodel._core._ext" not in sys.modules
sys.exit(code)
"""


class ServedWithoutCore(ServedDevice):
    def command(self) -> list:
        cmd = super().command()
        assert cmd[1:3] == ["-m", "tdxmodel"]
        return [cmd[0], "-c", NO_CORE] + cmd[3:]


@pytest.mark.parametrize("driver", ["v6.16", "v4-2022-04"])
def test_serve_reference_backend_without_the_core(driver):
    with ServedWithoutCore(driver, backend="reference") as d:
        counters = d.counters()
        assert counters["fast_path"] is False
        report = profiles.get(driver).report
        cmd, size, tdr = report.value, report.request_len, report.field("tdreport").offset
        nonce = bytes(range(64))
        req = bytearray(size)
        req[:64] = nonce
        fd = os.open(d.path, os.O_RDWR)       # through FUSE
        try:
            fcntl.ioctl(fd, cmd, req)
        finally:
            os.close(fd)
        assert req[tdr + abi.TDR_OFF_REPORTDATA:][:64] == nonce
        assert req[tdr + abi.TDR_OFF_RTMR0:][:48] == d.rtmr(0)
        client = protocol.Client(d.socket, os.O_RDWR)  # through the socket of the preload library
        try:
            req = bytearray(size)
            req[:64] = nonce[::-1]
            assert client.ioctl(cmd, req) == 0
            assert req[tdr + abi.TDR_OFF_REPORTDATA:][:64] == nonce[::-1]
        finally:
            client.close()
        assert d.stop() == 0
    assert "Traceback" not in d.stderr_text()


def test_serve_core_backend_without_the_core_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-c", NO_CORE, "serve", "--driver", "v6.2", "--backend", "core",
                        "--mount", str(tmp_path / "mnt"), "--state", str(tmp_path / "state")],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("tdxmodel: ") and "core" in r.stderr
    assert not os.path.ismount(str(tmp_path / "mnt"))


class _Broken:
    """A handler whose callbacks raise BaseExceptions that are not Exceptions."""

    def __init__(self):
        self.errors = []

    def open(self, flags, pid):
        if flags & os.O_NONBLOCK:
            raise SystemExit("open blew up")
        return 7

    def release(self, handle):
        raise GeneratorExit("release blew up")

    def ioctl(self, handle, pid, cmd, arg, image, readable, writable):
        image[0] = 0xAA  # changed, then the call fails: nothing may reach the client
        raise KeyboardInterrupt("ioctl blew up")

    def control_read(self, node, pid, size, offset):
        return b""

    def control_write(self, node, pid, data, offset):
        return len(data)

    def callback_error(self, exc):
        self.errors.append(exc)


def test_python_handler_exceptions_go_to_the_error_sink_and_answer_eio(tmp_path):
    """With the reference backend every request runs in Python: whatever it raises (even a
    BaseException) is handed to callback_error and the client gets EIO; the server keeps serving."""
    import threading
    from tdxmodel.transport._server import DeviceServer
    handler = _Broken()
    server = DeviceServer(handler, "/dev/tdx_guest")
    server.set_window(abi.TDX_CMD_GET_REPORT0, abi.TDX_REPORT_REQ_LEN)
    path = str(tmp_path / "sock")
    server.socket_listen(path, 0o600)
    t = threading.Thread(target=server.socket_run, daemon=True)
    t.start()
    try:
        client = protocol.Client(path, os.O_RDWR)
        req = bytearray(abi.TDX_REPORT_REQ_LEN)
        assert client.ioctl(abi.TDX_CMD_GET_REPORT0, req) == -errno.EIO
        assert req == bytearray(abi.TDX_REPORT_REQ_LEN)
        assert client.ioctl(abi.TDX_CMD_GET_REPORT0, req) == -errno.EIO  # still serving
        client.close()
        with pytest.raises(OSError) as e:
            protocol.Client(path, os.O_RDWR | os.O_NONBLOCK)
        assert e.value.errno == errno.EIO
        deadline = 50
        while len(handler.errors) < 4 and deadline:
            threading.Event().wait(0.1)  # the release runs when the daemon sees the hang-up
            deadline -= 1
        kinds = sorted(type(x).__name__ for x in handler.errors)
        assert kinds == ["GeneratorExit", "KeyboardInterrupt", "KeyboardInterrupt", "SystemExit"]
    finally:
        server.socket_stop()
        t.join(10)
    assert not t.is_alive() and not os.path.exists(path)
