"""The state directory (tdxmodel.state.StateStore): where it lives, what a new one holds, persistence,
TOML seeding, one-line errors for bad state, atomic writes, and no lost extend under concurrency."""

import hashlib
import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from tdxmodel import abi
from tdxmodel.config import ModuleConfig
from tdxmodel.report import verify
from tdxmodel import eventlog
from tdxmodel.state import StateError, StateStore, default_directory, replay_events

ROOT = pathlib.Path(__file__).resolve().parents[1]
ZERO48 = bytes(abi.TDX_SHA384_LEN)


def chain(*data, start=ZERO48):
    value = start
    for d in data:
        value = hashlib.sha384(value + d).digest()
    return value


def initial(s):
    """The RTMRs a state started from: its boot event log's replay (README "Boot event log")."""
    return eventlog.replay(s.boot_events())


@pytest.fixture
def store(tmp_path, backend):
    return StateStore(tmp_path / "state", backend=backend)


@pytest.fixture
def no_state_env(monkeypatch):
    for var in ("TDXMODEL_STATE", "TDXMODEL_CONFIG", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)


# ------------------------------------------------------------------ where
def test_directory_resolution_order(monkeypatch, tmp_path, no_state_env):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_directory() == tmp_path / "home" / ".local" / "state" / "tdxmodel"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert StateStore().directory == tmp_path / "xdg" / "tdxmodel"
    monkeypatch.setenv("TDXMODEL_STATE", str(tmp_path / "explicit-env"))
    assert StateStore().directory == tmp_path / "explicit-env"
    assert StateStore(tmp_path / "arg").directory == tmp_path / "arg"


# ------------------------------------------------------------------ first use
def test_first_use_creates_the_documented_defaults_with_a_random_persistent_key(tmp_path, backend, no_state_env):
    a = StateStore(tmp_path / "a", backend=backend)
    cfg = a.load()
    defaults = ModuleConfig()
    for name in ("version", "cpusvn", "tee_tcb_svn", "mrseam", "mrsignerseam", "attributes", "xfam", "mrtd",
                 "mrconfigid", "mrowner", "mrownerconfig", "servtd_hash"):
        assert getattr(cfg, name) == getattr(defaults, name), name
    # RTMR0..2 are the default boot's measurements (firmware, kernel, command line and initrd), so
    # they are not zero: they are what the boot event log beside state.json replays to; RTMR3 is zero.
    assert a.boot_events() == eventlog.default_boot_events()
    assert list(cfg.rtmr) == eventlog.replay(eventlog.default_boot_events())
    assert all(r != ZERO48 for r in cfg.rtmr[:3]) and cfg.rtmr[3] == ZERO48
    assert cfg.seed is not None
    # The key persists: a second store on the same directory is the same platform ...
    again = StateStore(tmp_path / "a", backend=backend)
    assert again.load().resolved_mac_key() == cfg.resolved_mac_key()
    assert verify(a.module().report(b"r"), again.module())[0]
    # ... and another directory is another platform, with another random key.
    b = StateStore(tmp_path / "b", backend=backend)
    assert b.load().resolved_mac_key() != cfg.resolved_mac_key()
    ok, part, reason = verify(a.module().report(), b.module())
    assert (ok, part) == (False, "MAC") and "another platform" in reason
    assert (tmp_path / "a" / "state.json").stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------ writes
def test_extend_goes_through_the_module_and_persists(store):
    g0 = store.generation()
    d1, d2, d3 = b"\x01" * 48, b"\x02" * 48, b"\x03" * 48
    i0 = initial(store)
    assert store.extend(2, d1) == chain(d1, start=i0[2])
    assert store.extend(2, d2) == chain(d1, d2, start=i0[2])
    assert store.extend(0, d3) == chain(d3, start=i0[0])
    cfg = StateStore(store.directory).load()
    assert cfg.rtmr == (chain(d3, start=i0[0]), i0[1], chain(d1, d2, start=i0[2]), ZERO48)
    assert store.generation() == g0 + 3
    assert [(e["rtmr"], e["data"]) for e in store.events()] == [(2, d1.hex()), (2, d2.hex()), (0, d3.hex())]
    assert replay_events(store.events(), i0) == list(cfg.rtmr)
    # A report made afterwards carries the RTMRs.
    raw = store.module().report()
    assert raw[abi.TDR_OFF_RTMR0 + 2 * 48:abi.TDR_OFF_RTMR0 + 3 * 48] == chain(d1, d2, start=i0[2])


