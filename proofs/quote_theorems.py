"""The six quote-path theorems, stated once, instantiated per generation with a quote path and per host
assumption (``proofs.quote_path.HOSTS``: ``qemu``, a QEMU-conformant host; ``any``, every fault of the
menu). Each theorem is a conjunction of named parts; a counterexample is reported per part, so
"counterexamples both ways" is two parts failing.

The expected results (``expected``) follow from the generation's profile traits, each with the
reference that names the defect: the run fails when a part expected to hold fails, and when an
expected counterexample is no longer found.
"""

from __future__ import annotations

from typing import Callable, Dict, FrozenSet, Optional, Tuple

import z3

from proofs import abi as zabi
from proofs.quote_path import QuoteEnv, Request, next_request_issues, request
from tdxmodel import profiles as _profiles

QUOTE_THEOREMS: Tuple[str, ...] = ("quote_no_leak", "quote_errno_contract", "quote_timeout",
                                   "quote_length_safety", "quote_no_disclosure", "quote_ownership")
W = zabi.REG_BITS

#: The quote path's reference rows, per theorem.
STEPS = {
    "quote_no_leak": "quote.md §2.2 (init), §2.3 P5/P10-P11, §1.5 R6-R8",
    "quote_errno_contract": "quote.md §1.5 R1-R8, §2.3 P1-P11",
    "quote_timeout": "quote.md §2.4; ref §2.7",
    "quote_length_safety": "quote.md §2.3 P9-P11",
    "quote_no_disclosure": "quote.md §2.3 P9-P11, §1.5 R7",
    "quote_ownership": "quote.md §2.3 P2 and notes, §4.1 H8",
}
ANCHOR = "report.c tsm_report_read + tdx-guest.c tdx_report_new / wait_for_quote_completion"


def _request(driver: str, host: str) -> Tuple[QuoteEnv, Request, list]:
    env = QuoteEnv(driver)
    return env, request(driver, env), env.domain(host, driver)


def _vars(env: QuoteEnv, r: Request, **extra) -> Dict[str, z3.ExprRef]:
    out = env.variables()
    out.update({"ret": r.ret, "outblob_len": r.delivered, "copied": r.copied, "served": r.served,
                "disclosed": r.disclosed, "host_owns_after": r.owned_end})
    out.update(extra)
    return out


Parts = Dict[str, z3.BoolRef]


def quote_no_leak(driver: str, host: str):
    """No leak: every allocation of a request is freed or owned by the item (the outblob, cached
    until inblob is rewritten or the item removed), every lock released; module load leaks only the
    quote buffer whose conversion to shared failed (the deliberate init-time leak, quote.md §2.2)."""
    env, r, dom = _request(driver, host)
    parts: Parts = {"allocations": z3.And(z3.Not(r.leak), z3.Not(r.locks_unbalanced)),
                    "init": z3.Not(r.init_leak_undocumented)}
    return parts, dom, _vars(env, r, **{"init.ret": r.init_ret}), env


def quote_errno_contract(driver: str, host: str):
    """Errno contract: read(outblob) returns 0 or an errno of the generation's documented set
    (profiles.Quote.read_errnos), and 0 if and only if a non-empty quote from this request's host
    reply reached outblob."""
    env, r, dom = _request(driver, host)
    parts: Parts = {"documented": r.documented,
                    "zero_only_with_quote": z3.Implies(r.ret == 0, r.quote_reached),
                    "quote_means_zero": z3.Implies(r.quote_reached, r.ret == 0)}
    return parts, dom, _vars(env, r, quote_reached=r.quote_reached), env


def quote_timeout(driver: str, host: str):
    """Timeout: a request that reaches the wait and is not interrupted returns -ETIMEDOUT if and only
    if the host still owns the buffer after the 30th poll."""
    env, r, dom = _request(driver, host)
    t = r.ret == zabi.neg_errno("ETIMEDOUT", W)
    scope = z3.And(r.reached_wait, z3.Not(r.interrupted))
    parts: Parts = {"etimedout_only_when_owned": z3.Implies(z3.And(scope, t), r.owned_at_timeout),
                    "owned_means_etimedout": z3.Implies(z3.And(scope, r.owned_at_timeout), t)}
    return parts, dom, _vars(env, r, owned_after_poll_30=r.owned_at_timeout), env


def quote_length_safety(driver: str, host: str):
    """Host-length safety: the length the outblob is served with is the length kvmemdup copied (the
    host's out_len used once) and it is bounded by the buffer's data (size - 24)."""
    env, r, dom = _request(driver, host)
    q = _profiles.get(driver).quote
    parts: Parts = {"read_once": z3.Implies(r.reached_p11, r.served == r.copied),
                    "bounded": z3.Implies(r.reached_p11, z3.ULE(r.served, q.max_out_len))}
    return parts, dom, _vars(env, r), env


