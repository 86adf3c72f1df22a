"""Run the quote theorems: theorem x generation with a quote path x host assumption.

Each part of a theorem is checked on its own (``Not(part)`` under the environment's domain, QF_BV):
``unsat`` proves it; ``sat`` gives a counterexample, taken where possible with replayable values
(``QuoteEnv.replayable``: the test producer's quote length, lengths the campaign's guest can
allocate) so ``--replay`` can run it; ``unknown`` is a failure.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional

import z3

from proofs.engine import COUNTEREXAMPLE, PROVED, TIMEOUT_MS, UNKNOWN, _value
from proofs.outcome import signed
from proofs.quote_path import HOSTS
from proofs.quote_theorems import ANCHOR, ASSUMPTIONS, BUILDERS, IOCTL_ANCHOR, IOCTL_ASSUMPTIONS, PREFER, \
    QUOTE_THEOREMS, STEPS, builder, citation, expected_failures, ioctl_steps, path_of
from tdxmodel import profiles as _profiles

#: The generations with a quote path, configfs-tsm or ioctl (``quote_theorems.path_of``).
QUOTE_DRIVERS = tuple(p.name for p in _profiles.PROFILES if path_of(p.name) is not None)
CONFIGFS_DRIVERS = tuple(d for d in QUOTE_DRIVERS if path_of(d) == "configfs")
IOCTL_DRIVERS = tuple(d for d in QUOTE_DRIVERS if path_of(d) == "ioctl")


@dataclass
class QuoteResult:
    theorem: str
    driver: str
    host: str                        # the host assumption: "qemu" or "any"
    assumption: str
    result: str                      # "proved", "counterexample" or "unknown"
    expected: str
    failing_parts: List[str]
    expected_failing_parts: List[str]
    counterexample: Optional[Dict[str, object]]      # the first failing part's
    counterexamples: Dict[str, Dict[str, object]]    # part -> its counterexample
    ok: bool
    ref: str
    anchor: str
    citation: Optional[str]
    reason: Optional[str]
    seconds: float
    path: str = "configfs"
    citations: Dict[str, str] = field(default_factory=dict)

    def to_json(self) -> Dict[str, object]:
        return asdict(self)


def _readable(cex: Dict[str, object]) -> Dict[str, object]:
    return {k: (signed(v) if (k == "ret" or k.endswith(".ret")) and isinstance(v, int)
                and not isinstance(v, bool) else v) for k, v in cex.items()}


def _check_part(part: z3.BoolRef, domain, tiers, variables, timeout_ms: int, greedy=None):
    """(result, counterexample or None, reason); the counterexample from the first tier of preferred
    values that admits one (``tiers``, most preferred first)."""
    s = z3.SolverFor("QF_BV")
    s.set("timeout", timeout_ms)
    s.add(*domain)
    s.add(z3.Not(part))
    r = s.check()
    if r == z3.unsat:
        return PROVED, None, None
    if r == z3.unknown:
        return UNKNOWN, None, s.reason_unknown()
    m = s.model()
    if greedy is not None:   # soft preferences, most important first: each kept if still satisfiable
        # (as assumptions on indicator literals: no push/pop, which is what costs in z3)
        flags = [z3.Bool(f"__prefer_{i}") for i in range(len(greedy))]
        s.add(*[z3.Implies(f, p) for f, p in zip(flags, greedy)])
        kept = list(flags) if s.check(*flags) == z3.sat else []
        if not kept:
            for f in flags:
                if s.check(*kept, f) == z3.sat:
                    kept.append(f)
            s.check(*kept)
        m = s.model()
        tiers = ()
    for tier in tiers:
        s.push()
        s.add(*tier)
        if s.check() == z3.sat:
            m = s.model()
            s.pop()
            break
        s.pop()
    return COUNTEREXAMPLE, _readable({n: _value(m.eval(e, model_completion=True))
                                      for n, e in variables.items()}), None


def prove_quote(theorem: str, driver: str, host: str, timeout_ms: int = TIMEOUT_MS) -> QuoteResult:
    """prove_quote(theorem, driver, host, timeout_ms) -> QuoteResult"""
    if theorem not in BUILDERS:
        raise ValueError(f"unknown quote theorem {theorem!r}; choose one of {', '.join(QUOTE_THEOREMS)}")
    if driver not in QUOTE_DRIVERS:
        raise ValueError(f"{driver!r} has no quote path; choose one of {', '.join(QUOTE_DRIVERS)}")
    if host not in HOSTS:
        raise ValueError(f"unknown host assumption {host!r}; choose one of {', '.join(HOSTS)}")
    start = time.monotonic()
    parts, domain, variables, env = builder(theorem, driver)(driver, host)
    s = z3.SolverFor("QF_BV")
    s.set("timeout", timeout_ms)
    s.add(*domain)
    r = s.check()
    failing, cexs, reason, result = [], {}, None, PROVED
    if r != z3.sat:   # a vacuous domain proves nothing
        result, reason = UNKNOWN, "assumptions are contradictory" if r == z3.unsat else s.reason_unknown()
    else:
        for name, claim in parts.items():
            replayable, simple = env.replayable(), env.simple()
            shown = PREFER.get((theorem, name), lambda v: [])(variables)
            tiers = (replayable + simple + shown + [variables["ret"] == 0], replayable + simple + shown,
                     replayable + simple, replayable)
            greedy = env.preferences(shown) if hasattr(env, "preferences") else None
            res, cex, why = _check_part(claim, domain, tiers, variables, timeout_ms, greedy)
            if res == UNKNOWN:
                result, reason = UNKNOWN, why
                break
            if res == COUNTEREXAMPLE:
                failing.append(name)
                cexs[name] = cex
                result = COUNTEREXAMPLE
    want_parts = sorted(expected_failures(theorem, driver, host))
    want = COUNTEREXAMPLE if want_parts else PROVED
    ok = result == want and sorted(failing) == want_parts
    cites = {p: citation(theorem, p, host, driver) for p in failing if citation(theorem, p, host, driver)}
    path = path_of(driver)
    ioctl = path == "ioctl"
    return QuoteResult(theorem, driver, host, (IOCTL_ASSUMPTIONS if ioctl else ASSUMPTIONS)[host], result,
                       want, failing, want_parts, cexs[failing[0]] if failing else None, cexs, ok,
                       ioctl_steps(theorem, driver) if ioctl else STEPS[theorem], IOCTL_ANCHOR if ioctl else ANCHOR,
                       next(iter(cites.values()), None), reason, round(time.monotonic() - start, 4),
                       path=path, citations=cites)


def run_quote_all(drivers: Optional[Iterable[str]] = None, theorems: Optional[Iterable[str]] = None,
                  hosts: Iterable[str] = HOSTS, timeout_ms: int = TIMEOUT_MS) -> List[QuoteResult]:
    drivers = [d for d in (drivers if drivers is not None else QUOTE_DRIVERS) if d in QUOTE_DRIVERS]
    theorems = [t for t in (theorems if theorems is not None else QUOTE_THEOREMS) if t in QUOTE_THEOREMS]
    return [prove_quote(t, d, h, timeout_ms) for d in drivers for t in theorems for h in hosts]
