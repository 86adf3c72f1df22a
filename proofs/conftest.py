"""The project's fixtures (``backend``, ``make_module``, ``make_kernel``: both backends, counters
asserted balanced at teardown) for the tests in proofs/ too."""

from tests.conftest import backend, make_kernel, make_module  # noqa: F401
