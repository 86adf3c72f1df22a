"""The ioctl quote paths' counterexamples as campaign cases (``tdxmodel.campaign_quote_ioctl``), and
what ``run_case`` must record for any such case (``predict``), from ``proofs.quote_ioctl``.

``python -m proofs --replay quote_ownership --driver v4-2022-04`` turns each failing part's
counterexample into one ioctl case (``spec_from_counterexample``), pins the case back into the
encoding and solves it for the record's values, and runs it with ``tdxmodel.campaign.run_case``
(which hands ``"path": "ioctl"`` cases to ``campaign_quote_ioctl.run_case``) on each backend.
"""

from __future__ import annotations

import functools
from typing import Dict, List

import z3

from proofs.engine import _value, solve_in
from proofs.outcome import signed
from proofs.quote_ioctl import IoctlEnv, request
from proofs.quote_path import FAULT_NAMES, TEST_QUOTE_LEN
from tdxmodel import abi, campaign_quote_ioctl

_TIMEOUT_MS = 20_000
#: The record's keys the encoding states.
COMPARED = ("ret", "outblob_len", "status_after", "leaked", "leaked_after_host", "locks_held",
            "host_owns_after", "freed_while_owned", "clock_ns", "get_quotes", "next_ret",
            "next_outblob_is_own")


#: The misuses in the order the path meets them (#1 the request, #2 its len / timeout, #4 the buffer).
_MISUSE_ORDER = ("request_unmapped", "len_zero", "timeout_zero", "buffer_unmapped")


def _terms(r) -> Dict[str, z3.ExprRef]:
    return {"ret": r.ret, "outblob_len": r.outblob_len, "status_after": r.status_after,
            "leaked": r.leaked, "leaked_after_host": r.leaked_after_host, "locks_held": r.locks_held,
            "host_owns_after": r.host_owns_after, "freed_while_owned": r.freed_while_owned,
            "clock_ns": r.clock_ns, "get_quotes": r.get_quotes, "next_runs": r.next_runs,
            "next_ret": r.next_ret, "next_outblob_is_own": r.next_outblob_is_own}


@functools.lru_cache(maxsize=None)
def _encoding(driver: str):
    env = IoctlEnv(driver)
    r = request(driver, env)
    s = z3.SolverFor("QF_BV")
    s.set("timeout", _TIMEOUT_MS)
    s.add(r.returns)
    return env, r, s


def _solve_in(s: z3.Solver, constraints, terms: Dict[str, z3.ExprRef]) -> Dict[str, object]:
    return solve_in(s, constraints, terms, "the case is outside the encoding's domain (a wait nothing ends?)")


def _pin(v):
    return z3.BoolVal(v) if isinstance(v, bool) else (v & ((1 << 64) - 1))


def pins(driver: str, env: IoctlEnv, spec: Dict[str, object]) -> List[z3.BoolRef]:
    """The encoding's variables fixed to an ioctl case, but for the failing injection point
    (``fail_points``); the host's quote is the test producer's."""
    params = spec["host_params"]
    fault = spec["host_fault"]
    code = abi.HOST_FAULT_NONE if fault is None else abi.VALUES["HOST_FAULT_" + fault.upper()]
    out = [env.host_fault == code,
           env.service_us == round(params.get("seconds", abi.HOST_SERVICE_TIME_US / 1e6) * 1e6),
           env.out_len_param == params.get("out_len", 0), env.quote_len == TEST_QUOTE_LEN,
           env.signal == (spec["signal"] is not None)]
    out += [v == (spec["misuse"] == m) for m, v in env.misuse.items()]
    return out


