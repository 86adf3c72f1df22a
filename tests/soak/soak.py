"""Soak: one served 6.16 TD (``tdxmodel serve`` with FUSE and the socket) under mixed load for a
bounded time, then the daemon's health.

Load, all at once: reporters through the FUSE device and through the LD_PRELOAD library (which also
stats the device node first, as clients do), measurement-file extenders, `tdxmodel extend` on the
state directory, clients SIGKILLed mid-call and started again, malformed socket messages, fault knobs
and fail-nth changed at random, measurement reads.

Checked at the end (``run`` raises ``SoakFailure`` naming the first broken promise): the daemon is
alive; its open descriptors (/proc/PID/fd) are back to the count after warm-up; its RSS grew by less
than ``rss_budget`` bytes; debug/counters shows no open file, no allocation beyond the resident ones,
no lock held, every lock taken released, the module's RTMR lock balanced; state.json, the log and
the live TD agree and every extend reported successful is in the log (tests/crash/harness.check);
with ``check_preload_stat``, the preload client saw the device node exist; with ``check_sigterm``,
SIGTERM with a client holding the device open stops the daemon within 2 s and removes its mount;
with ``check_malformed_logged``, the malformed socket messages were logged, rate-limited.

Nothing outlives the soak: every client and the daemon get a parent-death signal (prctl
PR_SET_PDEATHSIG: SIGKILL for clients, SIGTERM for the daemon so it unmounts), so a soak that hangs
and is SIGKILLed leaves no client looping on the device.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Set, Tuple

from tdxmodel import abi

ROOT = pathlib.Path(__file__).resolve().parents[2]

REPORTER = r"""
import fcntl, os, sys, time
path, cmd, size, stat_first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if stat_first:
    print("exists", int(os.path.exists(path)), flush=True)
fd = os.open(path, os.O_RDWR)
n = 0
while True:
    req = bytearray(size)
    req[:64] = os.urandom(64)
    try:
        fcntl.ioctl(fd, cmd, req)
        n += 1
    except OSError:
        pass  # injected faults
"""

EXTENDER = r"""
import os, sys
mdir, tag = sys.argv[1], int(sys.argv[2])
k = 0
while True:
    i = (tag + k) % 4
    data = tag.to_bytes(8, "big") + k.to_bytes(8, "big") + b"s" * 32
    try:
        fd = os.open(f"{mdir}/rtmr{i}:sha384", os.O_WRONLY)
        try:
            if os.write(fd, data) == 48:
                print(i, data.hex(), flush=True)
        finally:
            os.close(fd)
    except OSError:
        pass  # injected faults
    if k % 5 == 0:
        for name in ("rtmr0:sha384", "mrtd:sha384"):
            try:
                with open(f"{mdir}/{name}", "rb") as f:
                    f.read()
            except OSError:
                pass
    k += 1
