"""`tdxmodel serve` as a daemon: one TD for many concurrent clients, clean shutdown, crash recovery,
permissions, bad input."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from tdxmodel import abi, profiles
from tdxmodel.pytest_plugin import ServedDevice, _is_mounted

pytestmark = pytest.mark.fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)
RDLEN = abi.TDX_REPORTDATA_LEN


def serve_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "tdxmodel", "serve", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def report_over(path):
    fd = os.open(path, os.O_RDWR)
    try:
        req = bytearray(abi.TDX_REPORT_REQ_LEN)
        fcntl.ioctl(fd, abi.TDX_CMD_GET_REPORT0, req)
        return bytes(req[64:])
    finally:
        os.close(fd)


def test_sigterm_unmounts_and_removes_bind_and_socket(tmp_path):
    bind = tmp_path / "dev" / "tdx_guest"
    bind.parent.mkdir()
    d = ServedDevice("v6.2", bind=str(bind)).start()
    try:
        assert _is_mounted(str(d.mount)) and _is_mounted(str(bind)) and os.path.exists(d.socket)
        # the bound node is the device: the selftest's check works on it
        report = report_over(str(bind))
        assert len(report) == abi.TDX_REPORT_LEN
        proc = d.proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not _is_mounted(str(d.mount))
        assert not _is_mounted(str(bind))
        assert not os.path.exists(bind)  # we created it, so we remove it
        assert not os.path.exists(d.socket)
    finally:
        d.stop()


HOLDER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
print("open", flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("backend", ["core", "reference"])
def test_sigterm_while_clients_hold_the_device_open_stops_promptly(tmp_path, backend):
    """A client that keeps the FUSE device open (and one that keeps the socket open) does not hold
    the daemon up: SIGTERM ends it within seconds, with the mount, the bind and the socket gone."""
    from tdxmodel.transport import protocol
    bind = tmp_path / "tdx_guest"
    d = ServedDevice("v6.2", bind=str(bind), backend=backend).start()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(bind)], stdout=subprocess.PIPE,
                              text=True)
    client = None
    try:
        assert holder.stdout.readline().strip() == "open"
        client = protocol.Client(d.socket, os.O_RDWR)
        assert d.counters()["open_files"] == 2
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(5) == 0  # a functional bound (the daemon aims at 2 s), not a benchmark
        assert not _is_mounted(str(d.mount)) and not _is_mounted(str(bind))
        assert not os.path.exists(bind) and not os.path.exists(d.socket)
        assert holder.poll() is None  # the client is still there, its fd now dead
    finally:
        if client is not None:
            client.close()
        holder.kill()
        holder.wait(15)
        holder.stdout.close()
        d.stop()


def test_restart_after_a_crash_recovers_the_stale_mount():
    first = ServedDevice("v6.2").start()
    mount = str(first.mount)
    second = None
    try:
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(15)
        with pytest.raises(OSError) as e:
            os.listdir(mount)
        assert e.value.errno == errno.ENOTCONN  # what a dead FUSE daemon leaves
        second = ServedDevice("v6.2", mount=mount).start()
        assert "stale mount" in second.stderr_text()
        assert len(report_over(second.path)) == abi.TDX_REPORT_LEN
    finally:
        if second is not None:
            second.stop()
        if _is_mounted(mount):
            subprocess.run(["umount", "-l", mount], timeout=10)
        first.stop()


def test_second_daemon_on_a_live_mount_is_refused():
    with ServedDevice("v6.2") as d:
        r = serve_cli("--driver", "v6.2", "--mount", str(d.mount), "--state", str(d.state))
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and "already served" in r.stderr
        assert len(report_over(d.path)) == abi.TDX_REPORT_LEN  # untouched


def test_root_only_by_default_and_widened_by_mode():
    with ServedDevice("v6.2") as d:
        assert stat.S_IMODE(os.stat(d.path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
        assert os.stat(d.path).st_uid == 0
    with ServedDevice("v6.2", mode=0o666) as d:
        assert stat.S_IMODE(os.stat(d.path).st_mode) == 0o666
        assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o666


@pytest.mark.parametrize("args, message", [
    (["--driver", "v5", "--mount", "/tmp/x"], "invalid choice"),
    (["--driver", "v6.2"], "required"),
    (["--driver", "v6.2", "--mount", "/tmp/x", "--mode", "999"], "octal"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    r = serve_cli(*args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr
    assert "Traceback" not in r.stderr


def test_non_empty_mount_point_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    r = serve_cli("--driver", "v6.2", "--mount", str(tmp_path), "--state", str(tmp_path / "s"))
    assert r.returncode == 2 and "not empty" in r.stderr and r.stderr.count("\n") == 1


KILLED_CLIENT = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
cmd, size = int(sys.argv[2]), int(sys.argv[3])
req = bytearray(size)
while True:
    fcntl.ioctl(fd, cmd, req)
"""


