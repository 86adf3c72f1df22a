"""Run the theorem x driver matrix and compare each verdict with its expectation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional

from proofs import expected as _expected
from proofs.drivers import DRIVERS
from proofs.engine import TIMEOUT_MS, Verdict, check
from proofs.outcome import signed
from proofs.theorems import BUILDERS, THEOREMS


@dataclass
class Result:
    theorem: str
    driver: str
    result: str                      # "proved", "counterexample" or "unknown"
    expected: str
    counterexample: Optional[Dict[str, object]]
    ok: bool
    ref: str
    anchor: str
    citation: Optional[str]
    reason: Optional[str]
    seconds: float

    def to_json(self) -> Dict[str, object]:
        return asdict(self)


def _readable(cex: Optional[Dict[str, object]]) -> Optional[Dict[str, object]]:
    """Return values as signed integers (a syscall's -errno), everything else as solved."""
    if cex is None:
        return None
    return {k: (signed(v) if (k == "ret" or k.endswith("_ret") or k.endswith(".ret"))
                and isinstance(v, int) and not isinstance(v, bool) else v)
            for k, v in cex.items()}


def prove(theorem: str, driver: str, timeout_ms: int = TIMEOUT_MS) -> Result:
    """prove(theorem: str, driver: str, timeout_ms: int) -> Result"""
    if theorem not in BUILDERS:
        raise ValueError(f"unknown theorem {theorem!r}; choose one of {', '.join(THEOREMS)}")
    if driver not in DRIVERS:
        raise ValueError(f"unknown driver {driver!r}; choose one of {', '.join(DRIVERS)}")
    spec = DRIVERS[driver]
    verdict: Verdict = check(BUILDERS[theorem](spec), timeout_ms)
    want = _expected.expected(theorem, driver)
    return Result(theorem, driver, verdict.result, want, _readable(verdict.counterexample),
                  verdict.result == want, f"ref {spec.steps[theorem]}", spec.anchor,
                  _expected.citation(theorem, driver), verdict.reason, round(verdict.seconds, 4))


def run_all(drivers: Optional[Iterable[str]] = None, theorems: Optional[Iterable[str]] = None,
            timeout_ms: int = TIMEOUT_MS) -> List[Result]:
    drivers = list(drivers) if drivers is not None else list(DRIVERS)
    theorems = list(theorems) if theorems is not None else list(THEOREMS)
    return [prove(t, d, timeout_ms) for d in drivers for t in theorems]
