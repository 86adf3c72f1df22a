"""Exhaustive conformance with the fault campaign: for every case of ``tdxmodel.campaign.report_cases``
(each driver), the z3 encoding solved with the case's concrete injection states the return value,
leak and lock balance, the injection points passed, whether fail-nth fired, and the exact bytes the
caller sees change; ``run_case`` on each backend must record exactly that."""

import functools

import pytest

from proofs.outcome import differences, expected_record, module_report
from tdxmodel import abi, campaign

pytestmark = pytest.mark.proof

CASES = [(d, spec["id"]) for d in abi.DRIVERS for spec in campaign.report_cases(d)]
_SPECS = {(d, spec["id"]): spec for d in abi.DRIVERS for spec in campaign.report_cases(d)}


_module_report = functools.lru_cache(maxsize=None)(module_report)


@functools.lru_cache(maxsize=None)
def _expected(driver, case_id, report):
    return expected_record(driver, _SPECS[(driver, case_id)], report)


def test_campaign_is_not_empty():
    for d in abi.DRIVERS:
        ids = {c for drv, c in CASES if drv == d}
        assert "unknown_cmd" in ids and any(i.startswith("fail_nth:") for i in ids), d


@pytest.mark.parametrize("driver,case_id", CASES, ids=[f"{d}:{c}" for d, c in CASES])
def test_campaign_case_matches_encoding(backend, driver, case_id):
    report = _module_report(backend.BACKEND_NAME)
    expected = _expected(driver, case_id, report)
    record = campaign.run_case(backend.BACKEND_NAME, driver, _SPECS[(driver, case_id)])
    assert differences(expected, record) == [], record["description"]
