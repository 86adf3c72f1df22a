"""One test per theorem x driver, asserting the registry's expected result (proofs/expected.py).

A counterexample that is not expected fails with its concrete values; an expected counterexample
that is no longer found fails too; ``unknown`` (a timeout included) always fails with its reason.
"""

import pytest

from proofs.drivers import DRIVERS
from proofs.engine import COUNTEREXAMPLE, PROVED, UNKNOWN
from proofs.replay import prune
from proofs.runner import prove
from proofs.theorems import THEOREMS

pytestmark = pytest.mark.proof


@pytest.mark.parametrize("driver", list(DRIVERS))
@pytest.mark.parametrize("theorem", THEOREMS)
def test_theorem(theorem, driver):
    r = prove(theorem, driver)
    assert r.result != UNKNOWN, f"solver unknown: {r.reason}"
    if r.result == COUNTEREXAMPLE:
        print(f"counterexample for {theorem} @ {driver}: {prune(DRIVERS[driver], r.counterexample)}")
    assert r.result == r.expected, (
        f"{theorem} @ {driver}: {r.result}, expected {r.expected}; "
        f"counterexample {prune(DRIVERS[driver], r.counterexample)}")
    if r.expected == COUNTEREXAMPLE:
        assert r.citation, "an expected counterexample must cite the review or reference naming the defect"


def test_expected_counterexamples_are_the_issue_s_list_plus_v4_serialisation():
    # The issue: v6.2 serialisation by design; v4 errno contract and silent loss (reviewed defects).
    # v4 has no mr_lock either (ref §2.2 Review), so its serialisation counterexample is expected too.
    # (Generations added later list theirs beside these, each with its citation: test above.)
    from proofs.expected import EXPECTED_COUNTEREXAMPLES
    first = ("v4-2022-04", "v6.2", "v6.16")
    assert {k for k in EXPECTED_COUNTEREXAMPLES if k[1] in first} == {
        ("errno_contract", "v4-2022-04"), ("no_silent_loss", "v4-2022-04"),
        ("serialisation", "v4-2022-04"), ("serialisation", "v6.2")}
    assert all(r == PROVED for r in [prove(t, "v6.16").result for t in THEOREMS])


def test_v4_counterexamples_are_the_reviewed_defects():
    unknown_cmd = prove("errno_contract", "v4-2022-04").counterexample
    from tdxmodel import abi
    assert unknown_cmd["cmd"] != abi.TDX_CMD_GET_TDREPORT and unknown_cmd["ret"] == 0
    lost = prune(DRIVERS["v4-2022-04"], prove("no_silent_loss", "v4-2022-04").counterexample)
    # The put_user of the status faulted (injected or genuine), and the call still says -EIO.
    assert lost["ret"] == -abi.EIO and lost["user_write_failed"] is True
    assert lost.get("fail[status:put_user]") or lost["limit[status:put_user]"] < 8


def test_serialisation_counterexample_returns_eio_for_v6_2():
    from tdxmodel import abi
    cex = prove("serialisation", "v6.2").counterexample
    assert cex["report_status"] == abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR
    assert cex["report_ret"] == -abi.EIO


def test_whole_matrix_is_fast():
    # Speed is a benchmark concern, but a proof that suddenly needs the solver's full timeout is a
    # regression the CI budget (two minutes for the whole set) cannot absorb.
    from proofs.runner import run_all
    results = run_all()
    assert len(results) == len(THEOREMS) * len(DRIVERS)
    assert max(r.seconds for r in results) < 10, [(r.theorem, r.driver, r.seconds) for r in results]


def test_unknown_command_clause_excludes_what_the_vfs_answers():
    """v4 returns 0 for a command it does not know (the expected counterexample); a command the VFS
    answers first (FIOQSIZE: -ENOTTY from do_vfs_ioctl, ref §1) never reaches the driver, so the
    theorems do not range over it, while FIONREAD (which a character device passes on) still does."""
    import z3
    from proofs.engine import check
    from proofs.theorems import theorem_errno_contract
    from tdxmodel import abi, profiles
    spec = DRIVERS["v4-2022-04"]
    ob = theorem_errno_contract(spec)
    cmd = ob.variables["cmd"]
    assert check(ob).result == COUNTEREXAMPLE
    for v in profiles.get("v4-2022-04").vfs_commands:   # outside what the theorem quantifies over
        pinned = type(ob)(ob.claim, tuple(ob.assumptions) + (cmd == v.cmd,), ob.variables)
        assert check(pinned).reason == "assumptions are contradictory", v.name
    other = type(ob)(ob.claim, tuple(ob.assumptions) + (cmd == 0x541B,), ob.variables)  # FIONREAD
    assert check(other).result == COUNTEREXAMPLE
    assert prove("errno_contract", "v4-2022-04").counterexample["cmd"] not in {
        v.cmd for v in profiles.get("v4-2022-04").vfs_commands}
