"""`tdxmodel run`: CMD in a private mount namespace with the emulator's guest paths; the host's mount
table and paths are the same before and after, also when CMD is killed; CMD's status is run's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

from tdxmodel import profiles

pytestmark = pytest.mark.fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=tempfile.gettempdir())
CLIENT = os.path.join(ROOT, "tests", "clients", "ccel_client.py")
GUEST_PATHS = ["/dev/tdx_guest", "/dev/tdx-attest", "/sys/firmware/acpi/tables/CCEL",
               "/sys/firmware/acpi/tables/data/CCEL", "/etc/tdx-attest.conf",
               "/sys/class/misc/tdx_guest", "/sys/devices/virtual/misc/tdx_guest", "/sys/kernel/config/tsm"]
_OTHERS = re.compile(re.escape(tempfile.gettempdir()) + r"/tdxm-(?!run-)")


def _elsewhere(mountpoint: str) -> bool:
    """A mount of another test's daemon under the temp dir (other suites' mounts come and go on a
    shared machine); this test's own runs work under ENV["TMPDIR"], which stays watched."""
    tmp = tempfile.gettempdir() + "/"
    return (mountpoint.startswith(tmp) and not mountpoint.startswith(ENV["TMPDIR"] + "/")) \
        or bool(_OTHERS.match(mountpoint))


def host_view():
    """The mount table (without other test daemons' temporary mounts, which come and go on a shared
    machine), which guest paths exist, and the run work directories left in the temp dir."""
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(" ".join(l.split()[3:5] + l.split(" - ")[1].split()[:2])
                        for l in f if not _elsewhere(l.split()[4]))
    return {"mounts": mounts, "paths": {p: os.path.lexists(p) for p in GUEST_PATHS},
            "workdirs": sorted(n for n in os.listdir(ENV["TMPDIR"]) if n.startswith("tdxm-run-"))}


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path_factory, monkeypatch):
    """Each test's `tdxmodel run` makes its work directory in a temp dir of its own, so "nothing left
    behind" is checked against this test's runs only, not other suites' running at the same time."""
    monkeypatch.setitem(ENV, "TMPDIR", str(tmp_path_factory.mktemp("runtmp")))


def run(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "tdxmodel", "run", *args], capture_output=True, text=True,
                          timeout=timeout, env=kw.pop("env", ENV), **kw)


INSIDE = r"""
import json, os, stat
paths = %r
out = {p: os.path.lexists(p) for p in paths}
out["conf"] = open("/etc/tdx-attest.conf").read()
out["rtmr0"] = open("/sys/class/misc/tdx_guest/measurements/rtmr0:sha384", "rb").read().hex()
out["rtmr0_devices"] = open("/sys/devices/virtual/misc/tdx_guest/measurements/rtmr0:sha384", "rb").read().hex()
out["ptys"] = os.path.isdir("/dev/pts") and os.path.exists("/dev/pts/ptmx")
print(json.dumps(out))
"""


def test_run_places_the_guest_paths_and_leaves_the_host_as_it_was(tmp_path):
    before = host_view()
    r = run("--driver", "v6.16", "--state", str(tmp_path / "st"), "--", sys.executable, "-c",
            INSIDE % GUEST_PATHS)
    assert r.returncode == 0, r.stderr
    inside = json.loads(r.stdout)
    for p in ("/dev/tdx_guest", "/sys/firmware/acpi/tables/CCEL", "/sys/firmware/acpi/tables/data/CCEL",
              "/etc/tdx-attest.conf", "/sys/class/misc/tdx_guest", "/sys/devices/virtual/misc/tdx_guest",
              "/sys/kernel/config/tsm"):
        assert inside[p], p
    assert not inside["/dev/tdx-attest"]  # v6.16's node only
    assert "port" not in inside["conf"].replace("# tdxmodel run: no vsock port", "")
    from tdxmodel.state import StateStore
    assert inside["rtmr0"] == inside["rtmr0_devices"] == StateStore(tmp_path / "st").load().rtmr[0].hex()
    assert inside["ptys"]  # mounts below an overlaid directory (/dev/pts under /dev) still work
    assert host_view() == before


@pytest.mark.parametrize("driver", ["v6.2", "v6.16"])
@pytest.mark.parametrize("script, status", [("exit 7", 7), ("kill -9 $$", 128 + 9), ("kill -15 $$", 128 + 15)])
def test_cmd_status_is_runs_and_a_killed_cmd_leaves_nothing(tmp_path, script, status, driver):
    before = host_view()
    tsm = "test -d /sys/kernel/config/tsm/report && mkdir /sys/kernel/config/tsm/report/k && " \
          "test -e /sys/class/misc/tdx_guest/measurements/rtmr2:sha384 || exit 98; " \
          if profiles.get(driver).measurements else ""
    r = run("--driver", driver, "--state", str(tmp_path / "st"), "--", "sh", "-c",
            "test -e /dev/tdx_guest && test -e /sys/firmware/acpi/tables/CCEL || exit 99; " + tsm + script)
    assert r.returncode == status, r.stderr
    assert host_view() == before


