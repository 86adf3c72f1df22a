"""Fault-campaign throughput: every case of ``tdxmodel.campaign.cases(driver)`` run on a fresh kernel
(docs/CONTRACT.md "Campaign").

Question: how long does the exhaustive campaign take per driver on each backend (the CLI and the
proofs replay it), and what does one injected case cost?
"""

import pytest

from tdxmodel import profiles




@pytest.fixture
def campaign():
    from tdxmodel import campaign  # kernel-ref's layer-3 module
    return campaign


def test_campaign_all_cases(benchmark, campaign, backend_name, driver):
    benchmark.group = f"fault campaign {driver}"
    specs = campaign.cases(driver)
    benchmark.extra_info["cases"] = len(specs)

    def run_all():
        return [campaign.run_case(backend_name, driver, spec) for spec in specs]

    records = benchmark.pedantic(run_all, rounds=1 if backend_name == "reference" else 3, iterations=1)
    assert len(records) == len(specs)
    # 6.2 and 6.16 leak on no path (ref §2.4, §2.5); every case returns 0 or a negative errno.
    if profiles.get(driver).status_writeback is None:   # v4's put_user path is its only leak
        assert all(r["leaked"] == 0 for r in records if not r.get("leaked_pages"))  # quote init: on purpose
    assert all(r["ret"] <= 0 for r in records)
    assert any(r["ret"] < 0 for r in records)
