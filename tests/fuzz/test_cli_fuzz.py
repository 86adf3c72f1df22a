"""The CI-sized CLI and state-directory fuzz run (tests/fuzz/cli.py): every variant once, its
details drawn from this run's seed. Long runs: ``python -m tests.fuzz.cli``."""

from __future__ import annotations

import pytest

from tests.fuzz import cli

pytestmark = pytest.mark.slow

#: Variants left out of the CI run (cli.VARIANTS): none may stay here once its fix is in.
LEFT_OUT: tuple = ()


@pytest.mark.timeout(300)  # ~20 CLI subprocesses, each bounded at cli.TIMEOUT: a loaded machine needs minutes
def test_cli_survives_damaged_states_odd_paths_and_planted_links(fuzz_seed):
    """Every variant not left out once, its details drawn from this run's seed."""
    n = len(cli.VARIANTS) - len(LEFT_OUT)
    bad = cli.campaign(fuzz_seed, n, without=LEFT_OUT)
    assert not bad, f"seed {fuzz_seed}: " + "; ".join(f"{b}" for b in bad)