def test_extend_errors_are_the_modules_and_change_nothing(store):
    g = store.generation()
    with pytest.raises(ValueError, match="48"):
        store.extend(1, b"\x00" * 47)
    with pytest.raises(OSError) as exc:  # tdxmodel.errors.OperandInvalid, operand RDX (ref §4.6)
        store.extend(4, b"\x00" * 48)
    assert exc.value.status == abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX
    assert store.generation() == g and store.events() == []


def test_update_is_a_persistent_read_modify_write(store):
    g = store.generation()

    def set_owner(cfg):
        cfg.mrowner = b"\x42" * 48
        return cfg

    assert store.update(set_owner).mrowner == b"\x42" * 48
    assert StateStore(store.directory).load().mrowner == b"\x42" * 48
    assert store.generation() == g + 1
    with pytest.raises(TypeError, match="ModuleConfig"):
        store.update(lambda cfg: None)
    assert store.generation() == g + 1


def test_writes_leave_no_temp_files(store):
    for i in range(3):
        store.extend(i, bytes([i]) * 48)
    assert sorted(p.name for p in store.directory.iterdir()) == ["boot-eventlog.json", "events.jsonl", "lock", "state.json"]


# ------------------------------------------------------------------ TOML seeding
TOML = """
version = "1.5"
seed = 77
[td]
mrconfigid = "{cfgid}"
xfam = "0x2e7"
"""


def test_init_from_toml(tmp_path, backend):
    toml = tmp_path / "td.toml"
    toml.write_text(TOML.format(cfgid="c0" * 48))
    s = StateStore(tmp_path / "st", backend=backend)
    cfg = s.init_from_toml(toml)
    assert (cfg.mrconfigid, cfg.xfam, cfg.seed) == (b"\xc0" * 48, 0x2E7, 77)
    assert s.load().mac_key == ModuleConfig(seed=77).resolved_mac_key()
    s.extend(3, b"\x01" * 48)
    with pytest.raises(StateError, match="already exists"):
        s.init_from_toml(toml)
    g = s.generation()
    s.init_from_toml(toml, force=True)
    assert s.load().rtmr[3] == ZERO48 and s.events() == []
    assert s.generation() > g  # a poller sees the replacement


def test_toml_without_a_seed_gets_a_random_one(tmp_path, backend):
    toml = tmp_path / "td.toml"
    toml.write_text('mrowner = "{}"\n'.format("11" * 48))
    keys = {StateStore(tmp_path / d, config_path=toml, backend=backend).load().resolved_mac_key()
            for d in ("x", "y")}
    assert len(keys) == 2


def test_config_env_seeds_a_new_state_and_a_different_config_is_refused(tmp_path, monkeypatch, backend):
    toml = tmp_path / "td.toml"
    toml.write_text(TOML.format(cfgid="c1" * 48))
    monkeypatch.setenv("TDXMODEL_CONFIG", str(toml))
    s = StateStore(tmp_path / "st", backend=backend)
    assert s.load().mrconfigid == b"\xc1" * 48
    assert StateStore(tmp_path / "st", backend=backend).load().mrconfigid == b"\xc1" * 48  # same file: fine
    toml.write_text(TOML.format(cfgid="c2" * 48))
    with pytest.raises(StateError, match=r"state\.json: this state was made from .*td\.toml"):
        StateStore(tmp_path / "st", backend=backend).load()
    monkeypatch.delenv("TDXMODEL_CONFIG")
    assert StateStore(tmp_path / "st", backend=backend).load().mrconfigid == b"\xc1" * 48


