"""The quote theorems on the ioctl quote paths (proofs.quote_ioctl): what each generation shows and
why (its profiles.IoctlQuote traits), and the encoding against every case of the ioctl campaign
(tdxmodel.campaign_quote_ioctl), as run_case records it on each backend. The matrix of expected
results and the replays of every counterexample run in proofs/test_quote_theorems.py."""

import dataclasses
import functools
import json

import pytest

from proofs.__main__ import main
from proofs.engine import COUNTEREXAMPLE, PROVED
from proofs.quote_ioctl_replay import COMPARED, predict, spec_from_counterexample
from proofs.quote_path import HOSTS
from proofs.quote_runner import IOCTL_DRIVERS, prove_quote
from proofs.quote_theorems import QUOTE_THEOREMS, expected_failures
from tdxmodel import abi, campaign, campaign_quote_ioctl, profiles

pytestmark = pytest.mark.proof


@functools.lru_cache(maxsize=None)
def result(theorem, driver, host):
    return prove_quote(theorem, driver, host)


def _iq(driver):
    return profiles.get(driver).ioctl_quote


def test_every_result_is_on_the_ioctl_path():
    for d in IOCTL_DRIVERS:
        for t in QUOTE_THEOREMS:
            for h in HOSTS:
                r = result(t, d, h)
                assert r.path == "ioctl" and "tdx_driver.c" in r.anchor and r.ok, (t, d, h, r.failing_parts)


@pytest.mark.parametrize("driver", IOCTL_DRIVERS)
def test_no_leak(driver):
    iq = _iq(driver)
    for h in HOSTS:
        r = result("quote_no_leak", driver, h)
        if iq.lock_kept_on_early_return:   # v4: the request copy's and the len check's returns
            cex = r.counterexamples["locks"]
            assert cex["locks_held"] == 1 and cex["ret"] in (-abi.EFAULT, -abi.EINVAL)
        else:
            assert "locks" not in r.failing_parts
    if iq.parallel:   # an orphan stays when the host completes without the vector
        assert result("quote_no_leak", driver, "qemu").result == PROVED
        cex = result("quote_no_leak", driver, "any").counterexamples["allocations"]
        assert cex["host_fault"] == abi.HOST_FAULT_NO_INTERRUPT and cex["ret"] == -abi.EINTR
        assert cex["leaked_after_host"] > 0


@pytest.mark.parametrize("driver", IOCTL_DRIVERS)
def test_errno_contract(driver):
    iq = _iq(driver)
    qemu = result("quote_errno_contract", driver, "qemu")
    if iq.checks_status:   # v4: -EIO, but the host's ERROR reply is already in the caller's buffer
        cex = qemu.counterexamples["failure_leaves_buffer"]
        assert cex["ret"] == -abi.EIO and cex["status_after"] == abi.GET_QUOTE_ERROR
        assert "zero_only_with_quote" not in qemu.failing_parts
    else:                  # downstream: 0 with the host's ERROR and nothing: the empty "successful" reply
        cex = qemu.counterexamples["zero_only_with_quote"]
        assert cex["ret"] == 0 and cex["outblob_len"] == 0
        assert "failure_leaves_buffer" not in qemu.failing_parts
    for h in HOSTS:
        assert not {"documented", "quote_means_zero"} & set(result("quote_errno_contract", driver, h).failing_parts)


@pytest.mark.parametrize("driver", IOCTL_DRIVERS)
def test_timeout(driver):
    iq = _iq(driver)
    for h in HOSTS:
        r = result("quote_timeout", driver, h)
        if iq.timeout_ms:   # v4 waits the caller's whole timeout for a vector H5 never sends
            assert set(r.failing_parts) == {"gives_up_only_when_owned"}
            cex = r.counterexamples["gives_up_only_when_owned"]
            assert cex["timed_out"] and not cex["owned_at_timeout"]
            assert cex["clock_ns"] == iq.timeout_ms * 1_000_000 and cex["ret"] == -abi.EIO
        else:               # no timeout: never gives up; a signal is needed for a host that is done
            assert set(r.failing_parts) == {"signal_needed_only_while_owned"}
            cex = r.counterexamples["signal_needed_only_while_owned"]
            assert cex["interrupted"] and not cex["owned_at_signal"] and cex["ret"] == -iq.interrupted_errno


