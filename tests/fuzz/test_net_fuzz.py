"""The CI-sized network fuzz run (tests/fuzz/net_fuzz.py): random raw HTTP requests at the PCCS
server, a fixed seed and this run's seed. Long runs: ``python -m tests.fuzz.net_fuzz``."""

from __future__ import annotations

import pytest

from tests.fuzz import net_fuzz

#: wall-clock bound for one seeded run: CPU is ~10 s, a shared 2-core machine can stretch it 5x
LONG_TIMEOUT = 300

FIXED_SEED = 20260301


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
@pytest.mark.parametrize("which", ["fixed", "this run"])
def test_pccs_answers_every_request_and_keeps_serving(which, fuzz_seed):
    seed = FIXED_SEED if which == "fixed" else fuzz_seed
    bad = net_fuzz.campaign(seed, 400)
    assert not bad, f"seed {seed}: {bad[:3]}"
