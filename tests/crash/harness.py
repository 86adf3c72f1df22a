"""Crash consistency: SIGKILL the writers of a state directory at random points, then check it.

Three writers are killed (docs/CONTRACT.md "State directory"):

* ``tdxmodel extend`` (the CLI), and a looping ``StateStore.extend`` writer that says each extend
  it finished (more kills land inside a write than CLI start-up allows);
* measurement-file writers of a served 6.16 TD (``tdxmodel serve``), mixed with ``tdxmodel extend``
  on the same state directory while the daemon serves it;
* the daemon itself, SIGKILLed under that load and restarted on the same state directory.

After every round, ``check(state_dir, confirmed)`` asserts: ``state.json`` parses, the extend log
replays (``tdxmodel.state.replay_events``) onto exactly the RTMRs the state gives (``load()``, which
applies records a killed writer logged but did not snapshot), every extend a writer reported
successful is in the log, the log has no record twice, and once a writer has run after the kill,
``state.json`` itself is current and no temp file is left. With a live daemon, its TD (the measurement files and a TDREPORT)
shows the same RTMRs.

``python -m tests.crash --kills N`` runs the long form (progress on stderr, a summary at the end).
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from tdxmodel import abi
from tdxmodel.state import STATE_FILE, StateStore, replay_events

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
ZERO = bytes(abi.TDX_SHA384_LEN)

# Extends RTMR[i] with tagged data forever, printing "i hex" after each one has returned.
LOOP_WRITER = r"""
import sys
from tdxmodel.state import StateStore
store, tag = StateStore(sys.argv[1]), int(sys.argv[2])
k = 0
while True:
    data = tag.to_bytes(8, "big") + k.to_bytes(8, "big") + bytes(32)
    store.extend(k % 4, data)
    print(k % 4, data.hex(), flush=True)
    k += 1
"""

# Writes a 6.16 measurement file forever, printing "i hex" after each write returned 48.
MEASUREMENT_WRITER = r"""
import os, sys
mdir, tag = sys.argv[1], int(sys.argv[2])
k = 0
while True:
    i = (tag + k) % 4
    data = tag.to_bytes(8, "big") + k.to_bytes(8, "big") + b"m" * 32
    fd = os.open(f"{mdir}/rtmr{i}:sha384", os.O_WRONLY)
    try:
        n = os.write(fd, data)
    finally:
        os.close(fd)
    if n == 48:
        print(i, data.hex(), flush=True)
    k += 1