@pytest.mark.parametrize("driver", IOCTL_DRIVERS)
def test_length_safety_holds(driver):
    for h in HOSTS:
        assert result("quote_length_safety", driver, h).result == PROVED


@pytest.mark.parametrize("driver", IOCTL_DRIVERS)
def test_no_disclosure(driver):
    """The caller's own bytes only; but a buffer freed while the host owns it is the next request's, and
    the late reply is what that caller gets."""
    for h in HOSTS:
        r = result("quote_no_disclosure", driver, h)
        assert "claim" not in r.failing_parts
        if "next_request" in r.failing_parts:
            cex = r.counterexamples["next_request"]
            assert cex["freed_while_owned"] and cex["next_ret"] == 0 and not cex["next_outblob_is_own"]
    assert (result("quote_no_disclosure", driver, "qemu").result == PROVED) == _iq(driver).parallel
    assert result("quote_no_disclosure", driver, "any").result == COUNTEREXAMPLE


@pytest.mark.parametrize("driver", IOCTL_DRIVERS)
def test_ownership(driver):
    iq = _iq(driver)
    if iq.parallel:   # each request its own buffer, orphaned while IN_FLIGHT: only an async host breaks it
        assert result("quote_ownership", driver, "qemu").result == PROVED
        cex = result("quote_ownership", driver, "any").counterexamples["claim"]
        assert cex["host_fault"] == abi.HOST_FAULT_NO_IN_FLIGHT and cex["freed_while_owned"]
    else:             # v4: a signal (or the timeout) frees the buffer the host still owns
        for h in HOSTS:
            cex = result("quote_ownership", driver, h).counterexamples["claim"]
            assert cex["freed_while_owned"] and cex["ret"] == -abi.EIO


def test_expectations_follow_the_traits_not_the_name(monkeypatch):
    """The same encoding under v4's profile with downstream's lock and status traits: its expected
    results move with the traits, and the solver agrees."""
    v4 = profiles.get("v4-2022-04")
    iq = dataclasses.replace(v4.ioctl_quote, lock_kept_on_early_return=False, checks_status=False)
    monkeypatch.setitem(profiles.BY_NAME, "v4-2022-04", dataclasses.replace(v4, ioctl_quote=iq))
    assert expected_failures("quote_no_leak", "v4-2022-04", "qemu") == frozenset()
    assert expected_failures("quote_errno_contract", "v4-2022-04", "qemu") == {"zero_only_with_quote"}
    for t in ("quote_no_leak", "quote_errno_contract"):
        r = prove_quote(t, "v4-2022-04", "qemu")
        assert r.ok, (t, r.failing_parts)


# ---- the encoding against every case of the ioctl campaign --------------------------------------------
CASES = [(d, s["id"]) for d in IOCTL_DRIVERS for s in campaign_quote_ioctl.cases(d)]
_SPECS = {(d, s["id"]): s for d in IOCTL_DRIVERS for s in campaign_quote_ioctl.cases(d)}


def test_the_ioctl_campaign_is_covered():
    for d in IOCTL_DRIVERS:
        ids = {c for drv, c in CASES if drv == d}
        assert {"ioctl:quote", "ioctl:host:never", "ioctl:host:no_in_flight", "ioctl:signal:wait",
                "ioctl:fail_nth:1", "ioctl:misuse:len_zero"} <= ids
        assert len(ids) == len(campaign_quote_ioctl.cases(d))   # every case is stated


@pytest.mark.parametrize("driver,case_id", CASES, ids=[f"{d}:{c}" for d, c in CASES])
def test_campaign_ioctl_case_matches_the_encoding(driver, case_id, backend):
    spec = _SPECS[(driver, case_id)]
    want = predict(driver, spec)
    record = campaign.run_case(backend.BACKEND_NAME, driver, spec)
    assert {k: record[k] for k in COMPARED} == want, record["description"]


def test_spec_from_counterexample_is_a_valid_ioctl_case():
    r = result("quote_ownership", "v4-2022-04", "qemu")
    spec = spec_from_counterexample("v4-2022-04", r.counterexamples["claim"], "x")
    campaign_quote_ioctl.validate(spec)
    assert spec["path"] == "ioctl" and spec["signal"] == {"at": "wait"}


