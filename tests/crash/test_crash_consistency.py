"""The CI-sized crash-consistency run (tests/crash/harness.py): a few dozen SIGKILLs of the state
directory's writers at random points (seeded by the run's fuzz seed), each followed by the check
that state.json, events.jsonl and the live TD agree, that no extend reported successful is lost,
that the log replays and that no temp file is left. Long form: ``python -m tests.crash``."""

from __future__ import annotations

import random

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.fuse]


def test_killed_measurement_file_writers_lose_nothing(fuzz_seed):
    from tests.crash import harness
    r = harness.kill_under_daemon(6, random.Random(fuzz_seed), kill_daemon=False, cli_extends=False)
    assert r["kills"] >= 12 and r["confirmed"] > 0


def test_killed_extend_writers_lose_nothing(tmp_path, fuzz_seed):
    from tests.crash import harness
    r = harness.kill_extenders(tmp_path / "state", 24, random.Random(fuzz_seed))
    assert r["kills"] == 24 and r["temp_files"] == 0


def test_daemon_killed_under_load_loses_nothing(fuzz_seed):
    from tests.crash import harness
    r = harness.kill_under_daemon(4, random.Random(fuzz_seed), kill_daemon=True, cli_extends=False)
    assert r["kills"] >= 12
def test_extend_and_measurement_writes_killed_agree_with_the_live_td(fuzz_seed):
    from tests.crash import harness
    r = harness.kill_under_daemon(4, random.Random(fuzz_seed), kill_daemon=False, cli_extends=True)
    assert r["kills"] >= 8


