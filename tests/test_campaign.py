"""The exhaustive fault campaign (tdxmodel.campaign, ``tdxmodel campaign``): its cases, the invariants
every case must satisfy, the outcome classes of each driver generation, and the CLI contract.
"""

import json
import os

import pytest

from tdxmodel import _backend, abi, campaign, profiles
from tdxmodel.cli import main

EXPECTED_OUTCOMES = {
    # v4: the unknown command returns 0 and a failed put_user still gives -EIO (ref §2.2)
    "v4-2022-04": {"0", "-ENOMEM", "-EFAULT", "-EIO"},
    "v6.2": {"0", "-ENOMEM", "-EFAULT", "-EINVAL", "-EIO", "-ENOTTY"},            # ref §2.4
    "v6.16": {"0", "-EFAULT", "-ENXIO", "-EBUSY", "-EINTR", "-ENOTTY"},            # ref §2.5
}
# the configfs-tsm generations keep the ioctl path of their profile's ops (quote.md §2.1)
for _p in profiles.PROFILES:
    _same = [q.name for q in profiles.PROFILES if q.ops == _p.ops and q.name in EXPECTED_OUTCOMES]
    if _same:
        EXPECTED_OUTCOMES.setdefault(_p.name, EXPECTED_OUTCOMES[_same[0]])


def backend_names():
    env = os.environ.get("TDXMODEL_TEST_BACKENDS")
    return env.split(",") if env else list(_backend.BACKENDS)


@pytest.fixture(scope="module")
def all_results():
    """Every case of every driver on every backend under test (a few hundred ioctls, and the quote
    path's requests)."""
    return {(b, d): campaign.run(d, b) for b in backend_names() for d in abi.DRIVERS}


@pytest.fixture(scope="module")
def results(all_results):
    """The report ioctl's records (the quote path's: tests/test_campaign_quote.py)."""
    return {key: {**res, "cases": [r for r in res["cases"] if campaign.is_report_case(r)]}
            for key, res in all_results.items()}


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_cases_are_json_and_stable(driver):
    specs = campaign.cases(driver)
    assert json.loads(json.dumps(specs)) == specs
    ids = [s["id"] for s in specs]
    assert len(ids) == len(set(ids))
    assert campaign.cases(driver) == specs
    assert [s for s in specs if campaign.is_report_case(s)] == campaign.report_cases(driver)
    assert [s for s in specs if not campaign.is_quote_case(s)] == (
        campaign.report_cases(driver) + [s for s in specs if campaign.is_measurement_case(s)])
    for s in campaign.report_cases(driver):
        assert {"id", "cmd", "fail_nth", "user_fault", "partial_to_user", "tdcall", "mr_lock_held",
                "description"} <= set(s)


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_cases_cover_every_class(driver):
    ids = {s["id"] for s in campaign.cases(driver)}
    for access in ("read", "write"):
        for at in campaign.POSITIONS:
            assert f"user_fault:{access}:{at}" in ids
    for kind, operand in campaign.TDCALL_OUTCOMES:
        tag = kind if operand is None else f"{kind}:{operand}"
        assert f"tdcall:{tag}" in ids and f"fail_nth:1@{tag}" in ids
    assert "unknown_cmd" in ids
    assert ("mr_lock:eintr" in ids) == profiles.get(driver).has_lock("mr_lock")


def test_unknown_driver_is_a_value_error():
    with pytest.raises(ValueError, match="driver"):
        campaign.cases("v5")
    with pytest.raises(ValueError, match="driver"):
        campaign.run_case("reference", "v5", campaign.cases("v6.2")[0])


def test_malformed_spec_is_a_value_error():
    spec = dict(campaign.cases("v6.2")[0])
    spec["tdcall"] = {"outcome": "explode", "operand": None}
    with pytest.raises(ValueError, match="tdcall"):
        campaign.run_case("reference", "v6.2", spec)
    del spec["cmd"]
    with pytest.raises(ValueError, match="cmd"):
        campaign.run_case("reference", "v6.2", spec)


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_no_case_leaks_locks_or_discloses(results, driver):
    for backend in backend_names():
        for r in results[(backend, driver)]["cases"]:
            assert r["leaked"] == 0 and r["locks_held"] == 0, r["id"]
            assert r["foreign_bytes"] == 0, r["id"]


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_outcome_classes_match_the_reference(results, driver):
    for backend in backend_names():
        outcomes = set(results[(backend, driver)]["summary"]["outcomes"])
        if driver in EXPECTED_OUTCOMES:
            assert outcomes == EXPECTED_OUTCOMES[driver]
        assert {"0", "-EFAULT"} <= outcomes <= _documented_outcomes(driver)