@pytest.mark.parametrize("driver", ["v6.16", "v4-2022-04"])
def test_clients_killed_mid_call_harm_nothing(driver):
    with ServedDevice(driver) as d:
        report = profiles.get(driver).report
        cmd, size = report.value, report.request_len
        clients = [subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, d.path, str(cmd), str(size)])
                   for _ in range(4)]
        try:
            time.sleep(0.8)
        finally:
            for c in clients:
                c.kill()
            for c in clients:
                c.wait(15)
        deadline = time.monotonic() + 10
        while d.counters()["open_files"] and time.monotonic() < deadline:
            time.sleep(0.05)
        c = d.counters()
        assert c["open_files"] == 0
        assert c["kernel"]["outstanding"] == c["kernel"]["resident"]
        assert c["kernel"]["locks_held"] == 0
        assert c["module"]["rtmr_shared_acquired"] == c["module"]["rtmr_shared_released"]
        assert d.proc.poll() is None


EXTENDER = r"""
import os, sys
path, tag, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for k in range(n):
    fd = os.open(path, os.O_WRONLY)
    assert os.write(fd, bytes([tag, k]) * 24) == 48
    os.close(fd)
"""

REPORTER = r"""
import fcntl, os, sys
path, n, cmd, size, tdr, rd, rtmr0 = sys.argv[1], *map(int, sys.argv[2:])
fd = os.open(path, os.O_RDWR | os.O_SYNC)
seen = []
for k in range(n):
    req = bytearray(size)
    req[:64] = os.urandom(64)
    fcntl.ioctl(fd, cmd, req)
    assert req[tdr + rd:tdr + rd + 64] == req[:64]
    seen.append(bytes(req[tdr + rtmr0:tdr + rtmr0 + 4 * 48]).hex())
os.close(fd)
print("\n".join(seen))
"""
REPORTER_ARGS = [str(v) for v in (abi.TDX_CMD_GET_REPORT0, abi.TDX_REPORT_REQ_LEN,
                                   abi.TDX_REPORT_REQ_OFF_TDREPORT, abi.TDR_OFF_REPORTDATA,
                                   abi.TDR_OFF_RTMR0)]


