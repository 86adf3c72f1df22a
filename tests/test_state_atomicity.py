"""state.json is never seen half-written: a reader looping on it while another process extends
sees only whole states, each newer than the last; a write that fails part-way (the file size limit
hit in the middle of the log line or of the snapshot's temp file) leaves the old state readable and
intact, and no temp file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tdxmodel import eventlog
from tdxmodel.state import STATE_FILE, StateStore, replay_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)

EXTENDS = r"""
import sys
from tdxmodel.state import StateStore
store = StateStore(sys.argv[1])
for k in range(int(sys.argv[2])):
    store.extend(k % 4, bytes([k % 251]) * 48)
"""

# The size limit is set below state.json's size, so the temp file's write fails part-way (EFBIG).
FAILING_WRITE = r"""
import resource, signal, sys
from tdxmodel.state import StateError, StateStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    StateStore(sys.argv[1]).extend(2, b"\x77" * 48)
except StateError as e:
    print(e)
    sys.exit(3)
"""


def test_a_reader_sees_only_whole_states_while_another_process_extends(tmp_path):
    store = StateStore(tmp_path)
    store.load()
    n = 60
    writer = subprocess.Popen([sys.executable, "-c", EXTENDS, str(tmp_path), str(n)], env=ENV)
    path = tmp_path / STATE_FILE
    reads, last = 0, 0
    try:
        while writer.poll() is None or reads == 0:
            doc = json.loads(path.read_bytes())  # a torn file would not parse
            assert doc["format"] == 1 and doc["generation"] >= last
            assert len(doc["config"]["rtmr"]) == 4
            last = doc["generation"]
            reads += 1
    finally:
        writer.wait(60)
    assert writer.returncode == 0 and reads > 1
    final = store.load()
    assert last == store.generation() == n + 1
    assert replay_events(store.events(), eventlog.replay(store.boot_events())) == list(final.rtmr)


def _failing_extend(directory, limit):
    return subprocess.run([sys.executable, "-c", FAILING_WRITE, str(directory), str(limit)],
                          capture_output=True, text=True, env=ENV, timeout=60)


def test_a_log_write_failing_part_way_leaves_the_old_state(tmp_path):
    """The file size limit cuts the extend's log line part-way: the extend fails with one line,
    state.json is byte for byte the old one, no reader counts the torn line, no temp file stays."""
    store = StateStore(tmp_path)
    store.extend(0, b"\x11" * 48)
    path, log = tmp_path / STATE_FILE, tmp_path / "events.jsonl"
    before, events_before = path.read_bytes(), store.events()
    r = _failing_extend(tmp_path, log.stat().st_size + 20)
    assert r.returncode == 3, r.stderr
    assert r.stdout.count("\n") == 1
    assert path.read_bytes() == before
    assert store.events() == events_before
    assert store.load().rtmr[2] == eventlog.replay(store.boot_events())[2]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    store.extend(3, b"\x33" * 48)  # the next writer works, and the log still replays
    assert replay_events(store.events(), eventlog.replay(store.boot_events())) == list(store.load().rtmr)


def test_a_snapshot_write_failing_part_way_leaves_state_json_whole(tmp_path):
    """The limit cuts the state.json snapshot part-way (the log line fits): state.json is never
    torn (the old one stays), and what the state gives agrees with the log either way."""
    store = StateStore(tmp_path)
    store.extend(0, b"\x11" * 48)
    path = tmp_path / STATE_FILE
    before = path.read_bytes()
    r = _failing_extend(tmp_path, len(before) // 2)
    assert r.returncode in (0, 3), r.stderr
    assert path.read_bytes() == before or json.loads(path.read_bytes())["format"] == 1
    assert json.loads(before)["format"] == 1
    logged = [e["data"] for e in store.events()]
    assert ((b"\x77" * 48).hex() in logged) == (r.returncode == 0)
    assert replay_events(store.events(), eventlog.replay(store.boot_events())) == list(store.load().rtmr)
    store.extend(3, b"\x33" * 48)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert replay_events(store.events(), eventlog.replay(store.boot_events())) == list(store.load().rtmr)
