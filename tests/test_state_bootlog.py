"""A new state directory's boot event log (boot-eventlog.json beside state.json): the RTMR defaults are
its replay; a TOML config can give the events; the file is read as carefully as the others."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tdxmodel import abi_eventlog as tcg
from tdxmodel import eventlog
from tdxmodel.eventlog import Event
from tdxmodel.state import StateError, StateStore, replay_events

Z48 = bytes(48)

TOML_EVENTS = """
seed = 5
[[eventlog.event]]
rtmr = 0
type = "EV_EFI_PLATFORM_FIRMWARE_BLOB2"
content = "my firmware"
[[eventlog.event]]
rtmr = 2
type = "EV_IPL"
content = "console=ttyS0"
"""


def test_toml_events_are_the_boot_log_and_give_the_rtmrs(tmp_path, backend):
    toml = tmp_path / "td.toml"
    toml.write_text(TOML_EVENTS)
    s = StateStore(tmp_path / "st", config_path=toml, backend=backend)
    cfg = s.load()
    fw, cmd = hashlib.sha384(b"my firmware").digest(), hashlib.sha384(b"console=ttyS0").digest()
    assert s.boot_events() == [Event(1, tcg.EV_EFI_PLATFORM_FIRMWARE_BLOB2, fw, b"my firmware"),
                               Event(3, tcg.EV_IPL, cmd, b"console=ttyS0")]
    assert cfg.rtmr == (hashlib.sha384(Z48 + fw).digest(), Z48, hashlib.sha384(Z48 + cmd).digest(), Z48)
    assert cfg.seed == 5
    # a report carries them, and extends continue from them
    s.extend(2, b"\x09" * 48)
    assert replay_events(s.events(), eventlog.replay(s.boot_events())) == list(s.load().rtmr)


def test_toml_with_rtmr_gets_an_empty_boot_log_and_both_is_an_error(tmp_path, backend):
    toml = tmp_path / "td.toml"
    toml.write_text('[td]\nrtmr = ["{0}", "{1}", "{1}", "{1}"]\n'.replace("{0}", "aa" * 48).replace("{1}", "00" * 48))
    s = StateStore(tmp_path / "a", config_path=toml, backend=backend)
    assert s.load().rtmr[0] == b"\xaa" * 48 and s.boot_events() == []
    toml.write_text(toml.read_text() + TOML_EVENTS.replace("seed = 5\n", ""))
    with pytest.raises(StateError, match="not both"):
        StateStore(tmp_path / "b", config_path=toml, backend=backend).load()
    assert not (tmp_path / "b" / "state.json").exists()


def test_bad_event_tables_are_one_line_errors_naming_the_file(tmp_path, backend):
    toml = tmp_path / "td.toml"
    toml.write_text('[[eventlog.event]]\nrtmr = 7\ncontent = "x"\n')
    with pytest.raises(StateError, match=r"td.toml.*0\.\.3"):
        StateStore(tmp_path / "st", config_path=toml, backend=backend).load()


def test_reinit_rewrites_the_boot_log(tmp_path, backend):
    s = StateStore(tmp_path / "st", backend=backend)
    assert s.boot_events() == eventlog.default_boot_events()
    toml = tmp_path / "td.toml"
    toml.write_text(TOML_EVENTS)
    s.init_from_toml(toml, force=True)
    assert len(s.boot_events()) == 2 and list(s.load().rtmr) == eventlog.replay(s.boot_events())


def test_a_corrupt_or_planted_boot_log_is_refused(tmp_path, backend):
    s = StateStore(tmp_path / "st", backend=backend)
    s.load()
    path = s.directory / eventlog.BOOT_LOG_FILE
    path.write_text("{not json")
    with pytest.raises(StateError, match="boot-eventlog.json.*corrupt"):
        s.boot_events()
    doc = {"format": 1, "events": [{"mr_index": 0, "event_type": 13, "digest": "00" * 48}]}
    path.write_text(json.dumps(doc))
    with pytest.raises(StateError, match="MRTD"):
        s.boot_events()
    secret = tmp_path / "elsewhere.json"
    secret.write_text(eventlog.boot_log_bytes(eventlog.default_boot_events()).decode())
    path.unlink()
    os.symlink(secret, path)
    with pytest.raises(StateError, match="symbolic link"):
        s.boot_events()


def test_a_boot_log_left_without_its_state_is_replaced(tmp_path, backend):
    """A writer killed after the boot log and before state.json (the commit) left a boot log of a
    state that was never made: the next first use writes its own."""
    d = tmp_path / "st"
    d.mkdir()
    (d / eventlog.BOOT_LOG_FILE).write_bytes(eventlog.boot_log_bytes([Event(4, tcg.EV_IPL, b"\x01" * 48)]))
    s = StateStore(d, backend=backend)
    assert list(s.load().rtmr) == eventlog.replay(eventlog.default_boot_events())
    assert s.boot_events() == eventlog.default_boot_events()
