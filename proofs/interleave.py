"""Two callers interleaved step by step (bounded model checking) for theorem ``serialisation``.

Caller A is the driver's REPORT ioctl; caller B an RTMR extend: 6.16's ``tdx_do_extend`` (under
``mr_lock``, ref §2.5), or, for drivers without the lock, an EXTEND reaching the module concurrently
(ref §4.8 "Linux <=6.15"). Each TDCALL is two atomic steps on its vCPU: *enter* (take the module's
RTMR lock - shared for REPORT, exclusive for EXTEND - or get OPERAND_BUSY|RTMR, ref §4.3 row 5,
§4.6 row 4, §4.8) and *leave* (release it, SUCCESS). A schedule picks which caller moves at each of
``STEPS`` steps; a caller blocked on ``mr_lock`` or finished stays where it is. Eight productive steps
finish both callers, so ``STEPS`` = 8 covers every interleaving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

import z3

from proofs import abi as zabi
from proofs.abi import REG_BITS

STEPS = 8
PC_BITS = 4
LOCK, ENTER, LEAVE, UNLOCK, DONE = range(5)
NOBODY, CALLER_A, CALLER_B = range(3)


@dataclass
class State:
    pc_a: z3.BitVecRef
    pc_b: z3.BitVecRef
    mr_lock_owner: z3.BitVecRef
    rtmr_shared: z3.BitVecRef      # holders of the RTMR lock in shared mode
    rtmr_exclusive: z3.BoolRef
    status_a: z3.BitVecRef
    status_b: z3.BitVecRef


def _step(s: State, a_moves: z3.BoolRef, has_mr_lock: bool, width: int) -> State:
    busy = zabi.bv("TDX_OPERAND_BUSY", width) | zabi.bv("TDX_OPERAND_ID_RTMR", width)
    ok = zabi.bv("TDX_SUCCESS", width)
    one = z3.BitVecVal(1, 2)

    def pc(v):
        return z3.BitVecVal(v, PC_BITS)

    def caller(me: int, my_pc, my_status, report: bool):
        """(new pc, new status, new owner, new shared, new exclusive) when caller `me` moves."""
        owner, shared, excl = s.mr_lock_owner, s.rtmr_shared, s.rtmr_exclusive
        # LOCK: mutex_lock (blocking: a waiter stays at LOCK); no lock at all: go straight on.
        if has_mr_lock:
            free = owner == NOBODY
            lock = (z3.If(free, pc(ENTER), pc(LOCK)), my_status, z3.If(free, z3.BitVecVal(me, 2), owner),
                    shared, excl)
        else:
            lock = (pc(ENTER), my_status, owner, shared, excl)
        # ENTER: the module's try-lock on the RTMR lock.
        conflict = excl if report else z3.Or(excl, shared != 0)
        enter = (z3.If(conflict, pc(UNLOCK), pc(LEAVE)), z3.If(conflict, busy, my_status), owner,
                 z3.If(z3.And(report, z3.Not(conflict)), shared + one, shared) if report else shared,
                 excl if report else z3.Or(excl, z3.Not(conflict)))
        leave = (pc(UNLOCK), ok, owner, shared - one if report else shared,
                 excl if report else z3.BoolVal(False))
        unlock = (pc(DONE), my_status, z3.BitVecVal(NOBODY, 2) if has_mr_lock else owner, shared, excl)
        done = (my_pc, my_status, owner, shared, excl)
        table = [(LOCK, lock), (ENTER, enter), (LEAVE, leave), (UNLOCK, unlock)]
        out = done
        for value, row in reversed(table):
            out = tuple(z3.If(my_pc == value, new, old) for new, old in zip(row, out))
        return out

    pa, sa, oa, sha, exa = caller(CALLER_A, s.pc_a, s.status_a, report=True)
    pb, sb, ob, shb, exb = caller(CALLER_B, s.pc_b, s.status_b, report=False)
    return State(z3.If(a_moves, pa, s.pc_a), z3.If(a_moves, s.pc_b, pb), z3.If(a_moves, oa, ob),
                 z3.If(a_moves, sha, shb), z3.If(a_moves, exa, exb),
                 z3.If(a_moves, sa, s.status_a), z3.If(a_moves, s.status_b, sb))


def serialisation_claim(has_mr_lock: bool, status_to_ret: Callable[[z3.BitVecRef], z3.BitVecRef],
                        width: int = REG_BITS):
    """Theorem serialisation: in every interleaving of at most STEPS steps of a driver REPORT (A) and
    a driver-issued or concurrent EXTEND (B), A's TDCALL never returns OPERAND_BUSY|RTMR.
    Returns (claim, assumption that both callers finish, variables); the variables show the schedule
    and A's status and return value."""
    schedule = [z3.Bool(f"a_moves[{t}]") for t in range(STEPS)]
    zero = z3.BitVecVal(0, width)
    s = State(z3.BitVecVal(LOCK, PC_BITS), z3.BitVecVal(LOCK, PC_BITS), z3.BitVecVal(NOBODY, 2),
              z3.BitVecVal(0, 2), z3.BoolVal(False), zero, zero)
    busy = zabi.bv("TDX_OPERAND_BUSY", width) | zabi.bv("TDX_OPERAND_ID_RTMR", width)
    for a_moves in schedule:
        s = _step(s, a_moves, has_mr_lock, width)
    # Complete runs only: every run in which A meets BUSY completes (after ENTER neither caller can
    # block for good), and dropping a blocked caller's wasted steps changes no state, so the complete
    # runs of STEPS productive steps cover every interleaving. A keeps its status once past ENTER.
    both_done = z3.And(s.pc_a == DONE, s.pc_b == DONE)
    claim = s.status_a != busy
    variables: Dict[str, z3.ExprRef] = {f"a_moves[{t}]": m for t, m in enumerate(schedule)}
    variables.update({"report_status": s.status_a, "extend_status": s.status_b,
                      "report_ret": status_to_ret(s.status_a)})
    return claim, both_done, variables


def schedule_of(values: Dict[str, object]) -> List[str]:
    """The schedule of a counterexample as caller names, e.g. ['B', 'A', ...]."""
    return ["A" if values[f"a_moves[{t}]"] else "B" for t in range(STEPS)]
