"""The short soak (tests/soak/soak.py): the daemon under mixed load for about 20 s, then its open
files, RSS growth, counters, locks and state checked. Long form: ``python benchmarks/soak.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tdxmodel.pytest_plugin import _is_mounted
from tests.soak import soak
from tests.soak.soak import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.fuse]


def test_daemon_under_mixed_load_stays_healthy(fuzz_seed):
    r = soak.run(18, seed=fuzz_seed, check_preload_stat=True, check_sigterm=True,
                 check_malformed_logged=True)
    assert r["killed_clients"] > 0 and r["malformed"] > 0 and r["knob_writes"] > 0
    assert r["reports"] > 0 and r["confirmed_extends"] > 0 and r["cli_extends"] > 0


def _children(pid: int) -> dict:
    """The live (not zombie) children of ``pid``: {child pid: argv}."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    out[int(entry)] = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_killed_soak_driver_leaves_no_client_running(how, fuzz_seed):
    """The soak's clients loop on ioctls forever: when the driver dies (SIGKILL: no cleanup runs in
    it), every client and the daemon must die too, and the daemon's mount must go."""
    driver = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--seconds", "600",
                               "--seed", str(fuzz_seed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the daemon and the five warm-up clients
            kids = _children(driver.pid)
            clients = {p: a for p, a in kids.items() if b"-c" in a[1:2]}
            daemons = {p: a for p, a in kids.items() if b"serve" in a}
            if len(clients) >= 5 and daemons:
                break
            assert driver.poll() is None, driver.stderr.read().decode(errors="replace")
            time.sleep(0.1)
        else:
            pytest.fail(f"the soak did not start its clients: {kids}")
        (daemon, argv), = daemons.items()
        mount = argv[argv.index(b"--mount") + 1].decode()
        driver.send_signal(how)
        driver.wait(60)
        deadline = time.monotonic() + 30
        left = set(clients) | {daemon}
        while left and time.monotonic() < deadline:
            left = {p for p in left if _alive(p)}
            time.sleep(0.05)
        assert not left, f"still running after the soak driver died: {[kids[p] for p in left]}"
        assert not _is_mounted(mount)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
        driver.stderr.close()


def test_a_hung_daemon_fails_the_soak_instead_of_hanging_it(monkeypatch, fuzz_seed):
    """The daemon stopped (SIGSTOP: as deadlocked, every FUSE request waits): the watchdog names the
    hang, kills the daemon so the blocked step returns, and the soak fails, leaving nothing behind."""
    monkeypatch.setattr(soak, "STALL_SECONDS", 3.0)
    stopped = []

    def progress(done, total):
        if done >= 2 and not stopped:
            daemons = [p for p, a in _children(os.getpid()).items() if b"serve" in a]
            for p in daemons:
                os.kill(p, signal.SIGSTOP)
            stopped.extend(daemons)

    with pytest.raises(soak.SoakFailure, match="the daemon hung"):
        soak.run(600, seed=fuzz_seed, progress=progress)
    assert stopped and not any(_alive(p) for p in stopped)
