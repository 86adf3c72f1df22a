"""Benchmark harness: pytest-benchmark suites, every group with the Cython core and the
pure-Python reference side by side.

The files are named ``bench_*.py`` (not ``test_*.py``) so the test run never collects them; the hook
below collects them when pytest is pointed at this folder. pytest.ini's ``--benchmark-disable`` makes a
plain ``python3 -m pytest benchmarks`` a quick smoke run (each body once); measure for real with
``python3 -m pytest benchmarks --benchmark-enable`` (see RESULTS.md).
"""

from __future__ import annotations

import os

import pytest

from tdxmodel import _backend, abi

#: Backends to compare; TDXMODEL_TEST_BACKENDS narrows them as in tests/conftest.py. A missing
#: compiled core is a failure, not a skip.
BACKENDS = tuple(os.environ["TDXMODEL_TEST_BACKENDS"].split(",")) if os.environ.get(
    "TDXMODEL_TEST_BACKENDS") else _backend.BACKENDS



def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself; collecting it here too would run
    # it twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") \
            and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    _backend.load(request.param)  # fail here, clearly, if the backend cannot load
    return request.param


@pytest.fixture(params=abi.DRIVERS)
def driver(request):
    return request.param