def test_a_bad_toml_is_a_one_line_error_naming_it(tmp_path, backend):
    toml = tmp_path / "bad.toml"
    toml.write_text('mrtd = "abcd"\n')
    with pytest.raises(StateError, match=r"bad\.toml.*mrtd must be 48 bytes") as exc:
        StateStore(tmp_path / "st", config_path=toml, backend=backend).load()
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "st" / "state.json").exists()


# ------------------------------------------------------------------ bad state
@pytest.mark.parametrize("content", [
    b"garbage",
    b"\xff\xfe not utf-8",
    b"",
    b'{"format": 99, "generation": 1, "config": {}}',
    b'{"format": 1, "generation": "x", "config": {}}',
    b'{"format": 1, "generation": 3, "config": {"mrtd": "abcd"}}',
    b'{"format": 1, "generation": 3, "config": {"no_such_field": 1}}',
    b"[1, 2]",
    b"[" * 100000 + b"]" * 100000,  # RecursionError in json
    b'{"format": 1, "generation": 1, "config": {"seed": 18446744073709551616}}',  # seed >= 2**64
    b'{"format": 1, "generation": 1, "config": {"seed": true}}',
    b'{"format": 1, "generation": 1, "config": {"rtmr": 5}}',
    b'{"format": 1, "generation": 1, "config": {"xfam": "zz"}}',
    b'{"format": 1, "generation": 1, "config": {"mrtd": {"a": ' + b"[" * 50000 + b"]" * 50000 + b"}}}",
], ids=lambda content: content[:24].decode("latin-1"))
def test_corrupt_state_is_a_one_line_error_naming_the_file(store, content):
    store.directory.mkdir(parents=True)
    store.state_path.write_bytes(content)
    for call in (store.load, store.generation, lambda: store.extend(0, bytes(48))):
        with pytest.raises(StateError) as exc:
            call()
        msg = str(exc.value)
        assert msg.startswith(str(store.state_path) + ": ") and "\n" not in msg, msg
    assert store.state_path.read_bytes() == content  # never silently overwritten


def test_unreadable_state_is_a_one_line_error(store):
    store.state_path.mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(StateError, match=r"state\.json: cannot read state"):
        store.load()


def test_a_file_where_the_directory_should_be(tmp_path, backend):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(StateError, match="plain"):
        StateStore(tmp_path / "plain", backend=backend).load()


def test_a_corrupt_extend_log_is_named(store):
    store.extend(0, bytes(48))
    with open(store.log_path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(StateError, match=r"events\.jsonl: line 2"):
        store.events()


def test_replay_detects_a_log_that_does_not_chain(store):
    store.extend(1, b"\x01" * 48)
    events = store.events()
    events[0]["data"] = (b"\x02" * 48).hex()
    with pytest.raises(StateError, match="record 0"):
        replay_events(events, initial(store))
    with pytest.raises(StateError, match="record 1 is malformed"):
        replay_events(store.events() + [{"rtmr": 7, "data": "00" * 48, "value": ""}], initial(store))


# ------------------------------------------------------------------ concurrency
WORKER = """
import sys
from tdxmodel.state import StateStore
directory, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = StateStore(directory)
for k in range(count):
    store.extend(2, bytes([worker, k]) * 24)
"""


def test_concurrent_processes_lose_no_extend(tmp_path, backend):
    """4 processes x 10 extends of the same RTMR at once. Extends do not commute, so the check is
    the log: each extend's data and result are written under the lock, so replaying the log in order
    must reproduce every logged value and the final RTMR, and every extend must be in it."""
    workers, count = 4, 10
    directory = tmp_path / "shared-state"
    StateStore(directory, backend=backend).load()  # created once, so every worker shares one key
    env = dict(os.environ, PYTHONPATH=str(ROOT), TDXMODEL_BACKEND=backend.BACKEND_NAME)
    env.pop("TDXMODEL_CONFIG", None)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(directory), str(w), str(count)],
                              env=env, stderr=subprocess.PIPE) for w in range(workers)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    store = StateStore(directory, backend=backend)
    events = store.events()
    assert sorted(e["data"] for e in events) == sorted(
        (bytes([w, k]) * 24).hex() for w in range(workers) for k in range(count))
    assert [e["generation"] for e in events] == list(range(2, 2 + workers * count))
    replayed = replay_events(events, initial(store))
    assert store.load().rtmr[2] == replayed[2]
    assert store.generation() == 1 + workers * count
    # And the state file is intact JSON after all that.
    json.loads(store.state_path.read_text())