def test_concurrent_clients_lose_nothing():
    """Four processes extend one RTMR each (6.16 measurement files) while four others take reports
    through FUSE and the preload library: every extend lands (the chains are exact), every report is
    well-formed and shows each RTMR at some point of its chain."""
    n_ext, n_rep = 8, 25
    with ServedDevice("v6.16") as d:
        initial = [d.rtmr(i) for i in range(4)]
        extenders = [subprocess.Popen([sys.executable, "-c", EXTENDER,
                                       str(d.control(f"measurements/rtmr{i}:sha384")), str(i), str(n_ext)])
                     for i in range(4)]
        reporters = [subprocess.Popen([sys.executable, "-c", REPORTER, d.path, str(n_rep), *REPORTER_ARGS],
                                      stdout=subprocess.PIPE, text=True) for _ in range(2)]
        reporters += [subprocess.Popen([sys.executable, "-c", REPORTER, d.device_node, str(n_rep),
                                        *REPORTER_ARGS],
                                       stdout=subprocess.PIPE, text=True, env=d.preload_env())
                      for _ in range(2)]
        for p in extenders:
            assert p.wait(60) == 0
        outputs = [p.communicate(timeout=60)[0] for p in reporters]
        assert all(p.returncode == 0 for p in reporters)
        chains = []
        for i in range(4):
            chain = [initial[i]]
            for k in range(n_ext):
                chain.append(hashlib.sha384(chain[-1] + bytes([i, k]) * 24).digest())
            chains.append(chain)
            assert d.rtmr(i) == chain[-1]
        for out in outputs:
            lines = out.split()
            assert len(lines) == n_rep
            for line in lines:
                rtmrs = bytes.fromhex(line)
                for i in range(4):
                    assert rtmrs[48 * i:48 * i + 48] in chains[i]
        from tdxmodel.state import StateStore
        assert list(StateStore(str(d.state)).load().rtmr) == [c[-1] for c in chains]
        c = d.counters()["kernel"]
        assert c["outstanding"] == c["resident"] and c["locks_held"] == 0


def test_malformed_socket_messages_end_only_that_connection():
    import socket
    from tdxmodel.transport import protocol
    with ServedDevice("v6.2") as d:
        device, windows = protocol.hello(d.socket)
        assert device == abi.DEVICE_PATHS["v6.2"]
        # the report command's window, and those of the commands the emulated VFS answers first
        vfs = {v.cmd: v.window for v in profiles.get("v6.2").vfs_commands if v.window}
        assert windows == {abi.TDX_CMD_GET_REPORT0: abi.TDX_REPORT_REQ_LEN, **vfs}
        assert vfs[abi.FIONBIO] == 4 and vfs[abi.FIDEDUPERANGE] == abi.TDX_PAGE_SIZE
        for junk in (b"\x00" * 12, protocol.HEADER.pack(protocol.MAGIC, protocol.VERSION, 9, 0),
                     protocol.HEADER.pack(protocol.MAGIC, protocol.VERSION, protocol.OP_IOCTL, 1 << 30),
                     protocol.HEADER.pack(protocol.MAGIC, protocol.VERSION, protocol.OP_IOCTL, protocol.IOCTL.size)
                     + protocol.IOCTL.pack(0, 0, 0, 0, 0, 0)):  # an ioctl before any open
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(d.socket)
                s.sendall(junk)
                assert s.recv(1) == b""  # the daemon hung up on this client only
        client = protocol.Client(d.socket, os.O_RDWR)
        try:
            req = bytearray(abi.TDX_REPORT_REQ_LEN)
            req[:RDLEN] = bytes(range(RDLEN))
            assert client.ioctl(abi.TDX_CMD_GET_REPORT0, req) == 0
            assert req[64 + abi.TDR_OFF_REPORTDATA:][:RDLEN] == bytes(range(RDLEN))
            wrong = 0xC0A00401  # a number third-party clients shipped (ref §1)
            assert client.ioctl(wrong, bytearray(abi.ioc_size(wrong))) == -errno.ENOTTY
        finally:
            client.close()
        assert d.proc.poll() is None


def _send_junk(path, junk):
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(junk)
        assert s.recv(1) == b""  # hung up; the daemon logs before it closes