"""


class Inconsistent(AssertionError):
    pass


def temp_files(state_dir: pathlib.Path) -> List[str]:
    return sorted(p.name for p in state_dir.iterdir() if p.name.endswith(".tmp"))


def read_state(state_dir: pathlib.Path) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    doc = json.loads((state_dir / STATE_FILE).read_text())
    return doc, StateStore(str(state_dir)).events()


def check(state_dir: pathlib.Path, confirmed: Set[Tuple[int, str]], initial: Optional[List[bytes]] = None,
          live: Optional[List[bytes]] = None, just_killed: bool = False) -> Dict[str, int]:
    """Raise Inconsistent naming the first broken promise; return a few counts. ``just_killed``: no
    writer has run since the last kill, so a dead writer's temp file and a snapshot behind the log
    may remain."""
    state_dir = pathlib.Path(state_dir)
    try:
        doc, events = read_state(state_dir)
        # a reader sees state.json with the log's newer records applied (a writer killed between
        # its log line and the snapshot); once a writer has run since, the snapshot itself is current
        stored = list(StateStore(str(state_dir)).load().rtmr)
    except (OSError, ValueError) as e:
        raise Inconsistent(f"state unreadable after a kill: {e}") from None
    snapshot = [bytes.fromhex(h) for h in doc["config"]["rtmr"]]
    if not just_killed and snapshot != stored:
        raise Inconsistent("state.json is behind the log after a writer has run")
    try:
        if initial is None:  # the RTMRs the state started from: its boot log's replay
            from tdxmodel import eventlog
            initial = eventlog.replay(StateStore(str(state_dir)).boot_events())
        replayed = replay_events(events, initial)
    except ValueError as e:
        raise Inconsistent(f"the log does not replay: {e}") from None
    if replayed != stored:
        bad = [i for i in range(4) if replayed[i] != stored[i]]
        raise Inconsistent(f"state.json RTMR{bad} differ from the replayed log ({len(events)} records, "
                           f"generation {doc['generation']})")
    logged = [(ev["rtmr"], ev["data"]) for ev in events]
    if len(set(logged)) != len(logged):
        raise Inconsistent("a record is in the log twice")
    lost = confirmed - set(logged)
    if lost:
        raise Inconsistent(f"{len(lost)} extends reported successful are not in the log, e.g. {sorted(lost)[0]}")
    if live is not None and live != stored:
        bad = [i for i in range(4) if live[i] != stored[i]]
        raise Inconsistent(f"the live TD's RTMR{bad} differ from state.json")
    left = temp_files(state_dir)
    if left and not just_killed:
        raise Inconsistent(f"temp files left: {left[:3]}{' ...' if len(left) > 3 else ''} ({len(left)})")
    return {"records": len(events), "temp_files": len(left)}


def _confirmed_lines(text: str) -> Set[Tuple[int, str]]:
    out = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[1]) == 96:  # a torn last line (killed mid-print) is not a claim
            out.add((int(parts[0]), parts[1]))
    return out


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, PermissionError))


def _spawn(args: List[str], env=None) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env or ENV,
                            start_new_session=True)


def _reap(proc: subprocess.Popen) -> str:
    out = proc.communicate(timeout=30)[0]
    return out.decode(errors="replace") if out else ""


# ---------------------------------------------------------------------------- scenario 1
def kill_extenders(state_dir: pathlib.Path, kills: int, rng: random.Random, progress=None) -> Dict[str, int]:
    """SIGKILL `tdxmodel extend` and the looping writer ``kills`` times in all (two at a time, so
    kills also land while another writer waits for the lock); check after every kill."""
    state_dir = pathlib.Path(state_dir)
    StateStore(str(state_dir)).load()  # make the state: its RTMRs start at zero
    initial = [bytes.fromhex(h) for h in json.loads((state_dir / STATE_FILE).read_text())["config"]["rtmr"]]
    confirmed: Set[Tuple[int, str]] = set()
    done = survived = 0
    tag = rng.getrandbits(20) << 20
    while done < kills:
        procs = []
        for j in range(2):
            tag += 1
            if rng.random() < 0.5:
                i, data = rng.randrange(4), tag.to_bytes(8, "big") + rng.randbytes(40)
                p = _spawn([sys.executable, "-m", "tdxmodel", "extend", "--rtmr", str(i), "--data", data.hex(),
                            "--state", str(state_dir)])
                procs.append(("cli", p, (i, data.hex()), rng.uniform(0.05, 0.6)))
            else:
                p = _spawn([sys.executable, "-c", LOOP_WRITER, str(state_dir), str(tag)])
                procs.append(("loop", p, None, rng.uniform(0.15, 0.8)))
        start = time.monotonic()
        for kind, p, claim, delay in sorted(procs, key=lambda t: t[3]):
            time.sleep(max(0.0, start + delay - time.monotonic()))
            with _suppress():
                os.killpg(p.pid, signal.SIGKILL)
        for kind, p, claim, delay in procs:
            out = _reap(p)
            if kind == "cli":
                if p.returncode == 0:
                    confirmed.add(claim)
                    survived += 1
            else:
                confirmed |= _confirmed_lines(out)
            done += 1
        # a dead writer's temp file may stay until the next writer runs: check both ways
        check(state_dir, confirmed, initial, just_killed=True)
        if progress:
            progress(done, kills)
    StateStore(str(state_dir)).extend(0, b"\xee" * 48)  # one writer after the last kill
    confirmed.add((0, (b"\xee" * 48).hex()))
    counts = check(state_dir, confirmed, initial)
    return {"kills": done, "cli_finished": survived, "confirmed": len(confirmed), **counts}


# ---------------------------------------------------------------------------- scenarios 2 and 3
def _live_rtmrs(device) -> List[bytes]:
    """The served TD's RTMRs through the 6.16 measurement files and through a TDREPORT; they must agree."""
    files = [device.control(f"measurements/rtmr{i}:sha384").read_bytes() for i in range(4)]
    fd = os.open(device.path, os.O_RDWR)
    try:
        req = bytearray(abi.TDX_REPORT_REQ_LEN)
        fcntl.ioctl(fd, abi.TDX_CMD_GET_REPORT0, req)
    finally:
        os.close(fd)
    off = abi.TDX_REPORT_REQ_OFF_TDREPORT + abi.TDR_OFF_RTMR0
    report = [bytes(req[off + 48 * i:off + 48 * i + 48]) for i in range(4)]
    if files != report:
        bad = [i for i in range(4) if files[i] != report[i]]
        raise Inconsistent(f"measurement files and TDREPORT disagree on RTMR{bad}")
    return report


