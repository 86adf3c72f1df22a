"""The campaign's measurement-file cases (tdxmodel.campaign_measurement): kernfs' bounce buffer and the
user copies of a read and a write, each failed by fail-nth, on both backends."""

import pytest

from tdxmodel import campaign, profiles

WITH_FILES = [n for n in profiles.NAMES if profiles.get(n).measurements]


def test_only_generations_with_measurement_files_have_cases():
    for name in profiles.NAMES:
        ids = [c["id"] for c in campaign.cases(name) if "file" in c]
        assert bool(ids) == (name in WITH_FILES), name


@pytest.mark.parametrize("driver", WITH_FILES)
def test_each_point_of_a_read_and_a_write_fails_in_turn(backend, driver):
    specs = [c for c in campaign.cases(driver) if "file" in c]
    records = {s["id"]: campaign.run_case(backend.BACKEND_NAME, driver, s) for s in specs}
    outcomes = {i: r["outcome"] for i, r in records.items()}
    assert outcomes == {
        "measurement:read:fail_nth:1": "-ENOMEM",   # kernfs' bounce buffer (ref §2.5 "Read" #1)
        "measurement:read:fail_nth:2": "-EFAULT",   # the copy to the user
        "measurement:read:fail_nth:3": "48",        # past the last point: nothing fails
        "measurement:write:fail_nth:1": "-ENOMEM",  # kernfs' buffer, before the copy ("Write" #1)
        "measurement:write:fail_nth:2": "-EFAULT",
        "measurement:write:fail_nth:3": "48",
    }
    for i, r in records.items():
        assert r["leaked"] == 0 and r["locks_held"] == 0, i
        assert r["rtmr_changed"] == (i == "measurement:write:fail_nth:3"), i
        assert r["fail_nth_fired"] == (r["outcome"] != "48"), i
    summary = campaign.summarize(list(records.values()))
    assert summary["measurement"]["cases"] == 6 and summary["report_cases"] == 0
