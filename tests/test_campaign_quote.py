"""The campaign's quote cases (tdxmodel.campaign_quote through tdxmodel.campaign): what they cover,
the JSON contract of a quote record, the outcome classes of each generation (quote.md's step tables),
and the defects each generation shows, on every backend under test.
"""

import json
import os

import pytest

from tdxmodel import _backend, abi, campaign, campaign_quote, profiles

QUOTE_GENERATIONS = [p.name for p in profiles.PROFILES if p.quote is not None]
SEC = 1_000_000_000

# The errno sets of read(outblob), from the tables (quote.md §1.5 R1-R8, §2.3 P1-P11; P5 per
# tdx-abi.md §2.4/§2.5), with configfs's -EFAULT (copy_to_user) and -ENOENT (rmdir, §1.6).
_COMMON = {"0", "-EINVAL", "-EFBIG", "-EINTR", "-EBUSY", "-ENOMEM", "-EIO", "-ETIMEDOUT", "-EFAULT",
           "-ENOENT"}
EXPECTED_OUTCOMES = {
    "v6.7": _COMMON | {"-ENOTTY"},    # R3 -ENOTTY; P5's kmalloc temporaries -ENOMEM, TDCALL -EINVAL/-EIO
    "v6.11": _COMMON | {"-ENOTTY"},
    "v6.16": _COMMON | {"-ENXIO"},    # R3 -ENXIO; P5 under mr_lock: -EINTR/-ENXIO/-EBUSY/-EIO
    "v7.0": _COMMON | {"-ENXIO"},     # P9 -EFBIG (R8's is out of reach)
    "v7.1": _COMMON | {"-ENXIO"},     # P8 -EIO
}


def backend_names():
    env = os.environ.get("TDXMODEL_TEST_BACKENDS")
    return env.split(",") if env else list(_backend.BACKENDS)


@pytest.fixture(scope="module")
def records():
    """{(backend, driver): {case id: record}} for every quote case."""
    return {(b, d): {s["id"]: campaign.run_case(b, d, s) for s in campaign_quote.cases(d)}
            for b in backend_names() for d in QUOTE_GENERATIONS}


def each(records, driver):
    for b in backend_names():
        yield b, records[(b, driver)]


def q(driver):
    return profiles.get(driver).quote


# ---------------------------------------------------------------------------------------------- specs
def test_generations_without_a_quote_path_have_no_quote_cases():
    for p in profiles.PROFILES:
        assert bool(campaign_quote.cases(p.name)) == (p.quote is not None), p.name
    with pytest.raises(ValueError, match="quote path"):
        campaign.run_case("reference", "v6.2", campaign_quote.cases("v7.1")[0])


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_quote_cases_are_json_stable_and_in_the_campaign(driver):
    specs = campaign_quote.cases(driver)
    assert json.loads(json.dumps(specs)) == specs == campaign_quote.cases(driver)
    assert len({s["id"] for s in specs}) == len(specs)
    assert [s for s in campaign.cases(driver) if campaign.is_quote_case(s) and s["path"] == "configfs"] == specs
    for s in specs:
        assert s["path"] == "configfs"
        assert s["host_fault"] is None or s["host_fault"] in abi.HOST_FAULTS


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_cases_cover_faults_signals_misuses_and_points(records, driver):
    specs = campaign_quote.cases(driver)
    assert {s["host_fault"] for s in specs} >= set(abi.HOST_FAULTS) | {None}
    ids = {s["id"] for s in specs}
    assert {f"signal:sleep:{k}" for k in range(1, abi.GETQUOTE_TIMEOUT + 1)} <= ids
    assert "signal:quote_lock" in ids and ("signal:mr_lock" in ids) == profiles.get(driver).has_lock("mr_lock")
    assert {f"misuse:{m}" for m in campaign_quote.MISUSES} <= ids
    assert {"init:fail_decrypt", "init:fail_nth:1"} <= ids
    for _, recs in each(records, driver):
        failed = {t[0] for r in recs.values() if r["id"].startswith("fail_nth:") for t in r["trace"] if t[2]}
        # every point of the read (quote.md §2.3 P5/P10, configfs's copy_to_user), ref §7
        want = {p for p in profiles.get(driver).points
                if p in ("reportdata:kmalloc", "tdreport:kzalloc", "outblob:kvmemdup", "configfs:copy_to_user")}
        assert failed == want


