"""The short soak (tests/soak/soak.py): the daemon under mixed load for about 20 s, then its open
files, RSS growth, counters, locks and state checked. Long form: ``python benchmarks/soak.py``."""

from __future__ import annotations

import pytest

from tests.soak import soak

pytestmark = [pytest.mark.slow, pytest.mark.fuse]


def test_daemon_under_mixed_load_stays_healthy(fuzz_seed):
    r = soak.run(18, seed=fuzz_seed, check_preload_stat=True, check_sigterm=True,
                 check_malformed_logged=True)
    assert r["killed_clients"] > 0 and r["malformed"] > 0 and r["knob_writes"] > 0
    assert r["reports"] > 0 and r["confirmed_extends"] > 0 and r["cli_extends"] > 0
