"""The quote theorems: each result per generation and host assumption is the expected one (with the
parts expected to fail, and a citation for each); each counterexample replays on the emulator; and
the encoding states the outcome of every campaign quote case it can express, as run_case records it.
"""

import functools
import json

import pytest

from proofs.__main__ import main
from proofs.engine import COUNTEREXAMPLE, PROVED, UNKNOWN
from proofs.quote_path import HOSTS
from proofs.quote_replay import COMPARED, encodable, predict, replay
from proofs.quote_runner import CONFIGFS_DRIVERS, IOCTL_DRIVERS, QUOTE_DRIVERS, prove_quote, run_quote_all
from proofs.quote_theorems import QUOTE_THEOREMS, expected_failures
from tdxmodel import abi, campaign, campaign_quote, profiles

pytestmark = pytest.mark.proof

MATRIX = [(t, d, h) for d in QUOTE_DRIVERS for t in QUOTE_THEOREMS for h in HOSTS]


@functools.lru_cache(maxsize=None)
def result(theorem, driver, host):
    return prove_quote(theorem, driver, host)


def test_the_quote_path_generations():
    assert CONFIGFS_DRIVERS == tuple(p.name for p in profiles.PROFILES if p.quote is not None)
    assert IOCTL_DRIVERS == tuple(p.name for p in profiles.PROFILES if p.ioctl_quote is not None)
    assert {"v6.7", "v6.11", "v6.16", "v7.0", "v7.1"} <= set(CONFIGFS_DRIVERS)
    assert {"intel-downstream", "v4-2022-04"} <= set(IOCTL_DRIVERS)
    assert set(QUOTE_DRIVERS) == set(CONFIGFS_DRIVERS) | set(IOCTL_DRIVERS)


@pytest.mark.parametrize("theorem,driver,host", MATRIX, ids=[f"{t}@{d}:{h}" for t, d, h in MATRIX])
def test_quote_theorem(theorem, driver, host):
    r = result(theorem, driver, host)
    assert r.result != UNKNOWN, f"solver unknown: {r.reason}"
    assert r.ok, (f"{theorem} @ {driver} ({host}): {r.result}, failing {r.failing_parts}, expected "
                  f"{r.expected_failing_parts}; {r.counterexamples}")
    for part in r.failing_parts:
        assert r.citations.get(part), f"{part}: an expected counterexample must cite the reference"
        assert set(r.counterexamples[part]) >= {"ret", "host_fault", "outblob_len"}


def test_the_issue_s_expected_counterexamples():
    upstream = [d for d in CONFIGFS_DRIVERS]
    for d in upstream:
        q = profiles.get(d).quote
        # errno contract: the empty "successful" outblob before 7.1 (QEMU's ERROR), on 7.1 only from
        # an asynchronous host (no_in_flight), whose outblob is empty too
        assert (result("quote_errno_contract", d, "qemu").result == PROVED) == q.status_check
        any_host = result("quote_errno_contract", d, "any").counterexamples["zero_only_with_quote"]
        assert any_host["ret"] == 0 and any_host["outblob_len"] == 0
        if q.status_check:
            assert any_host["host_fault"] == abi.HOST_FAULT_NO_IN_FLIGHT
        # timeout: both ways on every upstream generation (a host without QEMU's timer for the second)
        assert set(result("quote_timeout", d, "any").failing_parts) == \
            {"etimedout_only_when_owned", "owned_means_etimedout"}
        ready = result("quote_timeout", d, "any").counterexamples["etimedout_only_when_owned"]
        assert ready["ret"] == -abi.ETIMEDOUT and not ready["owned_after_poll_30"]
        owned = result("quote_timeout", d, "any").counterexamples["owned_means_etimedout"]
        assert owned["ret"] != -abi.ETIMEDOUT and owned["owned_after_poll_30"]
        # host-length safety and disclosure fail before 7.0 only, and only for a non-QEMU host
        for t in ("quote_length_safety", "quote_no_disclosure"):
            assert result(t, d, "qemu").result == PROVED
            assert (result(t, d, "any").result == COUNTEREXAMPLE) == (not q.out_len_once)
        assert result("quote_ownership", d, "qemu").result == PROVED
        assert result("quote_ownership", d, "any").counterexamples["claim"]["issued_while_owned"]
        assert result("quote_no_leak", d, "qemu").result == result("quote_no_leak", d, "any").result == PROVED


