"""pytest plugin: a running emulated TDX guest device for a test (layer 4; entry point ``tdxmodel``).

Installed tdxmodel registers it (``[project.entry-points.pytest11]``), so a downstream suite gets the
fixtures without a conftest::

    def test_attestation_client(tdx_device):
        report = my_client.get_report(tdx_device.path, nonce=b"n" * 64)   # your real client code
        assert report[128:192] == b"n" * 64
        tdx_device.fault("fail_usercopy", probability=100, times=1)        # next copy faults
        with pytest.raises(OSError, match="Bad address"):
            my_client.get_report(tdx_device.path, nonce=b"n" * 64)

Fixtures:

* ``tdx_driver``: the driver generation (default ``"v6.2"``); override it (a fixture of the same
  name in your conftest, or ``@pytest.mark.parametrize("tdx_driver", [...])``);
* ``tdx_device``: a ``ServedDevice`` - ``tdx serve`` running in a subprocess for this test, with
  ``.path`` (the device file), ``.socket`` and ``.preload_env()`` (for programs run under the
  LD_PRELOAD library at the real node path), ``.rtmr(i)``/``.measurements()`` (the TD's
  measurements), ``.fault(capability, **knobs)``, ``.fail_nth(n)``, ``.extend(i, data)`` and
  ``.counters()``, and ``.eventlog()`` (the boot event log it serves as the CCEL data). It is
  stopped (and unmounted) at teardown.

Needs root and /dev/fuse (the daemon mounts FUSE and reads clients' memory).
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Optional

import pytest

from tdxmodel import abi, profiles

_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def _parent_death_signal(sig: int, parent: int):
    """A ``preexec_fn``: the child gets ``sig`` when the thread that started it dies
    (prctl(2) PR_SET_PDEATHSIG), or exits now if that parent is already gone."""
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return setup


class ServedDevice:
    """ServedDevice(driver, *, mode=None, socket=True, state=None, bind=None, extra_args=(),
    backend=None, mount=None, die_with_parent=False)

    ``tdxmodel serve`` in a subprocess, in a fresh temporary directory (mount point, socket, state
    directory unless ``state`` is given). Use as a context manager or call ``start``/``stop``.
    ``die_with_parent``: the daemon gets SIGTERM (and so unmounts) when the thread that started it
    dies, even by SIGKILL, instead of serving on as an orphan."""

    def __init__(self, driver: str = "v6.2", *, mode: Optional[int] = None, socket: bool = True,
                 state: Optional[str] = None, bind: Optional[str] = None,
                 extra_args: tuple = (), backend: Optional[str] = None,
                 mount: Optional[str] = None, qgs: bool = True, die_with_parent: bool = False) -> None:
        if driver not in abi.DRIVERS:
            raise ValueError(f"driver must be one of {', '.join(abi.DRIVERS)}, not {driver!r}")
        self.driver = driver
        # short: a Unix socket path must fit in 108 bytes
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="tdxm-"))
        self.mount = pathlib.Path(mount) if mount else self.workdir / "mnt"
        self.state = pathlib.Path(state) if state else self.workdir / "state"
        self.socket = str(self.workdir / "sock") if socket else None
        #: the daemon's quote generation service (Intel's QGS protocol, ``serve --qgs``)
        self.qgs_socket = str(self.workdir / "qgs.sock") if qgs else None
        self._pccs: Any = None
        self._pccs_thread: Any = None
        self.bind = bind
        self.mode = mode
        self.backend = backend
        self.extra_args = tuple(extra_args)
        self.die_with_parent = die_with_parent
        self.path = str(self.mount / os.path.basename(abi.DEVICE_PATHS[driver]))
        self.device_node = abi.DEVICE_PATHS[driver]
        self.proc: Optional[subprocess.Popen] = None
        self.stderr_path = self.workdir / "stderr"
        self._last_stderr = ""

    # ------------------------------------------------------------------ life cycle
    def command(self) -> list:
        cmd = [sys.executable, "-m", "tdxmodel", "serve", "--driver", self.driver, "--mount",
               str(self.mount), "--state", str(self.state)]
        if self.socket:
            cmd += ["--socket", self.socket]
        if self.qgs_socket:
            cmd += ["--qgs", self.qgs_socket]
        if self.mode is not None:
            cmd += ["--mode", f"{self.mode:o}"]
        if self.bind:
            cmd += ["--bind", self.bind]
        if self.backend:
            cmd += ["--backend", self.backend]
        return cmd + list(self.extra_args)

    def start(self) -> "ServedDevice":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self._stderr = open(self.stderr_path, "wb")
        pre = _parent_death_signal(signal.SIGTERM, os.getpid()) if self.die_with_parent else None
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, start_new_session=True, preexec_fn=pre)
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if b"ready" in line or not line:
                    break
            if self.proc.poll() is not None:
                break
        if b"ready" not in line:
            self.stop()
            raise RuntimeError(f"tdxmodel serve did not start: {self._last_stderr.strip()}")
        return self

    def stderr_text(self) -> str:
        if self.proc is None and self._last_stderr:
            return self._last_stderr
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int:
        """SIGTERM, wait, then make sure nothing is left mounted; returns the exit status."""
        rc = 0
        if self._pccs is not None:
            self._pccs.shutdown()
            self._pccs.server_close()
            self._pccs_thread.join(10)
            self._pccs = None
        self._last_stderr = self.stderr_text()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(STOP_TIMEOUT)
            rc = self.proc.returncode
            if self.proc.stdout:
                self.proc.stdout.close()
            self._stderr.close()
            self.proc = None
        for target in (self.bind, str(self.mount)):
            if target and _is_mounted(target):
                subprocess.run(["umount", "-l", target], capture_output=True, timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return rc

    def __enter__(self) -> "ServedDevice":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients' helpers
    def preload_env(self, env: Optional[Dict[str, str]] = None, *,
                    vsock_port: Optional[int] = None) -> Dict[str, str]:
        """Environment for a program that should reach this device at its real node path
        (``/dev/tdx_guest`` or ``/dev/tdx-attest``) through the LD_PRELOAD library; its AF_VSOCK
        connects to the host (CID 2) at ``vsock_port`` (default 4050) reach the QGS. ``vsock_port``
        given: the program's ``/etc/tdx-attest.conf`` says ``port=N`` (libtdx_attest then asks the
        QGS over vsock, quote.md §2.7 step 3)."""
        if not self.socket:
            raise ValueError("this device was started without a socket")
        from tdxmodel.cli.serve import PRELOAD_LIBRARY
        out = dict(os.environ if env is None else env)
        out["TDXMODEL_SOCKET"] = self.socket
        out["LD_PRELOAD"] = str(PRELOAD_LIBRARY)
        if self.qgs_socket:
            from tdxmodel.transport.qgs_server import preload_env
            out.update(preload_env(self.qgs_socket, vsock_port, self.workdir))
        return out

    # ------------------------------------------------------------------ the quote side
    def report(self, reportdata: bytes = b"") -> bytes:
        """A TDREPORT through the device file (the generation's report ioctl over FUSE)."""
        import fcntl
        cmd = profiles.get(self.driver).report
        rd, out = cmd.field("reportdata"), cmd.field("tdreport")
        if len(reportdata) > rd.size:
            raise ValueError(f"reportdata is {len(reportdata)} bytes; at most {rd.size}")
        buf = bytearray(max(cmd.request_len, out.end))
        buf[rd.offset:rd.offset + len(reportdata)] = reportdata
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.ioctl(fd, cmd.value, buf)
        finally:
            os.close(fd)
        return bytes(buf[out.offset:out.end])

    def quote(self, reportdata: bytes = b"") -> bytes:
        """quote(reportdata) -> a DCAP TD quote of this TD for REPORTDATA (zero-padded to 64 bytes), as
        libtdx_attest's vsock path gets one: a TDREPORT through the device file, then a GET_QUOTE_REQ
        to the daemon's quote generation service (Intel's QGS protocol, quote.md §4.2). Raises
        RuntimeError with the QGS's error code if it refuses."""
        import socket as _socket
        from tdxmodel.host import qgs
        if not self.qgs_socket:
            raise ValueError("this device was started without the quote service (qgs=False)")
        report = self.report(bytes(reportdata).ljust(abi.TDX_REPORTDATA_LEN, b"\0"))
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.settimeout(60)
            s.connect(self.qgs_socket)
            s.sendall(qgs.frame(qgs.get_quote_request(report)))
            reply = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        finally:
            s.close()
        if not reply:
            raise RuntimeError("the quote service closed the connection without an answer")
        message = qgs.unframe(reply)
        _id, quote = qgs.inflate_get_quote_response(message)
        if not quote:
            raise RuntimeError(f"the quote service answered error 0x{qgs.header(message)[4]:08x}")
        return quote

    def _platform(self) -> Any:
        from tdxmodel.host.collateral import Platform
        from tdxmodel.state import StateStore
        return Platform(StateStore(str(self.state)))

    def collateral(self) -> Any:
        """The emulated platform's collateral (``tdxmodel.host.collateral.Collateral``: TCB info, QE
        identity, CRLs, issuer chains; ``.to_dcap_qvl_json()`` for dcap-qvl), what ``pccs_url`` serves."""
        return self._platform().collateral()

    @property
    def root_ca(self) -> bytes:
        """The emulated platform's root CA certificate (DER): the trust anchor a verifier must be given
        in place of Intel's (README "The MAC is ours, not Intel's")."""
        return self._platform().pki().root_der()

    @property
    def pccs_url(self) -> str:
        """``http://127.0.0.1:PORT``: a PCCS (PCS v4 paths) for this platform's collateral, started
        on a free loopback port on first use and stopped with the device."""
        if self._pccs is None:
            import threading
            from tdxmodel.host.pccs import make_server
            platform = self._platform()
            platform.collateral()
            self._pccs = make_server(platform, "127.0.0.1", 0)
            self._pccs_thread = threading.Thread(target=self._pccs.serve_forever, kwargs={"poll_interval": 0.2},
                                                 name="tdxmodel-pccs", daemon=True)
            self._pccs_thread.start()
        host, port = self._pccs.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def tsm_path(self) -> str:
        """The configfs-tsm directory the daemon serves (``<mount>/tsm``; clients use
        ``tsm_path + "/report"`` as ``/sys/kernel/config/tsm/report``). ValueError for a generation
        without configfs-tsm (quote.md §1)."""
        path = self.mount / "tsm"
        if profiles.get(self.driver).quote is None or not path.is_dir():
            raise ValueError(f"{self.driver}: the daemon serves no configfs-tsm tree")
        return str(path)

    def host_fault(self, fault: Optional[str] = None, **params: Any) -> None:
        """host_fault("service_time", seconds=29.5): the next GetQuote meets this host fault (the
        names and parameters of tdxmodel.host_faults: service_time, never, error, service_unavailable,
        retry, oversize_out_len, out_len_changes, no_in_flight, no_interrupt; None: QEMU's behaviour)."""
        words = [fault or "none"] + [f"{k}={v}" for k, v in params.items()]
        try:
            self.control("debug/host_fault").write_text(" ".join(words) + "\n")
        except OSError as e:
            raise ValueError(f"host fault {' '.join(words)!r} refused: {e.strerror}") from None

    def host_counters(self) -> Dict[str, Any]:
        """{"host": the VMM's counters (GetQuotes, completions, in flight ...), "qgs": the quote
        service's (requests, quotes, error responses ...)}."""
        return json.loads(self.control("debug/host_counters").read_text())

    def control(self, relpath: str) -> pathlib.Path:
        return self.mount / relpath

    def fault(self, capability: str, **knobs: Any) -> None:
        """fault("failslab", probability=100, times=1, ignore_gfp_wait=False): set knobs of a
        capability through DIR/fail/<capability>/<knob> (ref §7 vocabulary)."""
        for knob, value in knobs.items():
            if isinstance(value, bool):
                value = "Y" if value else "N"
            self.control(f"fail/{capability}/{knob.replace('_', '-')}").write_text(f"{value}\n")

    def fail_nth(self, n: Optional[int] = None) -> int:
        """Arm fail-nth for the next call(s) (n given); return what DIR/fail-nth reads."""
        if n is not None:
            self.control("fail-nth").write_text(f"{n}\n")
        return int(self.control("fail-nth").read_text())

    def counters(self) -> Dict[str, Any]:
        return json.loads(self.control("debug/counters").read_text())

    def measurements(self) -> Dict[str, bytes]:
        """The TD's measurement registers: the 6.16 files, or else the RTMRs of the state."""
        prof = profiles.get(self.driver)
        if prof.measurements:
            return {m.name: self.control(f"measurements/{m.name}").read_bytes() for m in prof.measurements}
        from tdxmodel.state import StateStore
        cfg = StateStore(str(self.state)).load()
        out = {f"rtmr{i}:sha384": cfg.rtmr[i] for i in range(abi.TDX_NUM_RTMRS)}
        out.update({"mrtd:sha384": cfg.mrtd, "mrconfigid": cfg.mrconfigid, "mrowner": cfg.mrowner,
                    "mrownerconfig": cfg.mrownerconfig})
        return out

    def eventlog(self) -> list:
        """The boot event log the daemon serves (``acpi/tables/data/CCEL``, what a client reads at
        ``/sys/firmware/acpi/tables/data/CCEL``), parsed: a list of ``tdxmodel.eventlog.Event``
        (``mr_index``, ``event_type``, ``digest``, ``data``); ``tdxmodel.eventlog.replay(events)``
        gives the boot RTMRs."""
        from tdxmodel import eventlog
        return eventlog.parse_log(self.control("acpi/tables/data/CCEL").read_bytes())[1]

    def rtmr(self, index: int) -> bytes:
        return self.measurements()[f"rtmr{index}:sha384"]

    def extend(self, index: int, data: bytes) -> None:
        """Extend RTMR[index]: through the 6.16 measurement file, else through the state directory
        (as `tdxmodel extend` does; the daemon applies it within a fraction of a second)."""
        if profiles.get(self.driver).measurement(f"rtmr{index}:sha384") is not None:
            fd = os.open(self.control(f"measurements/rtmr{index}:sha384"), os.O_WRONLY)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            return
        from tdxmodel.state import StateStore
        StateStore(str(self.state)).extend(index, data)


def _is_mounted(path: str) -> bool:
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == real for line in f if len(line.split()) > 1)
    except OSError:
        return False


@pytest.fixture
def tdx_driver() -> str:
    """The driver generation tdx_device serves; override to test another."""
    return "v6.2"


@pytest.fixture
def tdx_device(tdx_driver: str):
    """A running emulated device (``ServedDevice``) for one test; stopped and unmounted after it."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.fail("tdx_device needs root and /dev/fuse (tdxmodel serve mounts FUSE)")
    with ServedDevice(tdx_driver) as device:
        yield device