# -------------------------------------------------------------------------------------------- records
@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_records_carry_the_json_contract(records, driver):
    for _, recs in each(records, driver):
        for r in recs.values():
            assert {"path", "host_fault", "ret", "outblob_len", "leaked", "syscalls"} <= set(r)
            assert r["ret"] <= 0 and r["outblob_len"] >= 0
            assert all({"call", "args", "ret"} <= set(c) for c in r["syscalls"]) and r["syscalls"]
            assert json.loads(json.dumps(r)) == r
            reads = [c for c in r["syscalls"] if c["call"] == "read"]
            if r["init"] is None:   # ret is the read(outblob) that returns the quote
                assert r["ret"] in [c["ret"] for c in reads] or (r["ret"] == 0 and reads)


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_outcome_classes_are_the_tables_errno_sets(records, driver):
    prof = profiles.get(driver)
    documented = {"0"} | {"-" + n for n in prof.errno_names(prof.quote.read_errnos)}
    assert documented == EXPECTED_OUTCOMES[driver]
    for _, recs in each(records, driver):
        assert {r["outcome"] for r in recs.values()} == EXPECTED_OUTCOMES[driver]


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_no_leak_but_the_deliberate_one_and_no_lock_held(records, driver):
    for _, recs in each(records, driver):
        for r in recs.values():
            assert r["locks_held"] == 0, r["id"]
            if r["id"] == "init:fail_decrypt":   # quote.md §2.2: the pages are leaked on purpose
                assert r["leaked"] == 1 and r["leaked_pages"] == 1 << q(driver).buf_order
                assert r["ret"] == -abi.ENOMEM
            else:
                assert r["leaked"] == 0 and r["leaked_pages"] == 0, r["id"]


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_fail_nth_sweep_ends_when_the_fault_no_longer_fires(records, driver):
    for _, recs in each(records, driver):
        sweep = [r for r in recs.values() if r["id"].startswith("fail_nth:")]
        assert [r["fail_nth_fired"] for r in sweep] == [True] * (len(sweep) - 1) + [False]
        for r in sweep[:-1]:
            assert [t[2] for t in r["trace"]].index(True) == r["fail_nth"] - 1
            assert r["ret"] in (-abi.ENOMEM, -abi.EFAULT)
        assert sweep[-1]["ret"] == 0 and sweep[-1]["outblob_is_quote"]