"""


class SoakFailure(AssertionError):
    pass


#: a soak step (a call through FUSE, a socket message, a CLI extend, reaping a client) that takes longer
#: than this means the daemon stopped answering: the watchdog says where its threads wait, then
#: SIGKILLs it so the blocked step returns and the soak fails instead of hanging
STALL_SECONDS = 180.0


def _watchdog(device, beat: List[float], stuck: List[str], done: threading.Event) -> None:
    while not done.wait(5):
        if time.monotonic() - beat[0] <= STALL_SECONDS:
            continue
        pid = device.proc.pid if device.proc is not None else None
        where: Set[str] = set()
        with contextlib.suppress(OSError, TypeError):
            for t in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{t}/wchan") as f:
                    where.add(f.read().strip() or "running")
        stuck.append(f"no soak step finished for {STALL_SECONDS:.0f} s: the daemon hung "
                     f"(its threads wait in {', '.join(sorted(where))})")
        with contextlib.suppress(OSError, TypeError):
            os.kill(pid, signal.SIGKILL)
        return


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _junk(rng: random.Random) -> bytes:
    from tdxmodel.transport import protocol
    choice = rng.randrange(6)
    if choice == 0:
        return rng.randbytes(rng.randrange(1, 64))
    if choice == 1:
        return protocol.HEADER.pack(protocol.MAGIC, 1, rng.randrange(3, 1 << 16), 0)
    if choice == 2:
        return protocol.HEADER.pack(protocol.MAGIC, 1, protocol.OP_IOCTL, rng.choice((1 << 30, (1 << 32) - 1)))
    if choice == 3:
        return protocol.HEADER.pack(protocol.MAGIC, 1, protocol.OP_IOCTL, protocol.IOCTL.size) \
            + protocol.IOCTL.pack(0, 0, 0, 0, 0, 0)
    if choice == 4:
        return protocol.HEADER.pack(protocol.MAGIC, rng.randrange(2, 9), protocol.OP_HELLO, 0)
    return protocol.HEADER.pack(protocol.MAGIC, 1, protocol.OP_OPEN, 3) + b"abc"


def run(duration: float = 20.0, *, seed: int = 0, rss_budget: int = 32 << 20, check_preload_stat: bool = False,
        check_sigterm: bool = False, check_malformed_logged: bool = False, cli_extends: bool = True,
        progress=None) -> Dict[str, Any]:
    from tdxmodel.pytest_plugin import ServedDevice, _is_mounted, _parent_death_signal
    from tests.crash import harness

    rng = random.Random(seed)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="tdxm-soak-"))
    state_dir = workdir / "state"
    device = ServedDevice("v6.16", state=str(state_dir), die_with_parent=True).start()
    die_with_us = _parent_death_signal(signal.SIGKILL, os.getpid())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs: List[Tuple[str, subprocess.Popen]] = []
    confirmed: Set[Tuple[int, str]] = set()
    stats = {"killed_clients": 0, "malformed": 0, "cli_extends": 0, "cli_timeouts": 0, "knob_writes": 0}
    preload_saw: List[str] = []
    mdir = str(device.control("measurements"))
    args = [str(abi.TDX_CMD_GET_REPORT0), str(abi.TDX_REPORT_REQ_LEN)]
    tag = [rng.getrandbits(16) << 24]
    beat: List[float] = [time.monotonic()]
    stuck: List[str] = []
    done = threading.Event()

    def spawn(kind: str) -> subprocess.Popen:
        tag[0] += 1
        if kind == "fuse":
            cmd, e = [sys.executable, "-c", REPORTER, device.path, *args, "0"], env
        elif kind == "preload":
            cmd, e = [sys.executable, "-c", REPORTER, device.device_node, *args, "1"], device.preload_env(env)
        else:
            cmd, e = [sys.executable, "-c", EXTENDER, mdir, str(tag[0])], env
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=e, start_new_session=True,
                             preexec_fn=die_with_us)
        procs.append((kind, p))
        return p

    def reap(kind: str, p: subprocess.Popen) -> None:
        with harness._suppress():
            os.killpg(p.pid, signal.SIGKILL)
        out = p.communicate(timeout=30)[0].decode(errors="replace")
        if kind == "extender":
            confirmed.update(harness._confirmed_lines(out))
        elif kind == "preload":
            preload_saw.extend(line for line in out.splitlines() if line.startswith("exists"))
        beat[0] = time.monotonic()

    threading.Thread(target=_watchdog, args=(device, beat, stuck, done), daemon=True).start()
    try:
        pid = device.proc.pid
        for kind in ("fuse", "fuse", "preload", "extender", "extender"):
            spawn(kind)
        time.sleep(min(2.0, duration / 5))  # warm-up: threads, caches, the first connections
        base_fds, base_rss = _fds(pid), _rss(pid)
        t0 = time.monotonic()
        last = 0.0
        while time.monotonic() - t0 < duration:
            act = rng.random()
            if act < 0.25 and procs:  # kill a client mid-call and start another of its kind
                kind, p = procs.pop(rng.randrange(len(procs)))
                reap(kind, p)
                spawn(kind)
                stats["killed_clients"] += 1
            elif act < 0.45:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    s.connect(device.socket)
                    try:
                        s.sendall(_junk(rng))
                        s.recv(1)
                    except OSError:
                        pass
                stats["malformed"] += 1
            elif act < 0.55 and cli_extends:
                i, data = rng.randrange(4), tag[0].to_bytes(8, "big") + rng.randbytes(40)
                tag[0] += 1
                try:
                    r = subprocess.run([sys.executable, "-m", "tdxmodel", "extend", "--rtmr", str(i), "--data",
                                        data.hex(), "--state", str(state_dir)], capture_output=True, env=env,
                                       timeout=60)
                    if r.returncode == 0:
                        confirmed.add((i, data.hex()))
                except subprocess.TimeoutExpired:
                    # killed at the bound (a starved machine: one took 60 s at 37 min of a loaded soak):
                    # like a killed writer, it may or may not have committed; the final checks decide
                    stats["cli_timeouts"] += 1
                stats["cli_extends"] += 1
            elif act < 0.75:
                cap = rng.choice(abi.FAULT_CAPABILITIES)
                knobs = {"probability": rng.choice((0, 0, 5, 50, 100)), "times": rng.choice((-1, 1, 5, 20)),
                         "interval": rng.choice((1, 1, 3))}
                if cap != "fail_usercopy":
                    knobs["ignore_gfp_wait"] = rng.random() < 0.5
                device.fault(cap, **knobs)
                if rng.random() < 0.3:
                    device.fail_nth(rng.randrange(1, 4))
                stats["knob_writes"] += 1
            time.sleep(rng.uniform(0.02, 0.15))
            beat[0] = time.monotonic()
            if progress and time.monotonic() - last > 1:
                last = time.monotonic()
                progress(last - t0, duration)
        elapsed = time.monotonic() - t0
        if stuck:
            raise SoakFailure(stuck[0])
        for cap in abi.FAULT_CAPABILITIES:  # faults off before the final checks
            device.fault(cap, probability=0)
        device.fail_nth(0)
        while procs:
            reap(*procs.pop())
        deadline = time.monotonic() + 10
        while device.counters()["open_files"] and time.monotonic() < deadline:
            time.sleep(0.05)
        if device.proc.poll() is not None:
            raise SoakFailure(f"the daemon died (exit {device.proc.returncode}): {device.stderr_text()[-300:]}")
        c = device.counters()
        k, m = c["kernel"], c["module"]
        if c["open_files"]:
            raise SoakFailure(f"{c['open_files']} files still open after every client exited")
        if k["outstanding"] != k["resident"] or k["locks_held"] or k["locks_taken"] != k["locks_released"]:
            raise SoakFailure(f"kernel counters unbalanced: {k}")
        if m["rtmr_shared_acquired"] != m["rtmr_shared_released"] \
                or m["rtmr_exclusive_acquired"] != m["rtmr_exclusive_released"]:
            raise SoakFailure(f"module RTMR lock unbalanced: {m}")
        end_fds, end_rss = _fds(pid), _rss(pid)
        if end_fds > base_fds:
            raise SoakFailure(f"the daemon holds {end_fds} descriptors, {base_fds} after warm-up")
        if end_rss - base_rss > rss_budget:
            raise SoakFailure(f"RSS grew by {(end_rss - base_rss) >> 20} MiB (budget {rss_budget >> 20} MiB)")
        counts = harness.check(state_dir, confirmed, live=harness._settle(device, state_dir))
        if check_preload_stat and (not preload_saw or any(s != "exists 1" for s in preload_saw)):
            raise SoakFailure(f"under LD_PRELOAD the device node did not exist for a client: {preload_saw[:3]}")
        if check_malformed_logged:
            logged = [line for line in device.stderr_text().splitlines() if "bad message" in line]
            # each malformed message gives a line, at most 10 per 10 s (the rate limit) and a few spare
            if not logged or len(logged) > stats["malformed"] or len(logged) > 11 * (elapsed // 10 + 2):
                raise SoakFailure(f"{len(logged)} log lines for {stats['malformed']} malformed messages")
        result = {"seconds": round(elapsed, 1), "fds": [base_fds, end_fds], "rss_growth_kib": (end_rss - base_rss) >> 10,
                  "confirmed_extends": len(confirmed), "reports": m["reports"], **stats, **counts}
        if check_sigterm:
            holder = subprocess.Popen([sys.executable, "-c", "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR);"
                                       " print('open', flush=True); time.sleep(60)", device.path],
                                      stdout=subprocess.PIPE, env=env, preexec_fn=die_with_us)
            try:
                holder.stdout.readline()
                t = time.monotonic()
                device.proc.send_signal(signal.SIGTERM)
                try:
                    device.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
                took = time.monotonic() - t
                result["sigterm_seconds"] = round(took, 2)
                if took > 2.0 or _is_mounted(str(device.mount)):
                    raise SoakFailure(f"SIGTERM with a client holding the device open took {took:.1f} s")
            finally:
                holder.kill()
                holder.communicate(timeout=10)
        return result
    except Exception:
        if stuck:  # the watchdog killed a hung daemon: that, not the step it broke, is the failure
            raise SoakFailure(stuck[0]) from None
        raise
    finally:
        done.set()
        for kind, p in procs:
            with harness._suppress():
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
            p.stdout.close()
        device.stop()
        shutil.rmtree(workdir, ignore_errors=True)