def quote_no_disclosure(driver: str, host: str):
    """No disclosure: every byte the caller reads from outblob comes from this request's shared
    buffer data (what the host wrote there); none from kernel memory past the buffer or past the
    outblob's allocation."""
    env, r, dom = _request(driver, host)
    parts: Parts = {"claim": z3.Implies(r.ret == 0, r.disclosed == 0)}
    return parts, dom, _vars(env, r), env


def quote_ownership(driver: str, host: str):
    """Ownership: no request is issued while the host owns the buffer: after any request, the next
    one issues GetQuote only when the host is done with the buffer."""
    env, r, dom = _request(driver, host)
    issues = next_request_issues(driver, r, env)
    parts: Parts = {"claim": z3.Not(z3.And(r.owned_end, issues))}
    return parts, dom, _vars(env, r, issued_while_owned=z3.And(r.owned_end, issues)), env


#: The counterexample to show first where a part has several kinds (checked as a preference only):
#: the errno contract's empty "successful" outblob (quote.md §2.3 notes; guest-components#823).
PREFER: Dict[Tuple[str, str], Callable[[Dict[str, z3.ExprRef]], list]] = {
    ("quote_errno_contract", "zero_only_with_quote"): lambda v: [v["outblob_len"] == 0],
}

BUILDERS: Dict[str, Callable] = {
    "quote_no_leak": quote_no_leak,
    "quote_errno_contract": quote_errno_contract,
    "quote_timeout": quote_timeout,
    "quote_length_safety": quote_length_safety,
    "quote_no_disclosure": quote_no_disclosure,
    "quote_ownership": quote_ownership,
}

# ---- what each generation is expected to show --------------------------------------------------------
_ASYNC = ("quote.md §2.3 notes: 'A VMM that queues the request asynchronously without writing IN_FLIGHT "
          "before resuming the vCPU yields an immediate \"success\" with out_len = 0, even on v7.1'")
_CITATIONS = {
    ("quote_errno_contract", "zero_only_with_quote", "qemu"):
        "ref §2.6 D9: 'Before D9: ERROR, SERVICE_UNAVAILABLE and a real timeout all returned success with "
        "an out_len-byte outblob, normally 0 bytes' (fixed by 0f409eaea53e, v7.1; guest-components#823)",
    ("quote_errno_contract", "zero_only_with_quote", "any"): _ASYNC,
    ("quote_timeout", "etimedout_only_when_owned", "qemu"):
        "ref §2.7: 'during sleep 30 ... -ETIMEDOUT although the quote is ready' (QEMU's 30 s timer ends "
        "every request there)",
    ("quote_timeout", "etimedout_only_when_owned", "any"):
        "ref §2.7: 'during sleep 30 ... -ETIMEDOUT although the quote is ready'",
    ("quote_timeout", "owned_means_etimedout", "any"):
        "ref §2.7: 'never (still IN_FLIGHT at check 31) ... returns 0'; 'The code fails it in both "
        "directions'",
    ("quote_length_safety", "read_once", "any"):
        "quote.md §2.1: c3fd16c3b98e 'Fix handling of host controlled quote buffer length': out_len read "
        "once from 7.0-rc6; before it the host-controlled out_len was read twice",
    ("quote_length_safety", "bounded", "any"):
        "ref §2.6: 'Before D10: the host-controlled out_len was read twice and never bounded'",
    ("quote_no_disclosure", "claim", "any"):
        "quote.md §2.3 P9 / ref §2.6 D10: an unbounded out_len copies kernel memory past the 8 KiB buffer "
        "(c3fd16c3b98e)",
    ("quote_ownership", "claim", "any"): _ASYNC + "; the next request's P2 sees no IN_FLIGHT and reuses "
                                                  "the buffer the host still writes",
}


def expected_failures(theorem: str, driver: str, host: str) -> FrozenSet[str]:
    """The parts expected to fail, from the generation's profile traits."""
    q = _profiles.get(driver).quote
    out = set()
    if theorem == "quote_errno_contract" and (host == "any" or not q.status_check):
        out.add("zero_only_with_quote")
    if theorem == "quote_timeout":
        out.add("etimedout_only_when_owned")
        if host == "any":
            out.add("owned_means_etimedout")
    if theorem == "quote_length_safety" and host == "any" and not q.out_len_once:
        out |= {"read_once", "bounded"}
    if theorem == "quote_no_disclosure" and host == "any" and not q.out_len_once:
        out.add("claim")
    if theorem == "quote_ownership" and host == "any":
        out.add("claim")
    return frozenset(out)


def citation(theorem: str, part: str, host: str) -> Optional[str]:
    return _CITATIONS.get((theorem, part, host))


ASSUMPTIONS = {
    "qemu": "QEMU-conformant host (quote.md §4.1): IN_FLIGHT written before the call returns, the 30 s "
            "timer, out_len written once as the quote's length, a SUCCESS carries a non-empty quote of at "
            "most size - 52 bytes; faults: none, service_time, error, service_unavailable, retry, "
            "no_interrupt",
    "any": "any host: every fault of the menu (never, oversize_out_len, out_len_changes, no_in_flight "
           "too), any quote length",
}
