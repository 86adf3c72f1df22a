"""The registry of expected results: every (theorem, driver) pair is expected ``proved`` unless it is
listed here as an expected counterexample, each citing the review or reference that names the defect.

The counterexamples are found by the solver from the encodings (nothing here asserts one by hand);
``python -m proofs`` and ``proofs/test_theorems.py`` fail when one of them stops being found, as they
fail when a theorem expected to hold gets a counterexample.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from proofs.engine import COUNTEREXAMPLE, PROVED
from tdxmodel import profiles as _profiles

EXPECTED_COUNTEREXAMPLES: Dict[Tuple[str, str], str] = {
    ("errno_contract", "v4-2022-04"):
        "ref §2.2 Dispatch: 'an unknown cmd returns 0 (it only logs \"not supported\"). Reviewers "
        "flagged this as a bug'; review of 24-28 Apr 2022: 'the default case must fail'",
    ("no_silent_loss", "v4-2022-04"):
        "ref §2.2 row 4: 'The put_user result is overwritten, so it is -EIO even if that write "
        "faults'; review of 24-28 Apr 2022: 'the put_user result is ignored'",
    ("serialisation", "v4-2022-04"):
        "ref §2.2 Review: OPERAND_BUSY comes from 'a concurrent RTMR extend, which calls for a mutex'; "
        "v4 has none (ref §4.8), so a concurrent EXTEND turns the REPORT into -EIO",
    ("serialisation", "intel-downstream"):
        "quote.md §2.6: td-partitioning tdx_get_report0 takes no lock (only GET_QUOTE takes quote_lock); "
        "ref §4.8: a concurrent EXTEND makes the REPORT OPERAND_BUSY, which tdx_mcall_get_report0 maps to -EIO",
    ("serialisation", "v6.2"):
        "ref §2.4: 'This path takes no lock'; ref §4.8 'Linux <=6.15. No ioctl lock, so concurrent "
        "callers reach the module in parallel. BUSY gives -EIO'",
}


# The configfs-tsm generations keep the ioctl path of their profile's ops, defects included.
for _p in _profiles.PROFILES:
    for (_theorem, _driver), _why in list(EXPECTED_COUNTEREXAMPLES.items()):
        if _driver != _p.name and _profiles.get(_driver).ops == _p.ops:
            EXPECTED_COUNTEREXAMPLES.setdefault((_theorem, _p.name), _why + f" (the {_driver} ioctl path)")


def expected(theorem: str, driver: str) -> str:
    return COUNTEREXAMPLE if (theorem, driver) in EXPECTED_COUNTEREXAMPLES else PROVED


def citation(theorem: str, driver: str) -> Optional[str]:
    return EXPECTED_COUNTEREXAMPLES.get((theorem, driver))
