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
    ("quote_errno_contract", "zero_only_with_quote"): lambda v: [v["outblob_len"] == 0] + (
        # an ioctl path: the host's ERROR reply handed back as a 0 return (quote.md §2.6)
        [v["status_after"] == zabi.bv("GET_QUOTE_ERROR", W)] if "status_after" in v else []),
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
    if path_of(driver) == "ioctl":
        return ioctl_expected_failures(theorem, driver, host)
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


def citation(theorem: str, part: str, host: str, driver: Optional[str] = None) -> Optional[str]:
    if driver is not None and path_of(driver) == "ioctl":
        return ioctl_citation(theorem, part, host, driver)
    return _CITATIONS.get((theorem, part, host))


ASSUMPTIONS = {
    "qemu": "QEMU-conformant host (quote.md §4.1): IN_FLIGHT written before the call returns, the 30 s "
            "timer, out_len written once as the quote's length, a SUCCESS carries a non-empty quote of at "
            "most size - 52 bytes; faults: none, service_time, error, service_unavailable, retry, "
            "no_interrupt",
    "any": "any host: every fault of the menu (never, oversize_out_len, out_len_changes, no_in_flight "
           "too), any quote length",
}


# ---- the ioctl quote paths (proofs.quote_ioctl): the same six theorems over one get_quote ioctl -------
PATHS = ("configfs", "ioctl")


def path_of(driver: str) -> Optional[str]:
    """The quote path of a generation: ``configfs`` (profiles.Quote), ``ioctl`` (profiles.IoctlQuote)."""
    p = _profiles.get(driver)
    return "configfs" if p.quote is not None else "ioctl" if p.ioctl_quote is not None else None


#: The reference rows per theorem, per get_quote command (its tdxmodel.abi name: the code it mirrors).
IOCTL_STEPS = {
    "TDX_CMD_GEN_QUOTE": {   # v4 3/3 (ref §2.2), the driver's #1-#11
        "quote_no_leak": "ref §2.2 v4 3/3 #1-#5, #11 (early returns keep quote_lock)",
        "quote_errno_contract": "ref §2.2 v4 3/3 #3-#10 (copy back before the status check)",
        "quote_timeout": "ref §2.2 v4 3/3 #8; quote.md §4.1 H5, §3.3",
        "quote_length_safety": "ref §2.2 v4 3/3 #3, #5, #9",
        "quote_no_disclosure": "ref §2.2 v4 3/3 #5, #8-#9 (a freed buffer is the next request's)",
        "quote_ownership": "ref §2.2 v4 3/3 #8, #11 (freed on timeout while the VMM owns it)",
    },
    "TDX_CMD_GET_QUOTE": {   # Intel downstream (quote.md §2.6 1-7)
        "quote_no_leak": "quote.md §2.6 2, 5-6 (orphaned entries)",
        "quote_errno_contract": "quote.md §2.6 1-7",
        "quote_timeout": "quote.md §2.6 5-6 (no timeout), §4.1 H5, §3.3",
        "quote_length_safety": "quote.md §2.6 2, 7",
        "quote_no_disclosure": "quote.md §2.6 2, 5-7",
        "quote_ownership": "quote.md §2.6 4-6 (parallel requests, each its own buffer)",
    },
}


def ioctl_steps(theorem: str, driver: str) -> str:
    cmd = _profiles.get(driver).command("get_quote")
    return IOCTL_STEPS.get(cmd.name, {}).get(theorem, cmd.ref)


IOCTL_ANCHOR = "tdx_driver.c gen_quote_v4 (v4 3/3 tdx_get_tdquote) / get_quote_downstream (tdx_get_quote)"


def _ioctl_request(driver: str, host: str):
    from proofs.quote_ioctl import IoctlEnv, request as ioctl_request
    env = IoctlEnv(driver)
    r = ioctl_request(driver, env)
    return env, r, env.domain(host) + [r.returns]


def _ioctl_vars(env, r, **extra) -> Dict[str, z3.ExprRef]:
    out = env.variables()
    out.update({"ret": r.ret, "outblob_len": r.outblob_len, "status_after": r.status_after,
                "copied_back": r.copied_back, "host_owns_after": r.host_owns_after,
                "freed_while_owned": r.freed_while_owned, "locks_held": r.locks_held,
                "leaked_after_host": r.leaked_after_host, "clock_ns": r.clock_ns})
    out.update(extra)
    return out


def ioctl_no_leak(driver: str, host: str):
    """No leak: every allocation of the call is freed, or owned by the host's request (an orphan on
    quote_list, freed by the notify callback when the host completes); no lock is held when the call
    returns. (The ioctl paths allocate nothing at load: the vector's registration is only logged.)"""
    env, r, dom = _ioctl_request(driver, host)
    parts: Parts = {"allocations": z3.Not(z3.And(r.leaked_after_host != 0, z3.Not(r.owned_after_host))),
                    "locks": r.locks_held == 0}
    return parts, dom, _ioctl_vars(env, r, leaked=r.leaked), env