def _documented_outcomes(driver):
    """0 and the documented errno set of the generation's report ioctl (its profile)."""
    from tdxmodel import profiles
    prof = profiles.get(driver)
    return {"0"} | {"-" + n for n in prof.errno_names(prof.report_errnos)}


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_zero_iff_the_whole_report_arrived(results, driver):
    """0 exactly when the TDREPORT reached user memory, except v4's unknown command (the defect)."""
    returns_0_unknown = profiles.get(driver).unknown_cmd_errno == 0
    for backend in backend_names():
        for r in results[(backend, driver)]["cases"]:
            if returns_0_unknown and r["id"] == "unknown_cmd":
                assert r["ret"] == 0 and not r["tdreport_complete"] and r["user_changed"] == 0
            else:
                assert (r["ret"] == 0) == r["tdreport_complete"], r["id"]


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_failures_change_user_memory_only_as_documented(results, driver):
    for backend in backend_names():
        for r in results[(backend, driver)]["cases"]:
            if r["ret"] == 0:
                continue
            if r["partial_to_user"] is not None:
                assert r["ret"] == -abi.EFAULT and r["user_changed"] <= r["partial_to_user"]
            elif r["id"].startswith("user_fault:write:") and "@" not in r["id"]:
                assert r["ret"] == -abi.EFAULT  # a genuine copy-out fault: a prefix may be written
            elif profiles.get(driver).status_writeback is not None and r["ret"] == -abi.EIO:
                assert r["user_changed"] <= profiles.get(driver).status_writeback.size  # the put_user'd status
            else:
                assert r["user_changed"] == 0, r["id"]


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_fail_nth_sweep_ends_when_the_fault_no_longer_fires(results, driver):
    for backend in backend_names():
        records = results[(backend, driver)]["cases"]
        for kind, operand in campaign.TDCALL_OUTCOMES:
            tag = kind if operand is None else f"{kind}:{operand}"
            sweep = [r for r in records if r["id"].startswith("fail_nth:") and r["id"].endswith("@" + tag)]
            assert [r["fail_nth_fired"] for r in sweep] == [True] * (len(sweep) - 1) + [False]
            for r in sweep[:-1]:  # exactly the n-th point failed
                assert [t[2] for t in r["trace"]].index(True) == r["fail_nth"] - 1


def test_v4_defects_are_visible(results):
    for backend in backend_names():
        by_id = {r["id"]: r for r in results[(backend, "v4-2022-04")]["cases"]}
        assert by_id["unknown_cmd"]["ret"] == 0
        put_user = by_id["fail_nth:4@busy"]
        assert put_user["trace"][-1] == ["status:put_user", "fail_usercopy", True]
        assert put_user["ret"] == -abi.EIO and put_user["user_changed"] == 0
        assert by_id["user_fault:write:first_byte@busy"]["ret"] == -abi.EIO


def test_records_name_the_realised_injection(results):
    for backend in backend_names():
        by_id = {r["id"]: r for r in results[(backend, "v6.2")]["cases"]}
        assert by_id["tdcall:operand_invalid:RDX"]["status"] == abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX
        assert by_id["tdcall:busy"]["status"] == abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR
        assert by_id["tdcall:success"]["status"] == abi.TDX_SUCCESS
        assert by_id["user_fault:write:middle"]["user_fault_offset"] == abi.TDX_REPORT_LEN // 2
        assert by_id["user_fault:read:page_boundary"]["user_fault_offset"] == abi.TDX_REPORTDATA_LEN
        assert by_id["tdcall:success"]["user_fault_offset"] is None
        # the changed runs are offsets from arg: a genuine copy-out fault at 512 wrote 64..575
        assert by_id["user_fault:write:middle"]["changed"][0]["offset"] >= abi.TDX_REPORT_REQ_OFF_TDREPORT