def fail_points(driver: str, env: IoctlEnv, r, spec: Dict[str, object], fixed) -> Dict[str, bool]:
    """fail-nth N: the N-th injection point the path reaches fails, no other (ref §7)."""
    s = _encoding(driver)[2]
    n = spec["fail_nth"]
    fails = {p: False for p in env.points}
    if n:
        m = _solve_in(s, fixed + [z3.Not(v) for v in env.fail.values()],
                      {p: r.reached.get(p, z3.BoolVal(False)) for p in env.points})
        reached = [p for p in env.points if m[p]]
        if n <= len(reached):
            fails[reached[n - 1]] = True
    return fails


def predict(driver: str, spec: Dict[str, object]) -> Dict[str, object]:
    """What campaign_quote_ioctl.run_case records for ``spec`` (the keys of ``COMPARED``)."""
    env, r, s = _encoding(driver)
    fixed = pins(driver, env, spec)
    fails = fail_points(driver, env, r, spec, fixed)
    fixed += [v == fails[p] for p, v in env.fail.items()]
    out = _solve_in(s, fixed, _terms(r))
    out["ret"] = signed(out["ret"])
    out["next_ret"] = signed(out["next_ret"]) if out.pop("next_runs") else None
    return out


def violates(driver: str, spec: Dict[str, object], claim_builder, host: str, part: str) -> bool:
    """Whether the case, pinned into the theorem's own encoding, still violates ``part``."""
    parts, domain, _vars, tenv = claim_builder(driver, host)
    env, r, _s = _encoding(driver)
    fixed = pins(driver, tenv, spec)
    fails = fail_points(driver, env, r, spec, pins(driver, env, spec))
    fixed += [v == fails[p] for p, v in tenv.fail.items()]
    s = z3.SolverFor("QF_BV")
    s.set("timeout", _TIMEOUT_MS)
    s.add(*fixed, *domain)
    res = s.check()
    if res != z3.sat:
        return False
    return bool(_value(s.model().eval(z3.Not(parts[part]), model_completion=True)))


def spec_from_counterexample(driver: str, cex: Dict[str, object], case_id: str) -> Dict[str, object]:
    """An ioctl campaign case doing what the counterexample says: its host, a signal (when the wait is
    reached), the first misuse its path meets, and the fail-nth index of its first failing point
    among the points the path reaches."""
    env, r, s = _encoding(driver)
    fixed = [v == _pin(cex[n]) for n, v in env.variables().items() if n in cex]
    m = _solve_in(s, fixed, {"issued": r.get_quotes == 1, "wait": r.reached_wait,
                             **{f"reached[{p}]": r.reached.get(p, z3.BoolVal(False)) for p in env.points}})
    fault = FAULT_NAMES[int(cex["host_fault"])]
    params: Dict[str, object] = {}
    service_us = int(cex["service_us"])
    if fault == "service_time" or service_us != abi.HOST_SERVICE_TIME_US:
        params["seconds"] = service_us / 1e6
    if fault in ("oversize_out_len", "out_len_changes"):
        params["out_len"] = int(cex["out_len_param"])
    if not m["issued"]:
        fault, params = None, {}
    misuse = next((name for name in _MISUSE_ORDER if name in env.misuse and cex.get(name)), None)
    reached = [p for p in env.points if m[f"reached[{p}]"]]
    first = next((p for p in reached if cex.get(f"fail[{p}]")), None)
    return {"id": case_id, "path": campaign_quote_ioctl.PATH, "host_fault": fault, "host_params": params,
            "fail_nth": 0 if first is None else reached.index(first) + 1,
            "signal": {"at": "wait"} if cex.get("signal_pending") and m["wait"] else None,
            "misuse": misuse, "description": f"replay of {case_id}"}


def record_values(record: Dict[str, object]) -> Dict[str, object]:
    return {k: record[k] for k in COMPARED}


def describe(spec: Dict[str, object]) -> str:
    return (f"case host_fault={spec['host_fault']} host_params={spec['host_params']} "
            f"signal={spec['signal']} misuse={spec['misuse']} fail_nth={spec['fail_nth']}")


__all__ = ["COMPARED", "predict", "violates", "spec_from_counterexample", "pins", "describe",
           "record_values"]
