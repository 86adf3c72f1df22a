"""The CI-sized differential fuzz run (tests/fuzz/engine.py): about 1e5 operations, half from a
fixed seed and half from a seed drawn per run (printed in pytest's header; TDXMODEL_FUZZ_SEED
repeats it), on every backend, every observable compared after every operation. On a difference
the failure message is the minimal reproducer. Long campaigns: ``python -m tests.fuzz``."""

from __future__ import annotations

import pytest

from tests.fuzz import engine

#: wall-clock bound for one seeded run: CPU is ~10 s, a shared 2-core machine can stretch it 5x
LONG_TIMEOUT = 300

FIXED_SEED = 20260301
OPS_PER_SEED = 50_000
#: Stream parts left out of the CI run (engine.FEATURES): none may stay here once its fix is in.
LEFT_OUT: tuple = ()


def _check(seed: int) -> None:
    result = engine.campaign(seed, OPS_PER_SEED, without=LEFT_OUT)
    for d in result["differences"]:
        pytest.fail(f"backends differ (seed {seed}, op {d['op_index']}):\n{d['text']}")
    assert result["ops"] == OPS_PER_SEED and result["episodes"] > 10


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
def test_backends_agree_on_the_fixed_seed_stream():
    _check(FIXED_SEED)


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
def test_backends_agree_on_this_runs_seed(fuzz_seed):
    _check(fuzz_seed)
