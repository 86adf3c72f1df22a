"""The z3 encodings do not drift from the emulator: for every conformance case (outcome.case_space),
the encoding solved with the case's concrete injection and the campaign runner (run_case) running the
same case agree on the return value, leaks, the injectable points passed and every byte of the
caller's memory - on both backends (the ``backend`` fixture)."""

import functools

import pytest

from proofs.drivers import DRIVERS
from proofs.outcome import case_space, differences, expected_record, module_report, spec_of
from proofs.replay import replay
from proofs.expected import EXPECTED_COUNTEREXAMPLES
from tdxmodel import abi, campaign, errors

pytestmark = pytest.mark.proof

SPACE = {d: dict(case_space(spec)) for d, spec in DRIVERS.items()}
CASES = [(d, label) for d, cases in SPACE.items() for label in cases]


@functools.lru_cache(maxsize=None)
def _case(driver, label, backend_name):
    spec = spec_of(driver, SPACE[driver][label], label)
    return spec, expected_record(driver, spec, module_report(backend_name))


@pytest.mark.parametrize("driver,label", CASES, ids=[f"{d}:{l}" for d, l in CASES])
def test_encoding_matches_emulator(backend, driver, label):
    spec, expected = _case(driver, label, backend.BACKEND_NAME)
    record = campaign.run_case(backend.BACKEND_NAME, driver, spec)
    assert differences(expected, record) == []


def test_case_space_covers_every_injection_point(backend, make_kernel):
    # Every point the emulator's driver declares for its report ioctl is failed by some case.
    for driver, spec in DRIVERS.items():
        k = make_kernel(driver)
        declared = set(spec.p.report.points)
        assert declared <= set(k.injection_points()), driver
        assert declared == {p for p in k.injection_points() if not p.startswith(("measurement:", "report_buf:", "quote_buf:", "outblob:", "configfs:",
                                                                                  "tsm_mr_", "kernfs_buf:"))} \
            or len(spec.p.commands) > 1, driver
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
def test_counterexample_replays_on_emulator(backend, theorem, driver):
    ok, lines = replay(theorem, driver, [backend.BACKEND_NAME])
    print("\n".join(lines))
    assert ok, "\n".join(lines)


def test_conformance_check_detects_a_drifted_encoding(backend):
    # The v6.2 variant that copies out before checking the status (expected_sat) predicts zeroed
    # bytes in the caller's buffer on a BUSY status; the emulator leaves the buffer alone.
    from proofs.expected_sat.mutants import _v62_body, _v62_variant
    drifted = _v62_variant("early copy", _v62_body(copy_before_status=True))
    label = f"status 0x{abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR:016x}"
    spec = spec_of("v6.2", SPACE["v6.2"][label], label)
    record = campaign.run_case(backend.BACKEND_NAME, "v6.2", spec)
    diffs = differences(expected_record("v6.2", spec, module_report(backend.BACKEND_NAME), drifted), record)
    assert any(d.startswith("changed:") for d in diffs), diffs
    assert any(d.startswith("trace:") for d in diffs), diffs


@pytest.mark.parametrize("nth, point", [(2, "tsm_mr_attrs:kzalloc"), (3, "tsm_mr_ctx:kzalloc")])
def test_v6_16_tsm_mr_init_failure_matches(backend, make_module, nth, point):
    """tsm_mr_create_attribute_group's kzallocs: the encoding and both backends agree on the load's
    -ENOMEM, and the encoding frees every init buffer it allocated (the no_leak theorem's init half)."""
    from proofs.symbolic import Injection
    import z3
    inj = Injection(prefix="init.")
    init = DRIVERS["v6.16"].init(inj)
    s = z3.SolverFor("QF_BV")
    others = [inj.fails(q) for q in ("report_buf:kzalloc", "tsm_mr_attrs:kzalloc", "tsm_mr_ctx:kzalloc")
              if q != point]
    s.add(inj.fails(point), *[z3.Not(o) for o in others], inj.tdcall_status == 0, *init.path.assumptions)
    assert s.check() == z3.sat
    m = s.model()
    predicted = m.eval(init.ret, model_completion=True).as_long() - (1 << 64)
    assert all(z3.is_false(m.eval(z3.And(b.allocated, z3.Not(b.freed)), model_completion=True))
               for b in init.path.buffers)
    with pytest.raises(errors.KernelError) as exc:
        backend.Kernel(make_module(), "v6.16", fail_nth=nth)
    assert -exc.value.errno == predicted == -abi.ENOMEM
