"""The campaign's ioctl quote cases (tdxmodel.campaign_quote_ioctl through tdxmodel.campaign): Intel
downstream TDX_CMD_GET_QUOTE (quote.md §2.6) and the v4 series' GET_QUOTE (ref §2.2), their JSON
contract, outcome classes (the profile's documented errno set) and the defects each shows, on every
backend under test.
"""

import json
import os

import pytest

from tdxmodel import _backend, abi, campaign, campaign_quote_ioctl, profiles

IOCTL_GENERATIONS = [p.name for p in profiles.PROFILES if getattr(p, "ioctl_quote", None) is not None]


def backend_names():
    env = os.environ.get("TDXMODEL_TEST_BACKENDS")
    return env.split(",") if env else list(_backend.BACKENDS)


@pytest.fixture(scope="module")
def records():
    return {(b, d): {s["id"]: campaign.run_case(b, d, s) for s in campaign_quote_ioctl.cases(d)}
            for b in backend_names() for d in IOCTL_GENERATIONS}


def each(records, driver):
    for b in backend_names():
        yield b, records[(b, driver)]


def test_the_ioctl_quote_generations():
    assert set(IOCTL_GENERATIONS) == {"intel-downstream", "v4-2022-04"}
    for p in profiles.PROFILES:
        assert bool(campaign_quote_ioctl.cases(p.name)) == (p.name in IOCTL_GENERATIONS)


@pytest.mark.parametrize("driver", IOCTL_GENERATIONS)
def test_cases_are_json_stable_and_cover_the_menu(driver):
    specs = campaign_quote_ioctl.cases(driver)
    assert json.loads(json.dumps(specs)) == specs == campaign_quote_ioctl.cases(driver)
    assert len({s["id"] for s in specs}) == len(specs)
    assert [s for s in campaign.cases(driver) if campaign.is_quote_case(s)] == specs
    assert {s["host_fault"] for s in specs} >= set(abi.HOST_FAULTS) | {None}
    assert all(s["path"] == "ioctl" for s in specs)


@pytest.mark.parametrize("driver", IOCTL_GENERATIONS)
def test_records_and_outcome_classes(records, driver):
    prof = profiles.get(driver)
    documented = {"0"} | {"-" + n for n in prof.errno_names(prof.ioctl_quote.errnos)}
    for _, recs in each(records, driver):
        for r in recs.values():
            assert {"path", "host_fault", "ret", "outblob_len", "leaked", "syscalls"} <= set(r)
            assert any(c["call"] == "ioctl" and c["ret"] == r["ret"] for c in r["syscalls"])
        assert {r["outcome"] for r in recs.values()} == documented
        sweep = [r for r in recs.values() if r["id"].startswith("ioctl:fail_nth:")]
        assert [r["fail_nth_fired"] for r in sweep] == [True] * (len(sweep) - 1) + [False]
        assert recs["ioctl:quote"]["ret"] == 0 and recs["ioctl:quote"]["outblob_len"] > 1020


def test_downstream_defects(records):
    for _, recs in each(records, "intel-downstream"):
        # no timeout: a host that never completes (or never interrupts) is left only by a signal,
        # and the orphaned entry stays allocated while the host owns its buffer (quote.md §2.6 step 6)
        for case in ("ioctl:host:never", "ioctl:host:no_interrupt"):
            r = recs[case]
            assert r["ret"] == -abi.EINTR and r["leaked"] > 0 and not r["freed_while_owned"]
        # no quote service: QEMU writes the status without a completion (H5), so no vector either
        unavailable = recs["ioctl:host:service_unavailable"]
        assert unavailable["ret"] == -abi.EINTR and unavailable["leaked"] == 0
        assert unavailable["status_after"] == 0 and not unavailable["host_owns_after"]  # nothing copied back
        interrupted = recs["ioctl:signal:wait"]
        assert interrupted["ret"] == -abi.EINTR and interrupted["leaked"] > 0
        assert interrupted["leaked_after_host"] == 0   # freed once the host finished
        # the copy back's -EFAULT is dropped: 0 with nothing delivered (step 7)
        copy_back = [r for r in recs.values() if r["id"].startswith("ioctl:fail_nth:")
                     and any(t[0] == "quote_data:copy_to_user" and t[2] for t in r["trace"])]
        assert copy_back and all(r["ret"] == 0 for r in copy_back)
        assert all(r["locks_held"] == 0 for r in recs.values())


def test_v4_defects(records):
    for _, recs in each(records, "v4-2022-04"):
        # early returns keep quote_lock held
        for case in ("ioctl:misuse:len_zero", "ioctl:misuse:timeout_zero", "ioctl:misuse:request_unmapped"):
            assert recs[case]["locks_held"] == 1, case
        # a timed-out or interrupted buffer is freed while the host still owns it
        for case in ("ioctl:host:never", "ioctl:signal:wait"):
            r = recs[case]
            assert r["ret"] == -abi.EIO and r["freed_while_owned"]
        assert recs["ioctl:host:error"]["ret"] == -abi.EIO


@pytest.mark.parametrize("driver", IOCTL_GENERATIONS)
def test_the_next_request_meets_what_the_call_left(records, driver):
    """A clean next request at once: its own quote, except where the call freed a buffer the host still
    owned and the host's reply is due before the next one's (v4: its one req_compl; quote.md §2.6 6)."""
    iq = profiles.get(driver).ioctl_quote
    spec = campaign_quote_ioctl._spec("early", "a signal, the host done in 1 ms", host_fault="service_time",
                                      host_params={"seconds": 0.001}, signal={"at": "wait"})
    for b, recs in each(records, driver):
        assert recs["ioctl:quote"]["next_ret"] == 0 and recs["ioctl:quote"]["next_outblob_is_own"]
        r = campaign.run_case(b, driver, spec)
        assert r["next_ret"] == 0
        # v4 freed the buffer the host still owned: the next caller gets this request's quote
        assert r["next_outblob_is_own"] == iq.parallel, b
        if iq.lock_kept_on_early_return:
            assert recs["ioctl:misuse:len_zero"]["next_ret"] is None   # it would block on quote_lock