def test_json_lists_the_ioctl_path(capsys):
    assert main(["--json", "--driver", "v4-2022-04"]) == 0
    quote = [r for r in json.loads(capsys.readouterr().out) if r["theorem"].startswith("quote_")]
    assert {(r["theorem"], r["host"]) for r in quote} == {(t, h) for t in QUOTE_THEOREMS for h in HOSTS}
    assert all(r["path"] == "ioctl" and r["ok"] for r in quote)
    failing = {(r["theorem"], p) for r in quote for p in r["failing_parts"]}
    assert {("quote_no_leak", "locks"), ("quote_ownership", "claim"), ("quote_no_disclosure", "next_request"),
            ("quote_errno_contract", "failure_leaves_buffer")} <= failing
    assert all(r["citations"][p] for r in quote for p in r["failing_parts"])
    assert any(r["result"] == COUNTEREXAMPLE for r in quote)


def test_replay_cli_on_the_ioctl_path(capsys):
    assert main(["--replay", "quote_no_leak", "--driver", "v4-2022-04", "--host", "qemu",
                 "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "locks_held=1" in out and "replayed" in out and "MISMATCH" not in out


# ---- the campaign pins each trait: a profile that says otherwise mispredicts some case ------------------
def _flipped(iq, trait):
    value = getattr(iq, trait)
    if trait == "interrupted_errno":
        return abi.EIO if value == abi.EINTR else abi.EINTR
    if trait == "timeout_ms":
        return 0 if value else abi.HOST_QGS_TIMEOUT_MS
    return not value


_TRAITS = ("parallel", "lock_kept_on_early_return", "checks_status", "drops_copy_fault",
           "interrupted_errno", "timeout_ms")
# downstream given a timeout: it would show only in a wait that nothing else ends, which no campaign
# case can run (it would hang); quote_timeout states that wait instead
FLIPS = [(d, t) for d in IOCTL_DRIVERS for t in _TRAITS if not (t == "timeout_ms" and not _iq(d).timeout_ms)]


@functools.lru_cache(maxsize=None)
def _reference_records(driver):
    return {s["id"]: campaign.run_case("reference", driver, s) for s in campaign_quote_ioctl.cases(driver)}


@pytest.mark.parametrize("driver,trait", FLIPS, ids=[f"{d}:{t}" for d, t in FLIPS])
def test_a_wrong_trait_mispredicts_a_campaign_case(driver, trait, monkeypatch):
    from proofs import quote_ioctl_replay
    records = _reference_records(driver)
    prof = profiles.get(driver)
    iq = dataclasses.replace(prof.ioctl_quote, **{trait: _flipped(prof.ioctl_quote, trait)})
    monkeypatch.setitem(profiles.BY_NAME, driver, dataclasses.replace(prof, ioctl_quote=iq))
    quote_ioctl_replay._encoding.cache_clear()
    try:
        wrong = []
        for s in campaign_quote_ioctl.cases(driver):
            try:
                want = predict(driver, s)
            except ValueError:   # the wrong encoding cannot even state the case the emulator ran
                wrong.append(s["id"])
                continue
            if {k: records[s["id"]][k] for k in COMPARED} != want:
                wrong.append(s["id"])
        assert wrong, f"{driver} with {trait} flipped still predicts every campaign case"
    finally:
        quote_ioctl_replay._encoding.cache_clear()


# ---- and beyond the campaign: each fault x service time around the next request's x a signal -----------
SWEEP = [campaign_quote_ioctl._spec(f"sweep:{f}:{sec}:{bool(sig)}", "sweep", host_fault=f,
                                    host_params={"seconds": sec}, signal=sig)
         for f in ("service_time", "error", "no_in_flight", "no_interrupt", "never", "oversize_out_len")
         for sec in (0, 0.001, abi.HOST_SERVICE_TIME_US / 1e6, 5) for sig in (None, {"at": "wait"})]


@pytest.mark.parametrize("driver", IOCTL_DRIVERS)
def test_the_encoding_beyond_the_campaign(driver, backend):
    stated = 0
    for spec in SWEEP:
        try:
            want = predict(driver, spec)
        except ValueError:   # a wait nothing ends (no timeout, no signal): run_case would hang too
            assert not _iq(driver).timeout_ms and spec["signal"] is None
            continue
        stated += 1
        record = campaign.run_case(backend.BACKEND_NAME, driver, spec)
        assert {k: record[k] for k in COMPARED} == want, spec["id"]
    assert stated >= len(SWEEP) * 3 // 4
