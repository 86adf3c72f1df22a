"""Discharging a proof obligation: ``Not(claim)`` under ``SolverFor("QF_BV")`` with a timeout.

``unsat`` -> proved; ``sat`` -> a concrete counterexample (every named variable evaluated in the
model); ``unknown`` (a timeout included) -> a failure carrying the solver's reason (Alive's
``check_incomplete_solver``, claripy's typed exception). Assumptions are checked satisfiable first,
so a theorem can never be "proved" because its assumptions contradict each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import z3

#: Per-check solver timeout. The whole matrix takes a few seconds; this only bounds a regression.
TIMEOUT_MS = 30_000

PROVED, COUNTEREXAMPLE, UNKNOWN = "proved", "counterexample", "unknown"


class SolverUnknown(Exception):
    """The solver answered unknown (a timeout included); ``reason`` is its ``reason_unknown()``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"solver returned unknown: {reason}")
        self.reason = reason


@dataclass
class Obligation:
    claim: z3.BoolRef
    assumptions: Sequence[z3.BoolRef] = ()
    variables: Dict[str, z3.ExprRef] = field(default_factory=dict)
    logic: str = "QF_BV"


@dataclass
class Verdict:
    result: str
    counterexample: Optional[Dict[str, object]]
    reason: Optional[str]
    seconds: float


def _value(v: z3.ExprRef) -> object:
    if z3.is_true(v):
        return True
    if z3.is_false(v):
        return False
    if z3.is_bv_value(v):
        return v.as_long()
    return str(v)


def solve_in(s: z3.Solver, constraints, terms: Dict[str, z3.ExprRef],
             outside: str = "the case is outside the encoding's domain") -> Dict[str, object]:
    """The values of ``terms`` in a model of ``s`` with ``constraints`` added for this one check (the
    solver is left as it was): SolverUnknown on ``unknown``, ValueError(``outside``) on unsat."""
    s.push()
    try:
        s.add(*constraints)
        res = s.check()
        if res == z3.unknown:
            raise SolverUnknown(s.reason_unknown())
        if res == z3.unsat:
            raise ValueError(outside)
        m = s.model()
        return {k: _value(m.eval(t, model_completion=True)) for k, t in terms.items()}
    finally:
        s.pop()


def _solver(logic: str, timeout_ms: int) -> z3.Solver:
    s = z3.SolverFor(logic)
    s.set("timeout", timeout_ms)
    return s


def check(ob: Obligation, timeout_ms: int = TIMEOUT_MS) -> Verdict:
    """check(ob: Obligation, timeout_ms: int) -> Verdict: prove ``ob.claim`` under ``ob.assumptions``."""
    start = time.monotonic()
    s = _solver(ob.logic, timeout_ms)
    s.add(*ob.assumptions)
    r = s.check()
    if r != z3.sat:   # vacuous (unsat) or undecided assumptions can prove nothing
        reason = "assumptions are contradictory" if r == z3.unsat else s.reason_unknown()
        return Verdict(UNKNOWN, None, reason, time.monotonic() - start)
    s.add(z3.Not(ob.claim))
    r = s.check()
    elapsed = time.monotonic() - start
    if r == z3.unsat:
        return Verdict(PROVED, None, None, elapsed)
    if r == z3.sat:
        m = s.model()
        cex = {name: _value(m.eval(e, model_completion=True)) for name, e in ob.variables.items()}
        return Verdict(COUNTEREXAMPLE, cex, None, elapsed)
    return Verdict(UNKNOWN, None, s.reason_unknown(), elapsed)


def solve(constraints: Sequence[z3.BoolRef], variables: Dict[str, z3.ExprRef],
          timeout_ms: int = TIMEOUT_MS) -> Optional[Dict[str, object]]:
    """solve(constraints, variables, timeout_ms) -> dict | None: one model's values, None when unsat.
    Raises SolverUnknown on unknown."""
    s = _solver("QF_BV", timeout_ms)
    s.add(*constraints)
    r = s.check()
    if r == z3.unknown:
        raise SolverUnknown(s.reason_unknown())
    if r == z3.unsat:
        return None
    m = s.model()
    return {name: _value(m.eval(e, model_completion=True)) for name, e in variables.items()}
