"""Replaying a counterexample on the emulator: ``python -m proofs --replay THEOREM --driver NAME``.

The solver's model is turned into a concrete case (``injection_from_counterexample``), the case is
solved once more in the encoding (``outcome.expected_record``) and run on each emulator backend by
the campaign's one runner (``tdxmodel.campaign.run_case`` on ``outcome.spec_of`` the case); the replay
succeeds when the record shows the same return value, points and bytes in the caller's buffer
(``outcome.differences``), and, for the theorem's own claim, the value the counterexample reported.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import z3

from proofs.drivers import DRIVERS
from proofs.engine import COUNTEREXAMPLE
from proofs.interleave import STEPS
from proofs.outcome import Predicted, differences, expected_record, module_report, predict, spec_of
from proofs.runner import Result, prove
from proofs.spec import DriverSpec
from proofs.symbolic import ConcreteInjection, Injection, Kind
from tdxmodel import _backend, abi, campaign

PATH_THEOREMS = ("no_leak", "errno_contract", "no_silent_loss", "no_disclosure")


def injection_from_counterexample(spec: DriverSpec,
                                  cex: Dict[str, object]) -> Tuple[ConcreteInjection, List[str], bool]:
    """(concrete case, points it passes, whether it reaches the TDCALL) for a driver-path
    counterexample."""
    inj = Injection()
    p = spec.ioctl(inj)
    pins = []
    for name, var in inj.variables().items():
        if name in cex:
            value = cex[name]
            pins.append(var == (z3.BoolVal(value) if isinstance(value, bool) else value))
    s = z3.SolverFor("QF_BV")
    s.add(*pins)
    if s.check() != z3.sat:
        raise ValueError("the counterexample does not satisfy its own path")
    m = s.model()
    reached = [v for v in p.points if z3.is_true(m.eval(v.reached, model_completion=True))]
    failed = [v.name for v in reached if z3.is_true(m.eval(v.failed, model_completion=True))]
    # Only limits that stop a copy early matter; larger ones mean "no genuine fault".
    limits = {v.name: int(cex[f"limit[{v.name}]"]) for v in reached
              if f"limit[{v.name}]" in cex and int(cex[f"limit[{v.name}]"]) < v.length}
    tdcall_reached = p.report_status is not None and z3.is_true(m.eval(p.report_reached, model_completion=True))
    status = int(cex["tdcall_status"]) if tdcall_reached else abi.TDX_SUCCESS  # unreached: irrelevant
    concrete = ConcreteInjection(cmd=int(cex["cmd"]), tdcall_status=status,
                                 failed_point=failed[0] if failed else None, limits=limits,
                                 lock_interrupted=bool(cex.get("mr_lock_interrupted", False)))
    return concrete, [v.name for v in reached], tdcall_reached


def prune(spec: DriverSpec, cex: Optional[Dict[str, object]]) -> Optional[Dict[str, object]]:
    """The counterexample without the fault choices of points its path never reaches (and a
    serialisation schedule as one string, e.g. "BBAA...": who moves at each step)."""
    if cex is not None and "a_moves[0]" in cex:
        schedule = "".join("A" if cex[f"a_moves[{t}]"] else "B" for t in range(STEPS))
        rest = {k: v for k, v in cex.items() if not k.startswith("a_moves[")}
        return {"schedule": schedule, **rest}
    if cex is None or "cmd" not in cex:
        return cex
    _concrete, reached, tdcall_reached = injection_from_counterexample(spec, cex)
    keep = {}
    for k, v in cex.items():
        if k.startswith(("fail[", "limit[")) and k[k.index("[") + 1:-1] not in reached:
            continue
        if k == "tdcall_status" and not tdcall_reached:
            continue
        if k == "mr_lock_interrupted" and not spec.has_mr_lock:
            continue
        keep[k] = v
    return keep



def describe_runs(provenance_or_obs) -> str:
    """Changed byte ranges, as 'a..b' joined by commas ('none')."""
    offsets = provenance_or_obs
    if not offsets:
        return "none"
    runs, start, prev = [], offsets[0], offsets[0]
    for o in offsets[1:]:
        if o != prev + 1:
            runs.append((start, prev))
            start = o
        prev = o
    runs.append((start, prev))
    return ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in runs)


def _predicted_changes(pred: Predicted) -> List[int]:
    return [i for i, (kind, index) in enumerate(pred.provenance)
            if not (kind == Kind.ORIGINAL and index == i)]


def replay(theorem: str, driver: str, backends: Sequence[str] = (),
           result: Optional[Result] = None) -> Tuple[bool, List[str]]:
    """replay(theorem, driver, backends=(), result=None) -> (ok, lines)

    ``backends`` defaults to every backend that exports a Kernel."""
    spec = DRIVERS[driver]
    res = result or prove(theorem, driver)
    lines = [f"{theorem} @ {driver}: {res.result} (expected {res.expected})"]
    if res.result != COUNTEREXAMPLE:
        lines.append("nothing to replay: the theorem holds for this driver")
        return res.result == res.expected, lines
    cex = res.counterexample or {}
    cmd = abi.VALUES[spec.report_cmd]
    concurrent = False
    claim_ret: Optional[int] = None
    if theorem in PATH_THEOREMS:
        concrete, _reached, _tdcall = injection_from_counterexample(spec, cex)
    elif theorem == "serialisation":
        # A's TDCALL meets an EXTEND in flight on another vCPU (the counterexample's schedule).
        concrete = ConcreteInjection(cmd=cmd, tdcall_status=int(cex["report_status"]))
        concurrent = True
        claim_ret = int(cex["report_ret"])
    elif theorem == "status_mapping":
        concrete = ConcreteInjection(cmd=cmd, tdcall_status=int(cex["status"]))
        claim_ret = int(cex["ret"])
    else:
        lines.append(f"counterexample {cex}: a module-leaf model, not a driver call; nothing to run")
        return False, lines
    lines.append(f"case: cmd=0x{concrete.cmd:08x} tdcall_status=0x{concrete.tdcall_status:016x} "
                 f"failed_point={concrete.failed_point} limits={concrete.limits} "
                 f"mr_lock_interrupted={concrete.lock_interrupted} concurrent_extend={concurrent}")
    pred: Optional[Predicted] = None
    try:
        pred = predict(spec, concrete)
    except ValueError as e:   # a status outside what the leaf returns: compare the return value only
        lines.append(f"z3: {e}")
    ok = True
    if pred is not None:
        lines.append(f"z3      : ret={pred.ret} leaked={pred.leaked} user bytes written: "
                     f"{describe_runs(_predicted_changes(pred))}")
        if claim_ret is not None and pred.ret != claim_ret:
            ok = False
            lines.append(f"MISMATCH: the counterexample says ret={claim_ret}, the path gives {pred.ret}")
    case = spec_of(driver, concrete, f"replay:{theorem}", concurrent_extend=concurrent)
    names = list(backends) or [b for b in _backend.BACKENDS if _has_kernel(b)]
    for name in names:
        record = campaign.run_case(name, driver, case)
        leaked = bool(record["leaked"]) or bool(record["locks_held"])
        lines.append(f"{name:8}: ret={record['ret']} leaked={leaked} user bytes changed: "
                     f"{describe_runs(_record_changes(record))}")
        diffs = []
        if pred is not None:
            diffs = differences(expected_record(driver, case, module_report(name)), record)
        elif claim_ret is None:
            diffs.append("nothing to compare: the encoding cannot solve the case")
        if claim_ret is not None and record["ret"] != claim_ret:
            diffs.append(f"ret: counterexample {claim_ret}, emulator {record['ret']}")
        for d in diffs:
            lines.append(f"  MISMATCH {d}")
        ok = ok and not diffs
    lines.append("replayed: the emulator shows the same outcome" if ok else "replay FAILED")
    return ok, lines


def _record_changes(record) -> List[int]:
    """The changed offsets from arg that a run_case record lists as runs."""
    return [r["offset"] + i for r in record["changed"] for i in range(len(r["hex"]) // 2)]


def _has_kernel(name: str) -> bool:
    try:
        return hasattr(_backend.load(name), "Kernel")
    except ImportError:
        return False
