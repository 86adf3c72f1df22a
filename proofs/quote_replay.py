"""Replaying a quote theorem's counterexamples on the emulator:
``python -m proofs --replay quote_timeout --driver v7.1 [--host any]``.

Each failing part's counterexample becomes one campaign quote case (``spec_from_counterexample``,
the schema of ``tdxmodel.campaign_quote``); the case is pinned back into the encoding
(``pins``) and solved once more for what the emulator must record (``predict``: the return value,
the bytes the caller read, the bytes from past the buffer, whether the outblob is the host's quote,
whether the host still owns the buffer and whether the next request is issued into it, a leak), and
it must still violate the part. ``tdxmodel.campaign.run_case`` then runs it on each backend; the replay
succeeds when every record matches the prediction.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import z3

from proofs.engine import COUNTEREXAMPLE, SolverUnknown, _value, solve_in as _solve_in
from proofs.outcome import signed
from proofs.quote_path import FAULT_NAMES, HOSTS, TEST_QUOTE_LEN, QuoteEnv, next_request_issues, request
from proofs.quote_runner import QuoteResult, prove_quote
from proofs.quote_theorems import BUILDERS
from tdxmodel import _backend, abi, campaign, campaign_quote, profiles

_TIMEOUT_MS = 20_000
COMPARED = ("ret", "outblob_len", "foreign_bytes", "outblob_is_quote", "host_owns_after",
            "issued_while_owned", "leaked")


def spec_from_counterexample(driver: str, cex: Dict[str, object], case_id: str) -> Dict[str, object]:
    """A campaign quote case doing what the counterexample says (choices its path never reaches are
    dropped, so they cannot reach the next request)."""
    prof = profiles.get(driver)
    fault = FAULT_NAMES[int(cex["host_fault"])]
    # which steps the counterexample's own path reaches
    env = QuoteEnv(driver)
    r = request(driver, env)
    m = _solve([v == _pin_value(cex[n]) for n, v in env.variables().items() if n in cex], {
        "issued": r.issued, "p5": _p5_reached(driver, env, r)})
    params: Dict[str, object] = {}
    service_us = int(cex["service_us"])
    if fault == "service_time" or service_us != abi.HOST_SERVICE_TIME_US:
        params["seconds"] = service_us / 1e6
    if fault in ("oversize_out_len", "out_len_changes"):
        params["out_len"] = int(cex["out_len_param"])
    if not m["issued"]:
        fault, params = None, {}
    signal = None
    if cex["signal_quote_lock"]:
        signal = {"at": "quote_lock"}
    elif cex["signal_mr_lock"] and prof.cached_report_buf:
        signal = {"at": "mr_lock"}
    elif int(cex["signal_sleep"]):
        signal = {"at": "sleep", "sleep": int(cex["signal_sleep"])}
    misuse = "no_provider" if cex["no_provider"] else "retry_after_eintr" if cex["leftover_in_flight"] else None
    status = int(cex["tdcall_status"])
    tdcall = {"status": status} if status and m["p5"] else None
    spec = {"id": case_id, "path": campaign_quote.PATH, "host_fault": fault, "host_params": params,
            "fail_nth": 0, "tdcall": tdcall, "signal": signal, "misuse": misuse, "init": None,
            "inblob_len": int(cex["inblob_len"]), "description": f"replay of {case_id}"}
    spec["fail_nth"] = _fail_position(driver, cex)
    return spec


def _p5_reached(driver: str, env: QuoteEnv, r) -> z3.BoolRef:
    # P5 runs when R1, R3, P1-P3 (and 6.16+'s mr_lock) passed: the TDCALL's status decides
    return z3.And(env.inblob_len == abi.TDX_REPORTDATA_LEN, z3.Not(env.no_provider),
                  z3.Not(env.sig_quote_lock), z3.Not(env.leftover),
                  *([z3.Not(env.sig_mr_lock)] if profiles.get(driver).cached_report_buf else []),
                  *[z3.Not(env.fail[p]) for p in ("reportdata:kmalloc", "tdreport:kzalloc") if p in env.fail])


def _pin_value(v):
    return z3.BoolVal(v) if isinstance(v, bool) else (v & ((1 << 64) - 1))


def _fail_position(driver: str, cex) -> int:
    """The fail-nth index of the counterexample's first failing point among the points its path
    reaches (ref §7: every reached point counts); 0 when no reached point fails."""
    env = QuoteEnv(driver)
    r = request(driver, env)
    pins = [v == _pin_value(cex[n]) for n, v in env.variables().items() if n in cex]
    m = _solve(pins, {p: r.reached.get(p, z3.BoolVal(False)) for p in env.points})
    reached = [p for p in env.points if m[p]]
    first = next((p for p in reached if cex.get(f"fail[{p}]")), None)
    return 0 if first is None else reached.index(first) + 1


def encodable(spec: Dict[str, object]) -> bool:
    """Whether the encoding states this campaign quote case's outcome (``pins`` takes it): host,
    signal at a lock or in a sleep, TDCALL, fail-nth, inblob length, no provider, a leftover
    IN_FLIGHT; not the other configfs misuses, module load, or a signal pending from the start."""
    return (spec["misuse"] in (None, "no_provider", "retry_after_eintr") and spec["init"] is None
            and (spec["signal"] or {}).get("at") != "pending")


def pins(driver: str, env: QuoteEnv, spec: Dict[str, object]) -> List[z3.BoolRef]:
    """The encoding's variables fixed to a campaign quote case (the test producer's quote length)."""
    prof = profiles.get(driver)
    params = spec["host_params"]
    fault = spec["host_fault"]
    code = 0 if fault is None else abi.VALUES["HOST_FAULT_" + fault.upper()]
    sig = spec["signal"] or {}
    misuse = spec["misuse"]
    if not encodable(spec):
        raise ValueError(f"case {spec['id']}: only host, signal, TDCALL, fail-nth, inblob and "
                         "provider choices replay in the encoding")
    out = [env.host_fault == code,
           env.service_us == round(params.get("seconds", abi.HOST_SERVICE_TIME_US / 1e6) * 1e6),
           env.out_len_param == params.get("out_len", 0), env.quote_len == TEST_QUOTE_LEN,
           env.tdcall_status == (spec["tdcall"]["status"] if spec["tdcall"] else 0),
           env.sig_quote_lock == (sig.get("at") == "quote_lock"),
           env.sig_mr_lock == (sig.get("at") == "mr_lock" and prof.cached_report_buf),
           env.sig_sleep == (sig.get("sleep", 0) if sig.get("at") == "sleep" else 0),
           env.inblob_len == spec["inblob_len"], env.no_provider == (misuse == "no_provider"),
           env.leftover == (misuse == "retry_after_eintr")]
    out += [z3.Not(v) for v in env.init_fail.values()] + [z3.Not(env.decrypt_fails)]
    return out


def _solve(constraints, terms: Dict[str, z3.ExprRef]) -> Dict[str, object]:
    s = z3.SolverFor("QF_BV")
    s.set("timeout", _TIMEOUT_MS)
    s.add(*constraints)
    r = s.check()
    if r == z3.unknown:
        raise SolverUnknown(s.reason_unknown())
    if r == z3.unsat:
        raise ValueError("the case is outside the encoding's domain")
    m = s.model()
    return {k: _value(m.eval(t, model_completion=True)) for k, t in terms.items()}


@functools.lru_cache(maxsize=None)
def _encoding(driver: str):
    """One request's terms and an incremental solver over them, per generation (the conformance
    test solves hundreds of cases)."""
    env = QuoteEnv(driver)
    r = request(driver, env)
    issues = next_request_issues(driver, r, env)
    terms = {"ret": r.ret, "outblob_len": r.delivered, "foreign_bytes": r.beyond_buffer,
             "outblob_is_quote": r.quote_reached, "host_owns_after": r.owned_end,
             "issued_while_owned": z3.And(r.owned_end, issues), "leaked": r.leak,
             "disclosed": r.disclosed}
    s = z3.SolverFor("QF_BV")
    s.set("timeout", _TIMEOUT_MS)
    return env, r, terms, s


def predict(driver: str, spec: Dict[str, object], theorem: Optional[str] = None,
            part: Optional[str] = None, host: str = "any") -> Dict[str, object]:
    """What run_case must record for a quote case, and (with theorem and part) whether the case
    still violates that part."""
    env, r, terms, solver = _encoding(driver)
    fixed = pins(driver, env, spec)
    # fail-nth N: the N-th point the path reaches fails (the others do not)
    n = spec["fail_nth"]
    fails = {p: False for p in env.points}
    if n:
        m = _solve_in(solver, fixed + [z3.Not(v) for v in env.fail.values()],
                      {p: r.reached.get(p, z3.BoolVal(False)) for p in env.points})
        reached = [p for p in env.points if m[p]]
        if n <= len(reached):
            fails[reached[n - 1]] = True
    fixed += [v == fails[p] for p, v in env.fail.items()]
    if theorem is not None:
        parts, _, _, tenv = BUILDERS[theorem](driver, host)
        # the theorem's builder made its own env with the same names: its part under the same pins
        tfixed = pins(driver, tenv, spec) + [v == fails[p] for p, v in tenv.fail.items()]
        violated = _solve(tfixed, {"violated": z3.Not(parts[part])})["violated"]
    out = _solve_in(solver, fixed, terms)
    out["ret"] = signed(out["ret"])
    out["leaked"] = int(bool(out["leaked"]))
    if theorem is not None:
        out["violates"] = violated
    return out


def replay(theorem: str, driver: str, host: Optional[str] = None, backends: Sequence[str] = (),
           results: Optional[Dict[str, QuoteResult]] = None) -> Tuple[bool, List[str]]:
    """replay(theorem, driver, host=None, backends=(), results=None) -> (ok, lines): every failing
    part's counterexample, under ``host`` or both host assumptions (``results``: already proved, by
    host)."""
    hosts = [host] if host else list(HOSTS)
    ok, lines = True, []
    names = list(backends) or [b for b in _backend.BACKENDS if _has_kernel(b)]
    for h in hosts:
        res = (results or {}).get(h) or prove_quote(theorem, driver, h)
        lines.append(f"{theorem} @ {driver} ({h} host): {res.result} (expected {res.expected})"
                     + (f", failing {', '.join(res.failing_parts)}" if res.failing_parts else ""))
        ok = ok and res.ok
        if res.result != COUNTEREXAMPLE:
            lines.append("  nothing to replay: the theorem holds under this assumption")
            continue
        if res.path == "ioctl":
            part_ok, part_lines = _replay_ioctl(theorem, driver, h, res, names)
            ok = ok and part_ok
            lines += part_lines
            continue
        for part, cex in res.counterexamples.items():
            spec = spec_from_counterexample(driver, cex, f"replay:{theorem}:{part}")
            lines.append(f"  {part}: case host_fault={spec['host_fault']} host_params={spec['host_params']} "
                         f"signal={spec['signal']} misuse={spec['misuse']} tdcall={spec['tdcall']} "
                         f"fail_nth={spec['fail_nth']} inblob_len={spec['inblob_len']}")
            pred = predict(driver, spec, theorem, part, h)
            lines.append("    z3      : " + " ".join(f"{k}={pred[k]}" for k in COMPARED + ("disclosed",)))
            if not pred["violates"]:
                ok = False
                lines.append(f"    MISMATCH: with the test producer's quote the case no longer violates {part}")
            for name in names:
                record = campaign.run_case(name, driver, spec)
                got = {k: (int(bool(record[k])) if k == "leaked" else record[k]) for k in COMPARED}
                lines.append(f"    {name:8}: " + " ".join(f"{k}={got[k]}" for k in COMPARED))
                for k in COMPARED:
                    if got[k] != pred[k]:
                        ok = False
                        lines.append(f"    MISMATCH {k}: z3 {pred[k]}, {name} {got[k]}")
    lines.append("replayed: the emulator shows the same outcome" if ok else "replay FAILED")
    return ok, lines


def _replay_ioctl(theorem: str, driver: str, host: str, res: QuoteResult,
                  backends: Sequence[str]) -> Tuple[bool, List[str]]:
    """An ioctl path's counterexamples as campaign_quote_ioctl cases (proofs.quote_ioctl_replay)."""
    from proofs import quote_ioctl_replay as qi
    from proofs.quote_theorems import IOCTL_BUILDERS
    ok, lines = True, []
    for part, cex in res.counterexamples.items():
        spec = qi.spec_from_counterexample(driver, cex, f"replay:{theorem}:{part}")
        lines.append(f"  {part}: {qi.describe(spec)}")
        pred = qi.predict(driver, spec)
        lines.append("    z3      : " + " ".join(f"{k}={pred[k]}" for k in qi.COMPARED))
        if not qi.violates(driver, spec, IOCTL_BUILDERS[theorem], host, part):
            ok = False
            lines.append(f"    MISMATCH: with the test producer's quote the case no longer violates {part}")
        for name in backends:
            got = qi.record_values(campaign.run_case(name, driver, spec))
            lines.append(f"    {name:8}: " + " ".join(f"{k}={got[k]}" for k in qi.COMPARED))
            for k in qi.COMPARED:
                if got[k] != pred[k]:
                    ok = False
                    lines.append(f"    MISMATCH {k}: z3 {pred[k]}, {name} {got[k]}")
    return ok, lines


def _has_kernel(name: str) -> bool:
    try:
        return hasattr(_backend.load(name), "Kernel")
    except ImportError:
        return False