def _settle(device, state_dir: pathlib.Path, timeout: float = 5.0) -> List[bytes]:
    """The live RTMRs once the daemon has caught up with the state directory (its poll interval)."""
    deadline = time.monotonic() + timeout
    while True:
        live = _live_rtmrs(device)
        stored = list(StateStore(str(state_dir)).load().rtmr)
        if live == stored or time.monotonic() > deadline:
            return live
        time.sleep(0.05)


def kill_under_daemon(rounds: int, rng: random.Random, *, kill_daemon: bool, progress=None,
                      cli_extends: bool = True) -> Dict[str, int]:
    """A served 6.16 TD under load: measurement-file writers and (``cli_extends``) `tdxmodel extend`
    on its state directory. Each round SIGKILLs the writers at random points (and, with
    ``kill_daemon``, the daemon, which is then restarted on the same state directory), then checks
    the state, the log and the live TD."""
    from tdxmodel.pytest_plugin import ServedDevice

    state_dir = pathlib.Path(tempfile.mkdtemp(prefix="tdxm-crash-")) / "state"
    device = ServedDevice("v6.16", state=str(state_dir)).start()
    confirmed: Set[Tuple[int, str]] = set()
    kills = 0
    tag = rng.getrandbits(20) << 20
    try:
        for rnd in range(rounds):
            writers = []
            for j in range(2):
                tag += 1
                writers.append(("mfile", _spawn([sys.executable, "-c", MEASUREMENT_WRITER,
                                                 str(device.control("measurements")), str(tag)]), None))
            if cli_extends:
                for j in range(2):
                    tag += 1
                    i, data = rng.randrange(4), tag.to_bytes(8, "big") + rng.randbytes(40)
                    writers.append(("cli", _spawn([sys.executable, "-m", "tdxmodel", "extend", "--rtmr", str(i),
                                                   "--data", data.hex(), "--state", str(state_dir)]),
                                    (i, data.hex())))
            time.sleep(rng.uniform(0.3, 0.9))
            if kill_daemon:
                os.killpg(device.proc.pid, signal.SIGKILL)
                device.proc.wait(15)
                kills += 1
            for kind, p, claim in writers:
                if kind == "mfile" or rng.random() < 0.5:
                    with _suppress():
                        os.killpg(p.pid, signal.SIGKILL)
                        kills += 1
            for kind, p, claim in writers:
                out = _reap(p)
                if kind == "cli" and p.returncode == 0:
                    confirmed.add(claim)
                elif kind == "mfile":
                    confirmed |= _confirmed_lines(out)
            if kill_daemon:
                device.stop()  # the dead daemon's mount is removed; the state directory is ours
                device = ServedDevice("v6.16", state=str(state_dir)).start()
            live = _settle(device, state_dir)
            check(state_dir, confirmed, live=live, just_killed=True)
            if progress:
                progress(rnd + 1, rounds)
        # one more write through the daemon, then no temp file may be left
        data = b"\xdd" * 48
        fd = os.open(device.control("measurements/rtmr1:sha384"), os.O_WRONLY)
        try:
            assert os.write(fd, data) == 48
        finally:
            os.close(fd)
        confirmed.add((1, data.hex()))
        counts = check(state_dir, confirmed, live=_settle(device, state_dir))
        return {"rounds": rounds, "kills": kills, "confirmed": len(confirmed), **counts}
    finally:
        device.stop()
        shutil.rmtree(state_dir.parent, ignore_errors=True)