REPLAYS = [(t, d) for d in QUOTE_DRIVERS for t in QUOTE_THEOREMS
           if any(expected_failures(t, d, h) for h in HOSTS)]


@pytest.mark.parametrize("theorem,driver", REPLAYS, ids=[f"{t}@{d}" for t, d in REPLAYS])
def test_counterexample_replays_on_the_emulator(theorem, driver, backend):
    ok, lines = replay(theorem, driver, backends=[backend.BACKEND_NAME],
                       results={h: result(theorem, driver, h) for h in HOSTS})
    assert ok, "\n".join(lines)
    assert sum("MISMATCH" in line for line in lines) == 0
    assert any(line.strip().startswith(backend.BACKEND_NAME) for line in lines)


CASES = [(d, s["id"]) for d in CONFIGFS_DRIVERS for s in campaign_quote.cases(d) if encodable(s)]
_SPECS = {(d, s["id"]): s for d in CONFIGFS_DRIVERS for s in campaign_quote.cases(d)}


@functools.lru_cache(maxsize=None)
def _predicted(driver, case_id):
    return predict(driver, _SPECS[(driver, case_id)])


def test_most_campaign_quote_cases_are_in_the_encoding():
    for d in CONFIGFS_DRIVERS:
        ids = {c for drv, c in CASES if drv == d}
        assert {"quote", "host:never", "host:no_in_flight", "signal:sleep:30", "fail_nth:1",
                "misuse:no_provider", "misuse:retry_after_eintr"} <= ids
        # module-load cases are outside the encoding (``encodable``); their number follows the
        # profile's init points (6.16+: tsm-mr's two too), so they are not counted against it
        assert len(ids) >= len([c for c in campaign_quote.cases(d) if c["init"] is None]) - 16


@pytest.mark.parametrize("driver,case_id", CASES, ids=[f"{d}:{c}" for d, c in CASES])
def test_campaign_quote_case_matches_the_encoding(driver, case_id, backend):
    want = _predicted(driver, case_id)
    record = campaign.run_case(backend.BACKEND_NAME, driver, _SPECS[(driver, case_id)])
    got = {k: (int(bool(record[k])) if k == "leaked" else record[k]) for k in COMPARED}
    assert got == {k: want[k] for k in COMPARED}, record["description"]


def test_json_lists_the_six_theorems_with_their_host(capsys):
    assert main(["--json", "--driver", "v7.1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    quote = [r for r in doc if r["theorem"].startswith("quote_")]
    assert {r["theorem"] for r in quote} == set(QUOTE_THEOREMS)
    assert {(r["theorem"], r["host"]) for r in quote} == {(t, h) for t in QUOTE_THEOREMS for h in HOSTS}
    assert all(r["ok"] and r["path"] == "configfs" and r["assumption"] for r in quote)
    assert len([r for r in doc if not r["theorem"].startswith("quote_")]) == 7


@pytest.mark.parametrize("argv", [["--theorem", "quote_timeout", "--driver", "v6.2"],
                                  ["--replay", "quote_timeout"], ["--host", "kvm"],
                                  ["--replay", "quote_ownership", "--driver", "v6.2"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_replay_cli(capsys):
    assert main(["--replay", "quote_ownership", "--driver", "v7.0", "--host", "any",
                 "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "issued_while_owned=True" in out and "replayed" in out


def test_run_quote_all_is_the_matrix():
    assert [(r.theorem, r.driver, r.host) for r in run_quote_all(["v7.1", "v6.2"])] == \
        [(t, "v7.1", h) for t in QUOTE_THEOREMS for h in HOSTS]