def test_v4_node_is_dev_tdx_attest(tmp_path):
    r = run("--driver", "v4-2022-04", "--state", str(tmp_path / "st"), "--", "sh", "-c",
            "test -e /dev/tdx-attest && ! test -e /dev/tdx_guest")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("preload", [False, True], ids=["mounts", "preload"])
@pytest.mark.parametrize("driver", ["v6.2", "v6.16"])
def test_python_client_requiring_ccel_replays_the_log_to_the_report(tmp_path, backend, driver, preload):
    """The SDK-style client (tests/clients/ccel_client.py, no tdxmodel import) starts only with the
    CCEL table; the boot log it reads there replays to the TDREPORT's RTMRs and, where configfs-tsm
    is served (6.16), to the RTMRs of a quote it gets through it, which verifies in `tdxmodel quote
    verify` and dcap-qvl. Through the mounts of `run` and through the preload library (`run
    --preload`: nothing mounted, the CCEL files and the tree forwarded)."""
    state = str(tmp_path / "st")
    r = run("--driver", driver, "--backend", backend.BACKEND_NAME, "--state", state,
            *(["--preload"] if preload else []), "--", sys.executable, CLIENT)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["match"]
    from tdxmodel.state import StateStore
    assert out["report"] == [v.hex() for v in StateStore(state).load().rtmr]
    if profiles.get(driver).quote is None:
        assert "quote" not in out   # ioctl-only: no configfs-tsm
        return
    assert out["quote_match"] and out["quote"] == out["report"]
    quote = tmp_path / "quote.bin"
    quote.write_bytes(bytes.fromhex(out["quote_hex"]))
    v = subprocess.run([sys.executable, "-m", "tdxmodel", "quote", "verify", str(quote), "--state", state],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert v.returncode == 0 and v.stdout.strip() == "UpToDate", v.stderr
    import time
    import dcap_qvl
    from tdxmodel.host.collateral import Platform
    platform = Platform(StateStore(state))
    coll = dcap_qvl.QuoteCollateralV3.from_json(platform.collateral().to_dcap_qvl_json())
    assert dcap_qvl.verify_with_root_ca(quote.read_bytes(), coll, platform.pki().root_der(),
                                        int(time.time())).status == "UpToDate"


def test_a_log_that_does_not_replay_is_caught_by_the_client(tmp_path):
    """The client's check can fail: a boot log whose initrd event no longer matches what was
    measured (its digest changed in the state's boot log file) does not replay to RTMR2."""
    from tdxmodel.state import StateStore
    state = tmp_path / "st"
    store = StateStore(state)
    store.load()
    path = store.directory / "boot-eventlog.json"
    doc = json.loads(path.read_text())
    [e for e in doc["events"] if e["mr_index"] == 3][-1]["digest"] = "77" * 48
    path.write_text(json.dumps(doc))
    r = run("--state", str(state), "--", sys.executable, CLIENT)
    assert r.returncode == 1 and json.loads(r.stdout)["match"] is False


def test_preload_reaches_the_device_without_mounts(tmp_path):
    """run --preload mounts nothing: the device, the CCEL files, the measurement files and the
    configfs-tsm tree are forwarded by the library, for CMD only."""
    before = host_view()
    code = ("import os, fcntl; fd = os.open('/dev/tdx_guest', os.O_RDWR); b = bytearray(1088); "
            "b[:64] = b'p' * 64; fcntl.ioctl(fd, 0xC4405401, b); print(bytes(b[64:]).hex()); "
            "print(os.path.exists('/sys/firmware/acpi/tables/CCEL')); "
            "print(open('/sys/class/misc/tdx_guest/measurements/rtmr0:sha384', 'rb').read().hex()); "
            "print(','.join(os.listdir('/sys/kernel/config/tsm')))")
    r = run("--preload", "--state", str(tmp_path / "st"), "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    report_hex, ccel, rtmr0, tsm = r.stdout.split()
    report = bytes.fromhex(report_hex)
    assert report[128:192] == b"p" * 64 and report[0] == 0x81
    assert ccel == "True" and tsm == "report"
    assert rtmr0 == report[720:768].hex()
    assert host_view() == before   # nothing was placed on the host


def test_run_refuses_without_root_and_without_a_command(tmp_path, monkeypatch, capsys):
    from tdxmodel.cli import main
    with monkeypatch.context() as m:
        m.setattr(os, "geteuid", lambda: 1000)  # as an unprivileged user
        assert main(["run", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tdxmodel: run needs root")
    r = run()
    assert r.returncode == 2 and "give the command" in r.stderr
    r = run("--state", str(tmp_path / "st"), "--", str(tmp_path / "no-such-program"))
    assert r.returncode == 2 and "no-such-program" in r.stderr and r.stderr.count("\n") == 1
