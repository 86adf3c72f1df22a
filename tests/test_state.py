"""The state directory (tdxmodel.state.StateStore): where it lives, what a new one holds, persistence,
TOML seeding, one-line errors for bad state, atomic writes, and no lost extend under concurrency."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tdxmodel import abi
from tdxmodel.config import ModuleConfig
from tdxmodel.report import verify
from tdxmodel.state import StateError, StateStore, default_directory, replay_events

ROOT = pathlib.Path(__file__).resolve().parents[1]
ZERO48 = bytes(abi.TDX_SHA384_LEN)


def chain(*data, start=ZERO48):
    value = start
    for d in data:
        value = hashlib.sha384(value + d).digest()
    return value


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
                 "mrconfigid", "mrowner", "mrownerconfig", "rtmr", "servtd_hash"):
        assert getattr(cfg, name) == getattr(defaults, name), name
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
    assert store.extend(2, d1) == chain(d1)
    assert store.extend(2, d2) == chain(d1, d2)
    assert store.extend(0, d3) == chain(d3)
    cfg = StateStore(store.directory).load()
    assert cfg.rtmr == (chain(d3), ZERO48, chain(d1, d2), ZERO48)
    assert store.generation() == g0 + 3
    assert [(e["rtmr"], e["data"]) for e in store.events()] == [(2, d1.hex()), (2, d2.hex()), (0, d3.hex())]
    assert replay_events(store.events()) == list(cfg.rtmr)
    # A report made afterwards carries the RTMRs.
    raw = store.module().report()
    assert raw[abi.TDR_OFF_RTMR0 + 2 * 48:abi.TDR_OFF_RTMR0 + 3 * 48] == chain(d1, d2)


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
    assert sorted(p.name for p in store.directory.iterdir()) == ["events.jsonl", "lock", "state.json"]


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
])
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
        replay_events(events)
    with pytest.raises(StateError, match="record 1 is malformed"):
        replay_events(store.events() + [{"rtmr": 7, "data": "00" * 48, "value": ""}])


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
    replayed = replay_events(events)
    assert store.load().rtmr[2] == replayed[2]
    assert store.generation() == 1 + workers * count
    # And the state file is intact JSON after all that.
    json.loads(store.state_path.read_text())