# ------------------------------------------------------------------ TEE_TCB_SVN default
@pytest.mark.parametrize("version, major", [("1.5", abi.TDX_MODULE_MAJOR_1_5), ("1.0", abi.TDX_MODULE_MAJOR_1_0)])
def test_default_tee_tcb_svn_names_the_module_version(make_module, version, major):
    """Verifiers name the module TDX_%02X of TEE_TCB_SVN[1] (quote.md §5.5 step 4): a 1.5 platform's
    default must not claim a 1.0 module (real 1.5 quotes carry 01 there, quote.md §5.7)."""
    assert ModuleConfig(version=version).tee_tcb_svn[abi.TDX_TEE_TCB_SVN_MODULE_MAJOR_BYTE] == major
    raw = make_module(version=version).report()
    assert raw[abi.TDR_OFF_TEE_TCB_SVN + abi.TDX_TEE_TCB_SVN_MODULE_MAJOR_BYTE] == major
    # a value given explicitly is kept as given, on either version
    given = bytes(range(16))
    assert ModuleConfig(version=version, tee_tcb_svn=given).tee_tcb_svn == given


# ------------------------------------------------------------------ hostile configuration files
@pytest.mark.parametrize("kind", ["fifo", "zero-device", "directory", "huge"])
def test_config_reads_only_bounded_regular_files(tmp_path, backend, kind):
    """`--config /dev/zero` ran out of memory and a FIFO hung: a config is a regular file of bounded
    size, anything else is a one-line StateError naming it."""
    path = tmp_path / "cfg.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero-device":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # a private /dev/zero
    elif kind == "directory":
        path.mkdir()
    else:
        with open(path, "wb") as f:
            f.truncate(64 << 20)
    with pytest.raises(StateError) as exc:
        StateStore(tmp_path / "st", config_path=path, backend=backend).load()
    msg = str(exc.value)
    assert msg.startswith(str(path)) and "\n" not in msg, msg
    assert not (tmp_path / "st" / "state.json").exists()


def test_deeply_nested_toml_is_a_one_line_error(tmp_path, backend):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(StateError, match=r"deep\.toml"):
        StateStore(tmp_path / "st", config_path=path, backend=backend).load()


# ------------------------------------------------------------------ killed writers
_HOOKED = ("write", "fsync", "replace", "rename", "unlink", "ftruncate", "truncate")


