"""The z3 encodings do not drift from the emulator: for every conformance case (outcome.case_space),
the encoding solved with the case's concrete injection and the emulator running the same case
agree on the return value, leaks, the injectable points passed and every byte of the caller's
buffer - on both backends (the ``backend`` fixture)."""

import functools

import pytest

from proofs.drivers import DRIVERS
from proofs.outcome import case_space, compare, predict, run
from proofs.replay import replay
from proofs.expected import EXPECTED_COUNTEREXAMPLES
from tdxmodel import abi, errors

pytestmark = pytest.mark.proof

SPACE = {d: dict(case_space(spec)) for d, spec in DRIVERS.items()}
CASES = [(d, label) for d, cases in SPACE.items() for label in cases]


@functools.lru_cache(maxsize=None)
def _case(driver, label):
    injection = SPACE[driver][label]
    return injection, predict(DRIVERS[driver], injection)   # once, for both backends


@pytest.mark.parametrize("driver,label", CASES, ids=[f"{d}:{l}" for d, l in CASES])
def test_encoding_matches_emulator(backend, make_kernel, driver, label):
    injection, predicted = _case(driver, label)
    observed = run(backend, DRIVERS[driver], injection, make_kernel)
    assert compare(predicted, observed, injection.tdcall_status) == []


def test_case_space_covers_every_injection_point(backend, make_kernel):
    # Every point the emulator's driver declares for its ioctl is failed by some case.
    for driver, spec in DRIVERS.items():
        k = make_kernel(driver)
        # the ioctl path's points: not the measurement files', init's, or the quote path's (its own theorems)
        declared = {p for p in k.injection_points()
                    if not p.startswith(("measurement:", "report_buf:", "quote_buf:", "outblob:", "configfs:"))}
        failed = {inj.failed_point for inj in SPACE[driver].values() if inj.failed_point}
        assert declared == failed, driver


def test_v6_16_init_failure_matches(backend, make_module):
    from proofs.symbolic import Injection
    import z3
    inj = Injection(prefix="init.")
    init = DRIVERS["v6.16"].init(inj)
    s = z3.SolverFor("QF_BV")
    s.add(inj.fails("report_buf:kzalloc"), *init.path.assumptions)
    assert s.check() == z3.sat
    predicted = s.model().eval(init.ret, model_completion=True).as_long() - (1 << 64)
    with pytest.raises(errors.KernelError) as exc:
        backend.Kernel(make_module(), "v6.16", fail_nth=1)
    assert -exc.value.errno == predicted == -abi.ENOMEM


@pytest.mark.parametrize("theorem,driver", sorted(EXPECTED_COUNTEREXAMPLES))
def test_counterexample_replays_on_emulator(backend, make_kernel, theorem, driver):
    ok, lines = replay(theorem, driver, [backend.BACKEND_NAME], make_kernel=lambda be: make_kernel)
    print("\n".join(lines))
    assert ok, "\n".join(lines)


def test_conformance_check_detects_a_drifted_encoding(backend, make_kernel):
    # The v6.2 variant that copies out before checking the status (expected_sat) predicts zeroed
    # bytes in the caller's buffer on a BUSY status; the emulator leaves the buffer alone.
    from proofs.expected_sat.mutants import _v62_body, _v62_variant
    drifted = _v62_variant("early copy", _v62_body(copy_before_status=True))
    injection = SPACE["v6.2"][f"status 0x{abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR:016x}"]
    observed = run(backend, DRIVERS["v6.2"], injection, make_kernel)
    diffs = compare(predict(drifted, injection), observed, injection.tdcall_status)
    assert any(d.startswith("user bytes differ") for d in diffs), diffs
    assert any(d.startswith("points passed") for d in diffs), diffs
