"""Core vs reference, step by step: random syscall sequences on both backends must be indistinguishable.

docs/CONTRACT.md: "any observable difference is a bug in one of them". Each case replays the same seeded
sequence of user-memory writes, opens, ioctls (good and unknown commands, arguments straddling pages and
protections), measurement-file reads and writes, fault knobs, fail-nth, forced TDCALL statuses,
misaligned allocations and partial user copies on a fresh kernel per backend, and after every step
compares the return value (or exception type), the trace, fail-nth, the debug counters, every byte of
user memory and the RTMRs.
"""

from __future__ import annotations

import os
import random

import pytest

from tdxmodel import _backend, abi, profiles
from tdxmodel.config import ModuleConfig

PAGE = abi.TDX_PAGE_SIZE
DATA, EDGE = 0x10000, 0x20000  # three rw pages; one page whose protection varies per case
CMDS = (abi.TDX_CMD_GET_TDREPORT, abi.TDX_CMD_GET_REPORT0, 0x1234, 0xC0A00401)
STATUSES = (abi.TDX_SUCCESS, abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX,
            abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX, abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8,
            abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR, abi.TDX_INVALID_CPUSVN,
            # nonzero with bits 63:32 clear: v4's wrapper masks it to 0, so the ioctl succeeds (ref §2.2)
            abi.TDX_OPERAND_ID_RTMR)
KNOBS = {"probability": (0, 50, 100), "interval": (1, 2, 3), "times": (-1, 0, 1, 3), "space": (0, 10, 5000),
         "task_filter": (True, False), "ignore_gfp_wait": (True, False), "min_order": (0, 1)}
STEPS = 60


def _step(rnd, k, p, fds, driver):
    """One random operation; returns what it returned, or the exception's type name."""
    op = rnd.randrange(13)
    fd = rnd.choice(fds) if rnd.random() < 0.95 else 99
    try:
        if op == 0:
            p.poke(DATA + rnd.randrange(3 * PAGE - 64), bytes(rnd.randrange(256) for _ in range(64)))
        elif op == 1:
            paths = [k.device_path, "/nope"] + [f"{abi.MEASUREMENT_DIRS[0]}/{n}" for n in abi.MEASUREMENTS]
            ret = p.open(rnd.choice(paths), rnd.choice([os.O_RDONLY, os.O_WRONLY, os.O_RDWR]))
            if ret >= 0:
                fds.append(ret)
            return ret
        elif op <= 5:
            arg = rnd.choice([DATA, DATA + rnd.randrange(3 * PAGE), EDGE - rnd.randrange(1200), EDGE,
                              EDGE - 64, 0])
            good = profiles.get(driver).report.value
            return p.ioctl(fd, good if rnd.random() < 0.7 else rnd.choice(CMDS), arg)
        elif op == 6:
            attr = rnd.choice(sorted(KNOBS))
            setattr(k.fault(rnd.choice(abi.FAULT_CAPABILITIES)), attr, rnd.choice(KNOBS[attr]))
        elif op == 7:
            p.fail_nth = rnd.choice([0, 1, 2, 3, 5])
        elif op == 8:
            k.force_tdcall(rnd.choice(STATUSES), leaf=rnd.choice([None, abi.TDG_MR_RTMR_EXTEND, abi.TDG_MR_REPORT]),
                           count=rnd.choice([1, 2]))
        elif op == 9:
            if not profiles.get(driver).cached_report_buf:
                k.force_misaligned(rnd.choice([None, None, "tdreport", "reportdata"]))
        elif op == 10:
            return p.pread(fd, rnd.choice([DATA, EDGE - 20, EDGE]), rnd.choice([0, 10, 48, 100, -1]),
                           rnd.choice([0, 5, 47, 48, 100, -1]))
        elif op == 11:
            return p.pwrite(fd, rnd.choice([DATA, EDGE - 20, EDGE]), rnd.choice([48, 48, 10, -1]),
                            rnd.choice([0, 0, 1]))
        else:
            p.fault_user_copy(rnd.choice([None, "partial_to_user"]), rnd.choice([0, 7, 100, 1023, 2000]))
            p.make_it_fail = rnd.choice([True, False])
    except Exception as exc:  # the same bad input must fail the same way
        return type(exc).__name__
    return None


def _replay(backend_name, driver, seed):
    rnd = random.Random(seed)
    be = _backend.load(backend_name)
    q = profiles.get(driver).quote  # room for the quote buffer too (quote.md §2.2)
    module = be.Module(ModuleConfig(seed=1), memory_pages=rnd.choice([24, 64]) + (2 << q.buf_order if q else 0))
    try:
        kernel = be.Kernel(module, driver, seed=seed, fail_nth=rnd.choice([0, 0, 0, 1, 2]))
    except Exception as exc:
        return [("init", type(exc).__name__, getattr(exc, "errno", None))], None
    p = kernel.process()
    p.mmap(DATA, 3 * PAGE, "rw")
    p.mmap(EDGE, PAGE, rnd.choice(["", "r", "w", "rw"]))
    fds = [p.open(kernel.device_path)]
    if profiles.get(driver).measurements:
        fds += [p.open(f"{abi.MEASUREMENT_DIRS[0]}/rtmr2:sha384"),
                p.open(f"{abi.MEASUREMENT_DIRS[0]}/mrtd:sha384", os.O_RDONLY)]
    log = []
    for step in range(STEPS):
        ret = _step(rnd, kernel, p, fds, driver)
        log.append((step, ret, p.last_trace(), p.fail_nth, kernel.counters(), p.peek(DATA, 3 * PAGE),
                    p.peek(EDGE, PAGE), [module.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]))
    return log, kernel


@pytest.mark.parametrize("driver", abi.DRIVERS)
@pytest.mark.parametrize("seed", range(40))
def test_random_sequences_are_indistinguishable(driver, seed):
    core_log, core_kernel = _replay("core", driver, seed)
    ref_log, _ = _replay("reference", driver, seed)
    for core_step, ref_step in zip(core_log, ref_log):
        assert core_step == ref_step, f"first difference at step {core_step[0]}"
    assert len(core_log) == len(ref_log)
    if core_kernel is not None:
        c = core_kernel.counters()
        assert c["outstanding"] == c["resident"] and c["locks_held"] == 0