def test_malformed_socket_messages_are_logged_rate_limited():
    """Each malformed message gives one line on the daemon's stderr naming the client and what was
    wrong (QEMU's LOG_GUEST_ERROR); a flood is cut to a few lines, and the daemon keeps serving."""
    from tdxmodel.transport import protocol
    with ServedDevice("v6.2") as d:
        def logged():
            return [line for line in d.stderr_text().splitlines() if "bad message" in line]

        assert logged() == []
        _send_junk(d.socket, b"\x01" * 12)
        lines = logged()
        assert len(lines) == 1
        assert lines[0].startswith("tdxmodel serve: ") and f"client pid {os.getpid()}" in lines[0]
        assert "magic 0x01010101" in lines[0]
        hdr = protocol.HEADER.pack
        unknown = protocol.OP_FLUSH + 1   # the first op number the protocol does not have
        for junk, what in [(hdr(protocol.MAGIC, protocol.VERSION, unknown, 0), f"unknown op {unknown}"),
                           (hdr(protocol.MAGIC, protocol.VERSION + 7, protocol.OP_HELLO, 0),
                            f"protocol version {protocol.VERSION + 7}"),
                           (hdr(protocol.MAGIC, protocol.VERSION, protocol.OP_IOCTL, 1 << 30),
                            f"payload of {1 << 30} bytes"),
                           (hdr(protocol.MAGIC, protocol.VERSION, protocol.OP_IOCTL, protocol.IOCTL.size)
                            + protocol.IOCTL.pack(0, 0, 0, 0, 0, 0), "IOCTL before OPEN")]:
            before = len(logged())
            _send_junk(d.socket, junk)
            new = logged()[before:]
            assert len(new) == 1 and what in new[0], (what, new)
        for _ in range(300):
            _send_junk(d.socket, hdr(protocol.MAGIC, protocol.VERSION, unknown, 0))
        lines = logged()
        assert 10 <= len(lines) < 60  # 305 bad messages; at most 10 lines per 10 s
        assert "further ones are counted, not logged" in lines[9]
        client = protocol.Client(d.socket, os.O_RDWR)
        try:
            req = bytearray(abi.TDX_REPORT_REQ_LEN)
            req[:RDLEN] = bytes(range(RDLEN))
            assert client.ioctl(abi.TDX_CMD_GET_REPORT0, req) == 0
            assert req[64 + abi.TDR_OFF_REPORTDATA:][:RDLEN] == bytes(range(RDLEN))
        finally:
            client.close()
        assert d.proc.poll() is None


def test_an_ioctl_window_the_client_could_not_have_written_is_refused():
    """The IOCTL message's window, readable and writable byte counts must nest (writable <= readable
    <= window): a client asking to be written more bytes than it could read is hung up on and logged
    (found by the mutation run: no test sent one)."""
    from tdxmodel.transport import protocol
    with ServedDevice("v6.2") as d:
        client = protocol.Client(d.socket, os.O_RDWR)
        try:
            req = protocol.IOCTL.pack(abi.TDX_CMD_GET_REPORT0, 0x10000, 64, 32, 64, 0) + bytes(32)
            client.sock.sendall(protocol.HEADER.pack(protocol.MAGIC, protocol.VERSION, protocol.OP_IOCTL,
                                                     len(req)) + req)
            assert client.sock.recv(1) == b""  # hung up, no reply
        finally:
            client.sock.close()
        lines = [line for line in d.stderr_text().splitlines() if "bad message" in line]
        assert len(lines) == 1 and "IOCTL window 64, readable 32, writable 64" in lines[0], lines
        assert d.proc.poll() is None


