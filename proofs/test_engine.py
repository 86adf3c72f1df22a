"""The solver harness: unknown is a failure with its reason, sat gives concrete values, contradictory
assumptions never count as a proof, and an unexpected result makes the run fail."""

import pytest
import z3

from proofs import expected
from proofs.__main__ import main
from proofs.engine import COUNTEREXAMPLE, PROVED, UNKNOWN, Obligation, check

pytestmark = pytest.mark.proof


def _hard_obligation():
    # Factoring a 64-bit semiprime with bit-vector multiplication: far beyond a 1 ms budget.
    x, y = z3.BitVecs("x y", 64)
    n = 4294967291 * 4294967279   # two 32-bit primes: the claim "no nontrivial factorisation" is false
    claim = z3.Not(z3.And(x * y == n, z3.UGT(x, 1), z3.UGT(y, 1), z3.ULT(x, 1 << 32), z3.ULT(y, 1 << 32)))
    return Obligation(claim, (), {"x": x, "y": y})


def test_timeout_is_unknown_with_a_reason():
    v = check(_hard_obligation(), timeout_ms=1)
    assert v.result == UNKNOWN and v.reason and v.counterexample is None


def test_sat_gives_concrete_values():
    a = z3.BitVec("a", 8)
    v = check(Obligation(z3.ULT(a, 200), (), {"a": a}))
    assert v.result == COUNTEREXAMPLE and v.counterexample["a"] >= 200


def test_contradictory_assumptions_prove_nothing():
    a = z3.BitVec("a", 8)
    v = check(Obligation(z3.BoolVal(False), (a == 1, a == 2), {"a": a}))
    assert v.result == UNKNOWN and "contradictory" in v.reason


def test_unsat_is_proved():
    a = z3.BitVec("a", 8)
    assert check(Obligation(z3.ULE(a & 0x0F, 0x0F), (), {})).result == PROVED


def test_run_fails_when_an_expected_counterexample_disappears(monkeypatch, capsys):
    # Pretend the registry expected v6.16 to lose serialisation: the solver proves it, so exit 1.
    monkeypatch.setitem(expected.EXPECTED_COUNTEREXAMPLES, ("serialisation", "v6.16"), "test")
    assert main(["--driver", "v6.16", "--theorem", "serialisation"]) == 1
    assert "UNEXPECTED" in capsys.readouterr().out


def test_run_fails_when_a_known_defect_is_forgotten(monkeypatch, capsys):
    monkeypatch.delitem(expected.EXPECTED_COUNTEREXAMPLES, ("errno_contract", "v4-2022-04"))
    assert main(["--driver", "v4-2022-04", "--theorem", "errno_contract", "--json"]) == 1