def _killed_extend(store, index, data, kill_at, torn):
    """Run store.extend in a forked child that dies (os._exit, as SIGKILL: no cleanup runs) at its
    `kill_at`-th file-system call among _HOOKED; with `torn`, a write it dies in is half done.
    Returns True if the child finished (made fewer calls)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            calls = [0]

            def hook(name, real):
                def call(*args, **kwargs):
                    calls[0] += 1
                    if calls[0] == kill_at:
                        if name == "write" and torn:
                            real(args[0], bytes(args[1])[:len(args[1]) // 2])
                        os._exit(9)
                    return real(*args, **kwargs)
                return call

            for name in _HOOKED:
                setattr(os, name, hook(name, getattr(os, name)))
            store.extend(index, data)
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the child failed with {code}"
    return code == 0


def _assert_consistent(directory, backend):
    s = StateStore(directory, backend=backend)
    events = s.events()
    assert replay_events(events, initial(s)) == list(s.load().rtmr)
    if events:
        assert s.generation() >= events[-1]["generation"]
    return events


@pytest.mark.parametrize("torn", [False, True], ids=["killed", "killed-mid-write"])
def test_a_writer_killed_anywhere_loses_or_half_writes_nothing(tmp_path, backend, torn):
    """Kill `extend` at every file-system call it makes in turn (in the middle of a write too): the
    log always replays to the state's RTMRs, an extend that returned is in the log, a torn record is
    never read, and the next writer leaves no temp file behind."""
    directory = tmp_path / "st"
    store = StateStore(directory, backend=backend)
    store.load()
    kill_at, finished, k = 1, 0, 0
    while finished < 2:  # past the last call: one clean run, then one more to see it repaired
        k += 1
        data = bytes([k % 256, kill_at]) * 24
        before = len(_assert_consistent(directory, backend))
        done = _killed_extend(store, k % 4, data, kill_at, torn)
        events = _assert_consistent(directory, backend)
        assert len(events) in (before, before + 1)
        if done:
            finished += 1
            assert events[-1]["data"] == data.hex()
        kill_at += 1
        assert kill_at < 100
    summary = StateStore(directory, backend=backend).recover()
    assert summary == {"torn_bytes": 0, "stale_records": 0, "rolled_forward": 0, "temp_files": 0}
    assert sorted(p.name for p in directory.iterdir()) == ["boot-eventlog.json", "events.jsonl", "lock", "state.json"]
    doc = json.loads((directory / "state.json").read_text())
    assert doc["generation"] == _assert_consistent(directory, backend)[-1]["generation"]


def test_recover_completes_what_a_killed_writer_left(store):
    """The three things a killed writer leaves, made by hand: a record newer than state.json, a torn
    last line and a temp file. Readers see the record and not the torn line; recover() fixes all."""
    store.extend(1, b"\x01" * 48)
    old_state = store.state_path.read_bytes()
    value = store.extend(1, b"\x02" * 48)
    store.state_path.write_bytes(old_state)  # killed after its log line, before its state.json
    torn = b'{"generation": 99, "rtmr": 0, "da'
    with open(store.log_path, "ab") as f:
        f.write(torn)  # killed in the middle of its line
    (store.directory / ".state.json.dead0001.tmp").write_bytes(b"{half")
    assert store.load().rtmr[1] == value  # readers roll forward without the lock
    assert len(store.events()) == 2
    assert store.recover() == {"torn_bytes": len(torn), "stale_records": 0, "rolled_forward": 1,
                               "temp_files": 1}
    assert json.loads(store.state_path.read_text())["config"]["rtmr"][1] == value.hex()
    assert store.log_path.read_bytes().endswith(b"}\n")
    assert sorted(p.name for p in store.directory.iterdir()) == ["boot-eventlog.json", "events.jsonl", "lock", "state.json"]
    assert replay_events(store.events(), initial(store)) == list(store.load().rtmr)


def test_reinit_killed_before_the_old_log_went_leaves_no_stale_record(tmp_path, backend):
    toml = tmp_path / "td.toml"
    toml.write_text("seed = 3\n")
    s = StateStore(tmp_path / "st", backend=backend)
    s.extend(0, b"\x05" * 48)
    old_log = s.log_path.read_bytes()
    s.init_from_toml(toml, force=True)
    s.log_path.write_bytes(old_log)  # killed between the new state.json and removing the old log
    assert s.events() == [] and s.load().rtmr[0] == initial(s)[0]
    s.extend(0, b"\x06" * 48)
    assert [e["data"] for e in s.events()] == [(b"\x06" * 48).hex()]
    assert replay_events(s.events(), initial(s)) == list(s.load().rtmr)


# ------------------------------------------------------------------ planted links
def test_a_symlinked_state_directory_is_refused(tmp_path, backend):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    s = StateStore(tmp_path / "link", backend=backend)
    for call in (s.load, lambda: s.extend(0, bytes(48)), s.recover):
        with pytest.raises(StateError, match=r"link: the state directory is a symbolic link"):
            call()
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("name", ["events.jsonl", "state.json", "lock"])
@pytest.mark.parametrize("target_exists", [True, False], ids=["to-a-file", "dangling"])
def test_planted_symlinks_are_never_followed(tmp_path, backend, name, target_exists):
    """Another user who can write the directory plants NAME -> a file of root's: the store refuses
    it (one line naming it) and neither appends to, replaces nor creates the target."""
    s = StateStore(tmp_path / "st", backend=backend)
    s.extend(0, b"\x01" * 48)
    target = tmp_path / "victim"
    if target_exists:
        target.write_bytes(b"root's file\n")
    (s.directory / name).unlink()
    (s.directory / name).symlink_to(target)
    for call in (s.load, lambda: s.extend(0, b"\x02" * 48), s.recover):
        try:
            call()
        except StateError as e:
            assert str(e).startswith(str(s.directory / name)) and "symbolic link" in str(e), e
        else:
            assert name == "lock" and call == s.load  # a reader takes no lock
    assert os.path.islink(s.directory / name)
    if target_exists:
        assert target.read_bytes() == b"root's file\n"
    else:
        assert not os.path.lexists(target)


def test_a_hard_linked_log_is_not_appended_to(tmp_path, backend):
    s = StateStore(tmp_path / "st", backend=backend)
    s.extend(0, b"\x01" * 48)
    victim = tmp_path / "victim"
    victim.write_bytes(s.log_path.read_bytes())
    s.log_path.unlink()
    os.link(victim, s.log_path)
    with pytest.raises(StateError, match=r"events\.jsonl: .*hard link"):
        s.extend(0, b"\x02" * 48)
    assert victim.read_bytes().count(b"\n") == 1


def test_an_extend_whose_state_cannot_be_written_changes_nothing(tmp_path, backend):
    """A state.json that cannot be written (here: a file-size limit below its size) fails the extend
    with one line naming it, before the log line: log, state and temp files as they were."""
    store = StateStore(tmp_path / "st", backend=backend)
    store.extend(0, b"\x11" * 48)
    before, log_before = store.state_path.read_bytes(), store.log_path.read_bytes()
    pid = os.fork()
    if pid == 0:
        try:
            import resource
            import signal
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, resource.RLIM_INFINITY))
            try:
                store.extend(2, b"\x77" * 48)
            except StateError as e:
                os._exit(3 if str(e).startswith(str(store.state_path)) and "\n" not in str(e) else 4)
            os._exit(0)
        except BaseException:
            os._exit(5)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    assert store.state_path.read_bytes() == before and store.log_path.read_bytes() == log_before
    assert sorted(p.name for p in store.directory.iterdir()) == ["boot-eventlog.json", "events.jsonl", "lock", "state.json"]
    assert replay_events(store.events(), initial(store)) == list(store.load().rtmr)


def test_replay_events_prefixes_and_unverified_records():
    """replay_events(prefixes=True) gives the RTMRs after every prefix (the stress oracles' replay);
    verify=False takes records without a logged value, which the log itself never may."""
    import hashlib
    data = [bytes([k]) * 48 for k in range(3)]
    events = [{"rtmr": 1, "data": data[0].hex()}, {"rtmr": 3, "data": data[1].hex()},
              {"rtmr": 1, "data": data[2].hex()}]
    zero = bytes(48)
    states = replay_events(events, verify=False, prefixes=True)
    r1 = hashlib.sha384(zero + data[0]).digest()
    r3 = hashlib.sha384(zero + data[1]).digest()
    assert states == [(zero,) * 4, (zero, r1, zero, zero), (zero, r1, zero, r3),
                      (zero, hashlib.sha384(r1 + data[2]).digest(), zero, r3)]
    assert replay_events(events, verify=False) == list(states[-1])
    with pytest.raises(StateError, match="record 0 is malformed"):
        replay_events(events)   # a log record must carry its value
