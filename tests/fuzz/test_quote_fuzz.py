"""The CI-sized quote-bytes fuzz run (tests/fuzz/quote_fuzz.py): mutated real quotes through
parse_quote and verify, a fixed seed and this run's seed. Long runs: ``python -m tests.fuzz.quote_fuzz``."""

from __future__ import annotations

import pytest

from tests.fuzz import quote_fuzz

#: wall-clock bound for one seeded run: CPU is ~10 s, a shared 2-core machine can stretch it 5x
LONG_TIMEOUT = 300

FIXED_SEED = 20260301


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
@pytest.mark.parametrize("which", ["fixed", "this run"])
def test_mutated_quotes_parse_or_fail_cleanly_and_never_verify_when_signed_bytes_change(which, fuzz_seed):
    seed = FIXED_SEED if which == "fixed" else fuzz_seed
    bad = quote_fuzz.campaign(seed, 6000)
    assert not bad, f"seed {seed}: {bad[:3]}"