def ioctl_errno_contract(driver: str, host: str):
    """Errno contract: the ioctl returns 0 or an errno of the command's documented set
    (profiles.IoctlQuote.errnos); 0 if and only if this request's non-empty host reply, with its length
    in out_len, reached the caller's buffer; and a failing call leaves that buffer as it was."""
    env, r, dom = _ioctl_request(driver, host)
    parts: Parts = {"documented": r.documented,
                    "zero_only_with_quote": z3.Implies(r.ret == 0, r.quote_reached),
                    "quote_means_zero": z3.Implies(r.quote_reached, r.ret == 0),
                    "failure_leaves_buffer": z3.Implies(r.ret != 0, z3.Not(r.copied_back))}
    return parts, dom, _ioctl_vars(env, r, quote_reached=r.quote_reached), env


def ioctl_timeout(driver: str, host: str):
    """Timeout. With the caller's timeout (v4): an uninterrupted wait gives up (-EIO) if and only if
    the host still owns the buffer when the timeout expires. Without one (downstream): the wait ends
    only by the completion's vector or a signal, so an uninterrupted call never returns while the
    host owns the buffer, and a signal is needed only while the host still owns it (a wait the host
    has finished with ends by itself)."""
    env, r, dom = _ioctl_request(driver, host)
    scope = z3.And(r.reached_wait, z3.Not(r.interrupted))
    if _profiles.get(driver).ioctl_quote.timeout_ms:
        parts: Parts = {"gives_up_only_when_owned": z3.Implies(r.timed_out, r.owned_at_timeout),
                        "owned_means_gives_up": z3.Implies(z3.And(scope, r.owned_at_timeout), r.timed_out)}
    else:
        parts = {"no_give_up_while_owned": z3.Implies(scope, z3.Not(r.host_owns_after)),
                 "signal_needed_only_while_owned": z3.Implies(r.interrupted, r.owned_at_signal)}
    return parts, dom, _ioctl_vars(env, r, timed_out=r.timed_out, interrupted=r.interrupted,
                                   owned_at_timeout=r.owned_at_timeout,
                                   owned_at_signal=r.owned_at_signal), env


def ioctl_length_safety(driver: str, host: str):
    """Host-length safety: the copy back is sized by the caller's len, read once with the request
    (PAGE_ALIGN(len), the buffer the driver allocated), whatever out_len the host writes; the host's
    out_len never sizes a kernel copy (it reaches the caller in the header, for the client to check)."""
    env, r, dom = _ioctl_request(driver, host)
    parts: Parts = {"read_once": z3.Implies(r.copied_back, r.copied_len == r.buffer_len),
                    "bounded": z3.ULE(r.copied_len, r.buffer_len)}
    return parts, dom, _ioctl_vars(env, r, copied_len=r.copied_len), env


def ioctl_no_disclosure(driver: str, host: str):
    """No disclosure: every byte the call writes to the caller's buffer comes from this request's own
    shared buffer (zeroed at allocation: the caller's own request bytes and the host's reply), none
    from kernel memory past it; and a clean next request that returns 0 holds its own quote, not this
    request's late reply."""
    env, r, dom = _ioctl_request(driver, host)
    parts: Parts = {"claim": r.beyond_buffer == 0,
                    "next_request": z3.Implies(z3.And(r.next_runs, r.next_ret == 0), r.next_outblob_is_own)}
    return parts, dom, _ioctl_vars(env, r, beyond_buffer=r.beyond_buffer, next_ret=r.next_ret,
                                   next_outblob_is_own=r.next_outblob_is_own), env


def ioctl_ownership(driver: str, host: str):
    """Ownership: no buffer the host owns goes back to the allocator (where the next request's
    dma_alloc_coherent, or any allocation, can get it and the host's late reply lands in it). Each
    request has its own buffer, so no request is issued into one the host owns unless one was freed."""
    env, r, dom = _ioctl_request(driver, host)
    parts: Parts = {"claim": z3.Not(r.freed_while_owned)}
    return parts, dom, _ioctl_vars(env, r), env


IOCTL_BUILDERS: Dict[str, Callable] = {
    "quote_no_leak": ioctl_no_leak,
    "quote_errno_contract": ioctl_errno_contract,
    "quote_timeout": ioctl_timeout,
    "quote_length_safety": ioctl_length_safety,
    "quote_no_disclosure": ioctl_no_disclosure,
    "quote_ownership": ioctl_ownership,
}


def builder(theorem: str, driver: str) -> Callable:
    """The theorem's encoding for the generation's quote path."""
    return (IOCTL_BUILDERS if path_of(driver) == "ioctl" else BUILDERS)[theorem]


