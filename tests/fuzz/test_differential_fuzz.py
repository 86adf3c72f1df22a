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


#: Found by seed 3336314532 (shrunk): a downstream request that got no interrupt is orphaned by the
#: signal (quote.md §2.6 step 6) until a later interrupt runs quote_work; the stream closed fds[0],
#: so the teardown's clean quote, whose interrupt frees it, needs a descriptor of its own.
ORPHAN_THEN_CLOSED_FD = [
    ("iq_episode", {"version": "1.5", "seed": 6736708801931156910}, 496, "intel-downstream", 7, 2, True),
    ("iq_quote", "qgs", 130438639, 1, None, 16384, 266240, None, 262144, False),
    ("hfault", "no_interrupt"),
    ("iq_quote", "random", 1426501137, 1, None, 1, 266240, None, 262144, False),
    ("close", 0),
    ("iq_teardown",),
]


def test_an_orphaned_downstream_request_is_freed_by_the_teardown_after_its_fd_was_closed():
    logs = {name: engine.run(name, ORPHAN_THEN_CLOSED_FD) for name in engine.backends()}
    for name, log in logs.items():
        assert log[3][0] == -4, name                      # the stuck caller's signal: -EINTR, entry orphaned
        held = dict(log[4][1][3])
        assert held["outstanding"] > held["resident"], name  # the orphan's buffers, before the teardown
        assert log[-1][0][0] == 0, name                   # the clean quote went through a fresh fd
        assert engine.balanced(log[-1][1]), name          # and its interrupt freed the orphan
    assert engine.first_difference(ORPHAN_THEN_CLOSED_FD) is None
