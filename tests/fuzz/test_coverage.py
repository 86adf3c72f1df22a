"""Fault-injection coverage (tests/fuzz/coverage.py): every injection point of every driver
generation's profile is reached by the fault campaign or the differential fuzzer, and the campaign
reaches every point of the paths it drives. ``python -m tests.fuzz --coverage`` prints the table."""

from __future__ import annotations

import functools

import pytest

from tdxmodel import campaign, profiles
from tdxmodel.config import ModuleConfig
from tests.fuzz import coverage, engine

#: wall-clock bound for one seeded run: CPU is ~10 s, a shared 2-core machine can stretch it 5x
LONG_TIMEOUT = 300

SEED = 20260301
OPS_PER_GENERATION = 10_000
NAMES = [p.name for p in profiles.PROFILES]


@functools.lru_cache(maxsize=None)
def _report():
    # one backend (the first of TDXMODEL_TEST_BACKENDS): the differential fuzzer holds the two to the
    # same traces, so they reach the same points
    return coverage.report(SEED, OPS_PER_GENERATION, engine.backends()[0])


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
@pytest.mark.parametrize("driver", NAMES)
def test_every_point_is_reached_by_the_campaign_or_the_fuzzer(driver):
    """Read from the profile: a point added to a generation fails here until something passes it."""
    r = _report()[driver]
    assert r["points"] == list(profiles.get(driver).points)
    assert r["never"] == [], f"{driver}: never reached: {r['never']}"
    assert r["unlisted"] == [], f"{driver}: traced but not in the profile: {r['unlisted']}"


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
@pytest.mark.parametrize("driver", NAMES)
def test_the_fuzzer_alone_reaches_every_point(driver):
    """The fuzzer's episodes (kernel, configfs-tsm quote, ioctl quote: downstream GET_QUOTE and v4
    GEN_QUOTE under host faults) pass every point of every generation, without the campaign."""
    r = _report()[driver]
    missed = [p for p in r["points"] if p not in r["fuzzer"]]
    assert missed == [], f"{driver}: the fuzzer never reached {missed}"


@pytest.mark.parametrize("driver", NAMES)
def test_the_campaign_reaches_every_point_of_the_paths_it_drives(backend, driver):
    """Module init (every case loads the driver) and every point of each command the campaign
    issues; the campaign's cases of other paths (configfs-tsm, measurement files, the downstream
    extend/verify ioctls) are listed by the report as not in the campaign."""
    prof = profiles.get(driver)
    reached = coverage.campaign_reached(driver, backend.BACKEND_NAME)
    issued = {spec.get("cmd") for spec in campaign.cases(driver)}  # quote cases have none
    k = backend.Kernel(backend.Module(ModuleConfig(seed=1), memory_pages=campaign.MODULE_PAGES), driver)
    want = {pt for pt, _, _ in k.init_trace()}
    want |= {pt for c in prof.commands if c.value in issued for pt in c.points}
    assert want and want <= reached, f"{driver}: the campaign misses {sorted(want - reached)}"