def test_partial_copies_are_byte_exact(results):
    for backend in backend_names():
        for driver in abi.DRIVERS:
            for r in results[(backend, driver)]["cases"]:
                if r["id"] == "user_fault:write:middle":
                    assert r["user_changed"] <= abi.TDX_REPORT_LEN // 2
                    assert r["foreign_bytes"] == 0 and r["changed"]


def test_backends_agree_case_by_case(all_results):
    names = backend_names()
    for driver in abi.DRIVERS:
        runs = [[{k: v for k, v in r.items() if k != "backend"} for r in all_results[(b, driver)]["cases"]]
                for b in names]
        assert all(run == runs[0] for run in runs[1:]), driver


# ------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_cli_table(capsys, driver):
    name = backend_names()[0]
    assert main(["campaign", "--driver", driver, "--backend", name]) == 0
    out = capsys.readouterr().out
    for outcome in EXPECTED_OUTCOMES.get(driver, {"0", "-EFAULT"}):   # every generation has those two
        assert any(line.split()[0] == outcome for line in out.splitlines() if line.strip())
    assert "total" in out


def test_cli_json(capsys):
    name = backend_names()[0]
    assert main(["campaign", "--driver", "v6.16", "--json", "--backend", name]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["driver"], doc["summary"]["cases"]) == ("v6.16", len(doc["cases"]))
    for case in doc["cases"]:
        assert isinstance(case["ret"], int) and {"leaked", "description"} <= set(case)
        if campaign.is_quote_case(case):
            assert {"path", "host_fault", "outblob_len", "syscalls"} <= set(case)
        elif campaign.is_measurement_case(case):
            assert {"file", "op", "trace", "rtmr_changed"} <= set(case)
        else:
            assert isinstance(case["cmd"], int) and "user_changed" in case
    assert doc["summary"]["quote"]["cases"] == sum(campaign.is_quote_case(c) and c["path"] == "configfs"
                                                   for c in doc["cases"])


def test_progress_goes_to_stderr(capsys):
    report = campaign.stderr_progress(min_seconds=0)
    for i in range(1, 4):
        report(i, 3)
    captured = capsys.readouterr()
    assert captured.out == "" and "campaign: 3/3 cases" in captured.err


def run_cli(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors (a missing --driver)
        return e.code


@pytest.mark.parametrize("argv", [["campaign", "--driver", "v5"],
                                  ["campaign", "--driver", "v6.2", "--backend", "gpu"],
                                  ["campaign"]])
def test_cli_bad_input_exits_2_with_one_line(capsys, argv):
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("tdxmodel")


@pytest.mark.parametrize("backend_name", backend_names())
@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_run_case_forces_any_status_and_faults_at_any_byte(backend_name, driver):
    # The proofs replay arbitrary statuses and fault offsets through run_case (proofs/outcome.py).
    from tdxmodel import profiles
    prof = profiles.get(driver)
    base = dict(campaign.cases(driver)[0])
    status = abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8
    forced = dict(base, tdcall={"outcome": "forced", "operand": None, "status": status})
    r = campaign.run_case(backend_name, driver, forced)
    assert r["status"] == status and r["ret"] == -prof.status_errno(status)
    assert not r["tdreport_complete"] and r["leaked"] == 0 and r["locks_held"] == 0
    at_one = dict(base, user_fault={"access": "read", "at": 1})
    r = campaign.run_case(backend_name, driver, at_one)
    assert r["ret"] == -abi.EFAULT and r["user_fault_offset"] == 1 and r["leaked"] == 0


def test_run_case_refuses_bad_forced_status_and_offsets():
    base = dict(campaign.cases("v6.2")[0])
    for td in ({"outcome": "forced", "operand": None, "status": 0},
               {"outcome": "forced", "operand": None, "status": 1 << 64},
               {"outcome": "forced", "operand": "RCX", "status": 5},
               {"outcome": "forced", "operand": None}):
        with pytest.raises(ValueError, match="tdcall"):
            campaign.run_case("reference", "v6.2", dict(base, tdcall=td))
    for at in (-1, True, abi.TDX_REPORTDATA_LEN + 1):
        with pytest.raises(ValueError, match="user_fault"):
            campaign.run_case("reference", "v6.2", dict(base, user_fault={"access": "read", "at": at}))
