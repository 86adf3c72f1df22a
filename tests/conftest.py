"""Shared fixtures: every test body runs against both backends, and every test ends by asserting the
debug counters balance (style.md lessons 5 and 6).

``TDXMODEL_TEST_BACKENDS`` (comma-separated) narrows the backends under test; by default both run, and
a missing compiled core is a failure, not a skip.
"""

from __future__ import annotations

import os
import pathlib
import random

import pytest

from tdxmodel import _backend
from tdxmodel.config import ModuleConfig

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
HW_REPORT = pathlib.Path(os.environ.get("TDXMODEL_HW_REPORT",
                                        SHARED / "testdata" / "dcap-tdreport-hw.bin"))


#: The fuzzers' per-run seed (tests/fuzz): drawn once per session, printed in the header.
FUZZ_SEED = int(os.environ.get("TDXMODEL_FUZZ_SEED") or random.SystemRandom().getrandbits(32))


def pytest_report_header(config):
    return f"tdxmodel fuzz seed: {FUZZ_SEED} (repeat with TDXMODEL_FUZZ_SEED={FUZZ_SEED})"


@pytest.fixture
def fuzz_seed():
    return FUZZ_SEED


def backends_under_test():
    env = os.environ.get("TDXMODEL_TEST_BACKENDS")
    return tuple(env.split(",")) if env else _backend.BACKENDS


@pytest.fixture(params=backends_under_test())
def backend(request):
    """The backend namespace (PUBLIC_API) for one backend name; tests run once per backend."""
    return _backend.load(request.param)


def assert_module_balanced(module) -> None:
    c = module.counters()
    assert c["rtmr_shared_acquired"] == c["rtmr_shared_released"], c
    assert c["rtmr_exclusive_acquired"] == c["rtmr_exclusive_released"], c


def assert_kernel_balanced(kernel) -> None:
    c = kernel.counters()
    assert c["outstanding"] == c["resident"], f"allocations leaked: {c}"
    assert c["locks_held"] == 0 and c["locks_taken"] == c["locks_released"], f"locks unbalanced: {c}"


@pytest.fixture
def make_module(backend):
    """``make_module(**config_fields)`` -> backend Module (seed 1 unless given); asserted balanced
    at teardown."""
    made = []

    def factory(**fields):
        fields.setdefault("seed", 1)
        memory_pages = fields.pop("memory_pages", None)
        cfg = ModuleConfig(**fields)
        m = backend.Module(cfg) if memory_pages is None else backend.Module(cfg, memory_pages=memory_pages)
        made.append(m)
        return m

    yield factory
    for m in made:
        assert_module_balanced(m)


@pytest.fixture
def make_kernel(backend, make_module):
    """``make_kernel(driver, **config_fields)`` -> backend Kernel over a fresh Module; asserted
    balanced (allocations and locks) at teardown."""
    made = []

    def factory(driver, seed=0, **fields):
        k = backend.Kernel(make_module(**fields), driver, seed=seed)
        made.append(k)
        return k

    yield factory
    for k in made:
        assert_kernel_balanced(k)


@pytest.fixture
def hw_report_bytes():
    """The real-hardware TDREPORT from shared/testdata (never copied into the repo)."""
    if not HW_REPORT.is_file():
        pytest.fail(f"{HW_REPORT} is missing: the shared test data must sit beside the checkout")
    return HW_REPORT.read_bytes()