# ------------------------------------------------------------------------ what each generation shows
@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_errors_before_7_1_are_empty_successes(records, driver):
    for _, recs in each(records, driver):
        for case in ("host:error", "host:service_unavailable"):
            r = recs[case]
            if q(driver).status_check:
                assert r["ret"] == -abi.EIO
            else:   # quote.md §2.3 P8: "success with a zero-length Quote"
                assert (r["ret"], r["outblob_len"]) == (0, 0)
        # an asynchronous host: status 0 at the first check, empty even on 7.1 (quote.md §2.3 notes),
        # and the next request is issued into the buffer the host still owns
        r = recs["host:no_in_flight"]
        assert (r["ret"], r["outblob_len"], r["clock_ns"]) == (0, 0, 0)
        assert r["host_owns_after"] and r["issued_while_owned"]


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_wait_loop_off_by_one_both_ways(records, driver):
    for _, recs in each(records, driver):
        ready_late = recs["host:service_time:29.5"]   # ready during sleep 30: -ETIMEDOUT all the same
        assert (ready_late["ret"], ready_late["clock_ns"], ready_late["host_owns_after"]) == \
            (-abi.ETIMEDOUT, 30 * SEC, False)
        never = recs["host:never"]                   # still owned at check 31: not -ETIMEDOUT
        assert never["clock_ns"] == 30 * SEC and never["host_owns_after"]
        assert never["ret"] == (-abi.EIO if q(driver).status_check else 0) and never["outblob_len"] == 0
        assert never["next_ret"] == -abi.EBUSY       # P2
        assert recs["host:service_time:28.5"]["outblob_is_quote"]


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_a_signal_at_each_sleep_and_lock(records, driver):
    for _, recs in each(records, driver):
        for k in range(1, abi.GETQUOTE_TIMEOUT + 1):
            r = recs[f"signal:sleep:{k}"]
            assert r["ret"] == -abi.EINTR and r["clock_ns"] == (k - 1) * SEC + SEC // 4
            assert r["host_owns_after"] and r["next_ret"] == -abi.EBUSY and not r["issued_while_owned"]
        for lock in ("quote_lock", "mr_lock"):
            if f"signal:{lock}" in recs:
                r = recs[f"signal:{lock}"]
                assert r["ret"] == -abi.EINTR and r["get_quotes"] == 1 and r["next_ret"] == 0
        assert recs["misuse:retry_after_eintr"]["ret"] == -abi.EBUSY


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_host_lengths(records, driver):
    for _, recs in each(records, driver):
        over = recs[f"host:oversize_out_len:{q(driver).max_out_len + 1000}"]
        limit = recs[f"host:oversize_out_len:{q(driver).outblob_max + 1}"]
        changes = recs["host:out_len_changes:3000"]
        assert limit["ret"] == -abi.EFBIG    # R8 before 7.0, P9 from 7.0
        if q(driver).out_len_once:           # P9: read once and bounded
            assert over["ret"] == -abi.EFBIG and changes["outblob_is_quote"]
        else:                                # kernel memory past the buffer reaches the caller
            assert over["ret"] == 0 and over["foreign_bytes"] == 1000
            assert changes["outblob_len"] == 3000 and not changes["outblob_is_quote"]


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_misuses(records, driver):
    for _, recs in each(records, driver):
        for m in ("no_inblob", "short_inblob", "write_past_64", "zero_length_write", "read_before_close"):
            assert recs[f"misuse:{m}"]["ret"] == -abi.EINVAL, m
        writes = [c for c in recs["misuse:write_past_64"]["syscalls"] if c["call"] == "write"]
        assert writes[0]["ret"] == -abi.EFBIG
        assert recs["misuse:rmdir_under_fd"]["ret"] == -abi.ENOENT
        assert recs["misuse:no_provider"]["ret"] == -q(driver).no_provider_errno
        assert recs["misuse:zero_count_read"]["ret"] == -abi.EFAULT
        assert recs["misuse:read_to_unmapped"]["ret"] == -abi.EFAULT
        for m in ("open_outblob_for_write", "open_inblob_for_read"):
            r = recs[f"misuse:{m}"]
            assert r["syscalls"][1]["ret"] == -abi.EACCES and r["outblob_is_quote"]
        assert recs["misuse:mkdir_twice"]["syscalls"][1]["ret"] == -abi.EEXIST
        cached = recs["misuse:reread_cached"]
        assert cached["outblob_is_quote"] and cached["get_quotes"] == 2   # 1 + the next request


def test_bad_quote_specs_are_value_errors():
    base = campaign_quote.cases("v7.1")[0]
    for key, bad in (("host_fault", "explode"), ("host_params", {"seconds": -1}), ("fail_nth", -1),
                     ("tdcall", {"status": 0}), ("signal", {"at": "sleep", "sleep": 0}),
                     ("misuse", "nope"), ("init", {"fail_nth": 0}), ("inblob_len", 65), ("path", "ioctl")):
        spec = dict(base)
        spec[key] = bad
        with pytest.raises(ValueError):
            campaign.run_case("reference", "v7.1", spec)
    spec = dict(base)
    del spec["signal"]
    with pytest.raises(ValueError, match="signal"):
        campaign.run_case("reference", "v7.1", spec)
