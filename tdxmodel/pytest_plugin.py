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


class ServedDevice:
    """ServedDevice(driver, *, mode=None, socket=True, state=None, bind=None, extra_args=(),
    backend=None, mount=None)

    ``tdxmodel serve`` in a subprocess, in a fresh temporary directory (mount point, socket, state
    directory unless ``state`` is given). Use as a context manager or call ``start``/``stop``."""

    def __init__(self, driver: str = "v6.2", *, mode: Optional[int] = None, socket: bool = True,
                 state: Optional[str] = None, bind: Optional[str] = None,
                 extra_args: tuple = (), backend: Optional[str] = None,
                 mount: Optional[str] = None) -> None:
        if driver not in abi.DRIVERS:
            raise ValueError(f"driver must be one of {', '.join(abi.DRIVERS)}, not {driver!r}")
        self.driver = driver
        # short: a Unix socket path must fit in 108 bytes
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="tdxm-"))
        self.mount = pathlib.Path(mount) if mount else self.workdir / "mnt"
        self.state = pathlib.Path(state) if state else self.workdir / "state"
        self.socket = str(self.workdir / "sock") if socket else None
        self.bind = bind
        self.mode = mode
        self.backend = backend
        self.extra_args = tuple(extra_args)
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
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, start_new_session=True)
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
    def preload_env(self, env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Environment for a program that should reach this device at its real node path
        (``/dev/tdx_guest`` or ``/dev/tdx-attest``) through the LD_PRELOAD library."""
        if not self.socket:
            raise ValueError("this device was started without a socket")
        from tdxmodel.cli.serve import PRELOAD_LIBRARY
        out = dict(os.environ if env is None else env)
        out["TDXMODEL_SOCKET"] = self.socket
        out["LD_PRELOAD"] = str(PRELOAD_LIBRARY)
        return out

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