@pytest.mark.parametrize("backend", ["core", "reference"])
def test_signal_while_waiting_for_mr_lock_gives_eintr(tmp_path, backend):
    """6.16 takes mr_lock interruptibly: a client that waits for it and gets a signal returns EINTR;
    once the lock is free the same call succeeds (ref §2.5 step 1)."""
    client = tmp_path / "interrupted"
    subprocess.run(["cc", "-O2", "-I", os.path.join(ROOT, "csrc"), "-o", str(client),
                    os.path.join(ROOT, "tests", "clients", "interrupted.c")], check=True, timeout=120)
    with ServedDevice("v6.16", backend=backend) as d:
        d.control("debug/mr_lock").write_text("1\n")
        p = subprocess.Popen([str(client), d.path], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "waiting"
            time.sleep(0.3)
            assert p.poll() is None  # blocked on the lock
            p.send_signal(signal.SIGUSR1)
            out, _ = p.communicate(timeout=15)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        assert out.split() == ["-1", str(errno.EINTR)]
        d.control("debug/mr_lock").write_text("0\n")
        r = subprocess.run([str(client), d.path], capture_output=True, text=True, timeout=30)
        assert r.stdout.split()[1:] == ["0", "0"]
        c = d.counters()["kernel"]
        assert c["locks_held"] == 0 and c["locks_taken"] == c["locks_released"]


@pytest.mark.parametrize("backend", ["core", "reference"])
def test_sigterm_while_a_client_waits_for_mr_lock_stops_promptly(tmp_path, backend):
    """A client blocked in its ioctl on the mr_lock that debug/mr_lock holds does not hold the
    daemon up either: the lock is given back at stop, the call ends, the daemon exits."""
    client = tmp_path / "interrupted"
    subprocess.run(["cc", "-O2", "-I", os.path.join(ROOT, "csrc"), "-o", str(client),
                    os.path.join(ROOT, "tests", "clients", "interrupted.c")], check=True, timeout=120)
    d = ServedDevice("v6.16", backend=backend).start()
    p = None
    try:
        d.control("debug/mr_lock").write_text("1\n")
        p = subprocess.Popen([str(client), d.path], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "waiting"
        time.sleep(0.3)
        assert p.poll() is None  # blocked on the lock
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(5) == 0  # a functional bound, not a benchmark
        assert not _is_mounted(str(d.mount))
        out, _ = p.communicate(timeout=15)
        assert len(out.split()) == 2  # the call returned (how depends on the race with the stop)
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)
        if p is not None:
            p.stdout.close()
        d.stop()


def test_bind_over_an_existing_node_keeps_it(tmp_path):
    target = tmp_path / "tdx_guest"
    target.write_bytes(b"real node stand-in")
    with ServedDevice("v6.2", bind=str(target)) as d:
        assert _is_mounted(str(target))
        assert len(report_over(str(target))) == abi.TDX_REPORT_LEN
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(15) == 0
    assert not _is_mounted(str(target))
    assert target.read_bytes() == b"real node stand-in"  # not ours: left as it was


def test_unusable_state_or_socket_exit_2_and_leave_no_mount(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text("{not json")
    mount = tmp_path / "mnt"
    r = serve_cli("--driver", "v6.2", "--mount", str(mount), "--state", str(state))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not _is_mounted(str(mount))
    r = serve_cli("--driver", "v6.2", "--mount", str(mount), "--state", str(tmp_path / "s2"),
                  "--socket", str(tmp_path / "no" / "such" / "dir" / "sock"))
    assert r.returncode == 2 and "cannot listen" in r.stderr and r.stderr.count("\n") == 1
    assert not _is_mounted(str(mount))


# ------------------------------------------------------------------ one order of extends, one truth
def _write_measurement(d, index, data):
    fd = os.open(d.control(f"measurements/rtmr{index}:sha384"), os.O_WRONLY)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def _served_rtmrs(d):
    report = report_over(d.path)
    return [report[abi.TDR_OFF_RTMR0 + 48 * i:abi.TDR_OFF_RTMR0 + 48 * (i + 1)] for i in range(4)]


@pytest.mark.parametrize("backend", ["core", "reference"])
def test_cli_extend_then_a_measurement_write_keep_one_truth(backend):
    """`tdxmodel extend` and, right after (before any poll), a write of the same RTMR's file: the
    write lands on top of the extend, and the served TD, state.json and the log agree."""
    from tdxmodel import eventlog
    from tdxmodel.state import StateStore, replay_events
    with ServedDevice("v6.16", backend=backend) as d:
        store = StateStore(str(d.state))
        for k in range(5):
            store.extend(1, bytes([k, 1]) * 24)
            assert _write_measurement(d, 1, bytes([k, 2]) * 24) == 48
            assert _served_rtmrs(d) == list(store.load().rtmr) == replay_events(store.events(), eventlog.replay(store.boot_events()))
        assert [e["data"][:4] for e in store.events()] == [f"{k:02x}{j:02x}" for k in range(5) for j in (1, 2)]


@pytest.mark.parametrize("backend", ["core", "reference"])
def test_a_measurement_read_shows_a_cli_extend_at_once(backend):
    """A read of an RTMR file after `tdxmodel extend` shows the new value: the daemon catches up from
    the log before answering, and the tsm-mr cache is refreshed, not left stale until an ioctl."""
    from tdxmodel.state import StateStore
    with ServedDevice("v6.16", backend=backend) as d:
        store = StateStore(str(d.state))
        for k in range(3):
            value = store.extend(3, bytes([k + 1]) * 48)
            assert d.control("measurements/rtmr3:sha384").read_bytes() == value
        time.sleep(0.5)  # and after the poll too
        assert d.control("measurements/rtmr3:sha384").read_bytes() == value


@pytest.mark.parametrize("backend", ["core", "reference"])
def test_a_failed_extend_changes_nothing_anywhere(backend):
    """With state.json corrupt, a measurement-file write fails with EIO and neither the served TD nor
    the log moves; once the state is good again the next write lands on the agreed value."""
    from tdxmodel import eventlog
    from tdxmodel.state import StateStore, replay_events
    with ServedDevice("v6.16", backend=backend) as d:
        store = StateStore(str(d.state))
        _write_measurement(d, 0, b"\x01" * 48)
        good = (d.state / "state.json").read_bytes()
        before, events = _served_rtmrs(d), store.events()
        (d.state / "state.json").write_text("{ corrupt")
        with pytest.raises(OSError) as e:
            _write_measurement(d, 0, b"\x02" * 48)
        assert e.value.errno == errno.EIO
        assert _served_rtmrs(d) == before
        assert d.control("measurements/rtmr0:sha384").read_bytes() == before[0]
        (d.state / "state.json").write_bytes(good)
        assert store.events() == events
        assert _write_measurement(d, 0, b"\x03" * 48) == 48
        assert _served_rtmrs(d) == list(store.load().rtmr) == replay_events(store.events(), eventlog.replay(store.boot_events()))
        assert store.load().rtmr[0] == hashlib.sha384(before[0] + b"\x03" * 48).digest()
        assert d.proc.poll() is None


EXTEND_AND_SAY = r"""
import os, sys
path, tag = sys.argv[1], int(sys.argv[2])
for k in range(10 ** 6):
    data = bytes([tag, k % 256, k // 256 % 256]) * 16
    fd = os.open(path, os.O_WRONLY)
    n = os.write(fd, data)
    os.close(fd)
    if n == 48:
        print(data.hex(), flush=True)
"""


def test_a_daemon_killed_under_load_loses_no_extend(tmp_path):
    """SIGKILL the daemon while clients extend through the measurement files: every write that
    returned 48 is in the log, and the log replays to the state (README "The state directory").
    The kill comes once every writer has had a write return (waited for, not a fixed sleep: under
    load the first writes can take seconds), so the check always has extends to look for."""
    import random
    import select
    from tdxmodel import eventlog
    from tdxmodel.state import StateStore, replay_events
    d = ServedDevice("v6.16", state=str(tmp_path / "state")).start()
    writers = []
    try:
        writers = [subprocess.Popen([sys.executable, "-c", EXTEND_AND_SAY,
                                     str(d.control(f"measurements/rtmr{i}:sha384")), str(i)],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                   for i in range(3)]
        returned = {w.stdout.fileno(): b"" for w in writers}
        deadline = time.monotonic() + 60
        while any(b"\n" not in out for out in returned.values()) and time.monotonic() < deadline:
            ready, _, _ = select.select([fd for fd, out in returned.items() if b"\n" not in out], [], [], 0.5)
            for fd in ready:
                returned[fd] += os.read(fd, 65536)
        assert all(b"\n" in out for out in returned.values()), "a writer's first extend never returned"
        time.sleep(random.uniform(0, 0.3))  # the kill lands at some point of the writers' next writes
        os.killpg(d.proc.pid, signal.SIGKILL)
        d.proc.wait(15)
        for w in writers:
            fd = w.stdout.fileno()
            out, _ = w.communicate(timeout=30)
            returned[fd] += out
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait(10)
        d.stop()
        if _is_mounted(str(d.mount)):
            subprocess.run(["umount", "-l", str(d.mount)], timeout=10)
    store = StateStore(str(d.state))
    logged = {e["data"] for e in store.events()}
    said = {line.decode() for out in returned.values() for line in out.split()}
    assert said and said <= logged
    assert replay_events(store.events(), eventlog.replay(store.boot_events())) == list(store.load().rtmr)


@pytest.mark.parametrize("content", ["[" * 100000 + "]" * 100000,
                                     '{"format": 1, "generation": 1, "config": {"seed": 18446744073709551616}}'],
                         ids=["deep-json", "huge-seed"])
def test_serve_on_a_corrupt_state_exits_2_naming_the_file(tmp_path, content):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(content)
    r = serve_cli("--driver", "v6.2", "--mount", str(tmp_path / "mnt"), "--state", str(state))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-300:]
    assert r.stderr.startswith(f"tdxmodel: {state / 'state.json'}: ")
    assert not _is_mounted(str(tmp_path / "mnt"))


# ------------------------------------------------------------------ extends through an ioctl (intel-downstream)
def _extend_ioctl(path, index, data):
    """TDX_CMD_EXTEND_RTMR on the served node: 0 or -errno."""
    cmd = profiles.get("intel-downstream").command("extend_rtmr")
    req = bytearray(cmd.request_len)
    req[cmd.field("data").offset:cmd.field("data").end] = data
    req[cmd.field("index").offset] = index
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.ioctl(fd, cmd.value, req)
        return 0
    except OSError as e:
        return -e.errno
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", ["core", "reference"])
def test_downstream_ioctl_extends_are_persisted_in_one_order(backend):
    """intel-downstream's EXTEND_RTMR (Command.extends_rtmr) served with a state directory is recorded
    as 6.16's measurement-file writes are: interleaved with `tdxmodel extend`, the served TD,
    state.json and the log agree, in one order; a refused extend (index < 2) records nothing."""
    from tdxmodel import eventlog
    from tdxmodel.state import StateStore, replay_events
    with ServedDevice("intel-downstream", backend=backend) as d:
        store = StateStore(str(d.state))
        for k in range(4):
            store.extend(2, bytes([k, 1]) * 24)
            assert _extend_ioctl(d.path, 2 + k % 2, bytes([k, 2]) * 24) == 0
            assert _served_rtmrs(d) == list(store.load().rtmr) == replay_events(
                store.events(), eventlog.replay(store.boot_events()))
        assert [(e["rtmr"], e["data"][:4]) for e in store.events()] == [
            (r, f"{k:02x}{j:02x}") for k in range(4) for r, j in ((2, 1), (2 + k % 2, 2))]
        events = store.events()
        assert _extend_ioctl(d.path, 1, b"\x07" * 48) == -errno.EINVAL   # RTMR 0/1 refused (quote.md §2.6)
        assert store.events() == events
        assert d.counters()["fast_path"] is False   # extends are committed under the state lock


@pytest.mark.parametrize("backend", ["core", "reference"])
def test_downstream_ioctl_extend_with_a_corrupt_state_changes_nothing(backend):
    from tdxmodel import eventlog
    from tdxmodel.state import StateStore, replay_events
    with ServedDevice("intel-downstream", backend=backend) as d:
        store = StateStore(str(d.state))
        assert _extend_ioctl(d.path, 3, b"\x01" * 48) == 0
        good = (d.state / "state.json").read_bytes()
        before, events = _served_rtmrs(d), store.events()
        (d.state / "state.json").write_text("{ corrupt")
        assert _extend_ioctl(d.path, 3, b"\x02" * 48) == -errno.EIO
        assert _served_rtmrs(d) == before
        (d.state / "state.json").write_bytes(good)
        assert store.events() == events
        assert _extend_ioctl(d.path, 3, b"\x03" * 48) == 0
        assert _served_rtmrs(d) == list(store.load().rtmr) == replay_events(
            store.events(), eventlog.replay(store.boot_events()))
        assert store.load().rtmr[3] == hashlib.sha384(before[3] + b"\x03" * 48).digest()
        assert d.proc.poll() is None
