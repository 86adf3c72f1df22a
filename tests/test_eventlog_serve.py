"""The daemon serves the CCEL table and log (acpi/tables/CCEL, acpi/tables/data/CCEL under --mount;
--bind-acpi places them, undone on exit); `tdxmodel eventlog` prints the log and its replay."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from tdxmodel import eventlog
from tdxmodel.pytest_plugin import ServedDevice, _is_mounted
from tdxmodel.state import StateStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def tdxmodel(*args):
    return subprocess.run([sys.executable, "-m", "tdxmodel", *args], capture_output=True, text=True,
                          env=ENV, timeout=120)


def mountinfo():
    with open("/proc/self/mountinfo") as f:
        return f.read()


@pytest.mark.fuse
@pytest.mark.parametrize("driver", ["v6.2", "v6.16"])
def test_daemon_serves_ccel_table_and_log_of_the_state(backend, driver):
    with ServedDevice(driver, backend=backend.BACKEND_NAME) as d:
        table_path = d.mount / "acpi/tables/CCEL"
        data_path = d.mount / "acpi/tables/data/CCEL"
        st = os.stat(table_path)
        assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_size == 56  # root-only, as sysfs
        table = table_path.read_bytes()
        fields = eventlog.parse_ccel(table)
        data = data_path.read_bytes()
        assert len(data) == fields["laml"] == os.stat(data_path).st_size
        _spec, events = eventlog.parse_log(data)
        expected = StateStore(str(d.state)).boot_events()
        assert events == expected == d.eventlog()
        assert eventlog.replay(events) == list(StateStore(str(d.state)).load().rtmr)
        # partial reads at an offset are the same bytes
        fd = os.open(data_path, os.O_RDONLY)
        try:
            assert os.pread(fd, 100, 30) == data[30:130]
        finally:
            os.close(fd)
        with pytest.raises(PermissionError):
            open(table_path, "wb")


@pytest.mark.fuse
def test_bind_acpi_makes_missing_paths_in_an_overlay_and_undoes_it(tmp_path):
    """--bind-acpi DIR where DIR does not exist: the files appear through an overlay on the deepest
    existing directory, nothing is written to that directory's file system, and SIGTERM undoes it."""
    base = tmp_path / "host"
    base.mkdir()
    (base / "keep").write_text("host file")
    target = base / "firmware" / "acpi" / "tables"
    before = mountinfo()
    d = ServedDevice("v6.16", extra_args=("--bind-acpi", str(target))).start()
    try:
        table = (target / "CCEL").read_bytes()
        assert eventlog.parse_ccel(table)["cc_type"] == 2
        assert (target / "data" / "CCEL").read_bytes() == (d.mount / "acpi/tables/data/CCEL").read_bytes()
        assert (base / "keep").read_text() == "host file"  # the overlaid directory still shows its own
        assert _is_mounted(str(base))
    finally:
        rc = d.stop()
    assert rc == 0
    assert sorted(os.listdir(base)) == ["keep"]  # nothing was created in the real directory
    assert mountinfo().count(str(tmp_path)) == before.count(str(tmp_path)) == 0


@pytest.mark.fuse
def test_bind_acpi_default_path_in_a_private_namespace(tmp_path):
    """The default DIR /sys/firmware/acpi/tables, in an `unshare -m` namespace (so the host's sysfs
    view is not touched): CCEL appears beside the platform's own tables, which stay readable."""
    script = f"""
set -e
mount --make-rprivate /
{sys.executable} -m tdxmodel serve --driver v6.2 --mount {tmp_path}/mnt --state {tmp_path}/st --bind-acpi > {tmp_path}/out &
pid=$!
for i in $(seq 100); do grep -q ready {tmp_path}/out 2>/dev/null && break; sleep 0.1; done
head -c 4 /sys/firmware/acpi/tables/CCEL; echo
ls /sys/firmware/acpi/tables > {tmp_path}/ls
kill -TERM $pid; wait $pid
test ! -e /sys/firmware/acpi/tables/CCEL || head -c 4 /sys/firmware/acpi/tables/CCEL | grep -qv TDXM
"""
    host_had = sorted(os.listdir("/sys/firmware/acpi/tables")) if os.path.isdir("/sys/firmware/acpi/tables") else []
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "CCEL"
    listed = (tmp_path / "ls").read_text().split()
    assert "CCEL" in listed and set(host_had) <= set(listed)


def tamper_boot_log(store, mr_index):
    """Change the digest of the last boot event of ``mr_index`` in the state's boot log file."""
    path = store.directory / eventlog.BOOT_LOG_FILE
    doc = json.loads(path.read_text())
    ev = [e for e in doc["events"] if e["mr_index"] == mr_index][-1]
    ev["digest"] = "77" * 48
    path.write_text(json.dumps(doc))


def test_eventlog_command_replays_boot_and_extend_logs(tmp_path, backend):
    state = str(tmp_path / "st")
    assert tdxmodel("extend", "--state", state, "--rtmr", "2", "--data", "cd" * 48).returncode == 0
    r = tdxmodel("eventlog", "--json", "--state", state)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    store = StateStore(state, backend=backend)
    assert doc["match"] and doc["live"] == [v.hex() for v in store.load().rtmr]
    assert len(doc["extends"]) == 1 and doc["extends"][0]["rtmr"] == 2
    boot = store.boot_events()
    assert doc["boot_replay"] == [v.hex() for v in eventlog.replay(boot)]
    assert [e["digest"] for e in doc["boot_events"]] == [e.digest.hex() for e in boot]
    text = tdxmodel("eventlog", "--state", state)
    assert text.returncode == 0 and text.stdout.count("(matches)") == 4
    # a boot log that no longer explains RTMR1 (its kernel event's digest changed): exit 1 naming it
    tamper_boot_log(store, mr_index=2)
    bad = tdxmodel("eventlog", "--state", state)
    assert bad.returncode == 1 and "(MISMATCH)" in bad.stdout and "rtmr1" in bad.stderr
    assert tdxmodel("eventlog", "--state", str(tmp_path / "f" / "x"), "--config", "/nonexistent").returncode == 2