def ioctl_expected_failures(theorem: str, driver: str, host: str) -> FrozenSet[str]:
    """The parts expected to fail on an ioctl path, from its profiles.IoctlQuote traits."""
    from proofs.quote_ioctl import vector_registered
    iq = _profiles.get(driver).ioctl_quote
    no_vector = host == "any" or not vector_registered(driver)   # a completion without the vector
    out = set()
    if theorem == "quote_no_leak":
        if iq.lock_kept_on_early_return:
            out.add("locks")
        if iq.parallel and no_vector:        # an orphan is freed by the vector's callback only
            out.add("allocations")
    if theorem == "quote_errno_contract":
        if not iq.checks_status or iq.drops_copy_fault or host == "any":
            out.add("zero_only_with_quote")
        if iq.checks_status:                 # the check comes after the copy back
            out.add("failure_leaves_buffer")
    if theorem == "quote_timeout":           # H5's status comes without a completion, so no vector
        out.add("gives_up_only_when_owned" if iq.timeout_ms else "signal_needed_only_while_owned")
    if theorem == "quote_ownership" and (not iq.parallel or host == "any"):
        out.add("claim")
    if theorem == "quote_no_disclosure" and (not iq.parallel or host == "any"):
        out.add("next_request")              # a buffer freed while owned is the next request's
    return frozenset(out)


_H5 = ("quote.md §4.1 H5: 'no QGS configured: write the header with status QGS_UNAVAILABLE; ret SUCCESS': "
       "no completion, so no vector (§3.3: injected 'After every completed GetQuote')")


def ioctl_citation(theorem: str, part: str, host: str, driver: str) -> Optional[str]:
    iq = _profiles.get(driver).ioctl_quote
    if (theorem, part) == ("quote_no_leak", "locks"):
        return "ref §2.2 v4 3/3 defects: 'early returns keep quote_lock held'"
    if (theorem, part) == ("quote_no_leak", "allocations"):
        return ("quote.md §2.6 6: 'A signal → -EINTR, and the entry is orphaned until the VMM finishes'; "
                "only the event-notify IRQ's work frees it (§2.6 5), and the vector is optional (§3.3): a "
                "host completing without it leaves the orphan for good (Analysis)")
    if (theorem, part) == ("quote_errno_contract", "zero_only_with_quote"):
        if not iq.checks_status or iq.drops_copy_fault:
            return ("quote.md §2.6 7: 'It returns 0 even if that copy_to_user failed (the -EFAULT it "
                    "records is dropped)'; the status is never checked: the client does (§2.7 5.1 "
                    "'status != 0 || out_len <= 4'), so an ERROR reply is a 0 return")
        return ("quote.md §2.7 5.2: the host's out_len reaches the caller unchecked (no ioctl path reads "
                "it); libtdx_attest checks 'BE32(data[0..3]) != out_len − 4' itself")
    if (theorem, part) == ("quote_errno_contract", "failure_leaves_buffer"):
        return "ref §2.2 v4 3/3 defects: 'the buffer is copied back before the status is checked'"
    if (theorem, part) == ("quote_timeout", "gives_up_only_when_owned"):
        return _H5 + "; v4 waits for the vector only: the caller's whole timeout, then -EIO"
    if (theorem, part) == ("quote_timeout", "signal_needed_only_while_owned"):
        return _H5 + "; quote.md §2.6 6: 'wait_for_completion_interruptible with no timeout': only a signal " \
                     "ends the wait"
    if (theorem, part) == ("quote_no_disclosure", "next_request"):
        if not iq.parallel:
            return ("ref §2.2 v4 3/3 defects: 'on timeout the buffer is freed while the VMM may still own it'; "
                    "the next request's dma_alloc_coherent gets those pages, the late reply lands in them and "
                    "its vector completes v4's one req_compl: the next caller returns 0 with this request's "
                    "quote (Analysis)")
        return (_ASYNC + "; the buffer it frees is the next request's, whose header the late reply "
                "overwrites, so the work completes it with this request's quote (Analysis)")
    if (theorem, part) == ("quote_ownership", "claim"):
        if not iq.parallel:
            return ("ref §2.2 v4 3/3 defects: 'on timeout the buffer is freed while the VMM may still own "
                    "it' (a signal takes the same exit: wait_for_completion_interruptible_timeout < 0)")
        return (_ASYNC + "; quote.md §2.6 6: an interrupted request orphans its entry only while the "
                "status says IN_FLIGHT, else frees the buffer the host still writes")
    return None


IOCTL_ASSUMPTIONS = {
    "qemu": "QEMU-conformant host (quote.md §4.1, §3.3): IN_FLIGHT written before the call returns, the "
            "30 s timer, the registered notify vector injected after every completed GetQuote, out_len "
            "the reply's length, a SUCCESS carries a non-empty quote of at most size - 52 bytes; faults: "
            "none, service_time, error, service_unavailable, retry (no_interrupt too when no valid vector "
            "is registered)",
    "any": "any host: every fault of the menu (never, oversize_out_len, out_len_changes, no_in_flight, "
           "no_interrupt too), any quote length",
}
