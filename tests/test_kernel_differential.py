"""Differential test: random sequences of syscalls, protections and fault knobs give the same results on
every backend under test (style.md lesson 6: any difference from the reference is a bug).

Each step records the return value, the trace, the counters and the whole user window, so a
difference in errno, injected point, leak or a single user byte fails the test.
"""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdxmodel import _backend, abi, profiles
from tdxmodel.config import ModuleConfig

PAGE = abi.TDX_PAGE_SIZE
WINDOW = 0x30000
PAGES = 4
MDIR = abi.MEASUREMENT_DIRS[0]
STATUSES = [abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8, abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR,
            abi.TDX_INVALID_CPUSVN]


def backend_names():
    env = os.environ.get("TDXMODEL_TEST_BACKENDS")
    return env.split(",") if env else list(_backend.BACKENDS)


op = st.one_of(
    st.tuples(st.just("mprotect"), st.integers(0, PAGES - 1), st.sampled_from(["", "r", "w", "rw"])),
    st.tuples(st.just("knob"), st.sampled_from(abi.FAULT_CAPABILITIES),
              st.sampled_from(["probability", "interval", "times", "space"]), st.integers(-1, 100)),
    st.tuples(st.just("gfp"), st.sampled_from(["failslab", "fail_page_alloc"]), st.booleans()),
    st.tuples(st.just("min_order"), st.integers(0, 1)),
    st.tuples(st.just("fail_nth"), st.integers(0, 6)),
    st.tuples(st.just("partial"), st.integers(0, 1100)),
    st.tuples(st.just("force"), st.sampled_from(STATUSES), st.integers(1, 2)),
    st.tuples(st.just("ioctl"), st.sampled_from(["own", "other", "zero"]), st.integers(0, 3 * PAGE)),
    st.tuples(st.just("mread"), st.sampled_from(sorted(abi.MEASUREMENTS)), st.integers(0, 60),
              st.integers(0, 50), st.integers(0, 2 * PAGE)),
    st.tuples(st.just("mwrite"), st.integers(0, 3), st.sampled_from([48, 47]), st.integers(0, 2 * PAGE)),
)


def replay(name, driver, ops):
    backend = _backend.load(name)
    q = profiles.get(driver).quote  # room for the quote buffer too (quote.md §2.2)
    k = backend.Kernel(backend.Module(ModuleConfig(seed=5), memory_pages=24 + (2 << q.buf_order if q else 0)),
                       driver, seed=11)
    p = k.process()
    p.mmap(WINDOW, PAGES * PAGE, "rw")
    p.poke(WINDOW, bytes(i * 7 % 251 for i in range(PAGES * PAGE)))
    fd = p.open(k.device_path)
    own = abi.TDX_CMD_GET_TDREPORT if driver == "v4-2022-04" else abi.TDX_CMD_GET_REPORT0
    log = []
    for o in ops:
        kind = o[0]
        ret = None
        if kind == "mprotect":
            p.mprotect(WINDOW + o[1] * PAGE, PAGE, o[2])
        elif kind == "knob":
            attr = k.fault(o[1])
            try:
                setattr(attr, o[2], o[3])
                ret = "set"
            except ValueError:
                ret = "ValueError"
        elif kind == "gfp":
            k.fault(o[1]).ignore_gfp_wait = o[2]
        elif kind == "min_order":
            k.fault("fail_page_alloc").min_order = o[1]
        elif kind == "fail_nth":
            p.fail_nth = o[1]
        elif kind == "partial":
            p.fault_user_copy("partial_to_user", at=o[1])
        elif kind == "force":
            k.force_tdcall(o[1], count=o[2])
        elif kind == "ioctl":
            cmd = {"own": own, "other": abi.TDX_CMD_GET_REPORT0 ^ abi.TDX_CMD_GET_TDREPORT ^ own,
                   "zero": 0}[o[1]]
            ret = p.ioctl(fd, cmd, WINDOW + o[2])
        elif kind == "mread":
            f = p.open(f"{MDIR}/{o[1]}")
            ret = (f, p.pread(f, WINDOW + o[4], o[2], o[3]) if f >= 0 else None)
            if f >= 0:
                p.close(f)
        else:  # mwrite
            f = p.open(f"{MDIR}/rtmr{o[1]}:sha384", os.O_WRONLY)
            ret = (f, p.pwrite(f, WINDOW + o[3], o[2], 0) if f >= 0 else None)
            if f >= 0:
                p.close(f)
        c = k.counters()
        log.append((o, ret, p.last_trace(), p.fail_nth, c["outstanding"] - c["resident"],
                    c["locks_held"], p.peek(WINDOW, PAGES * PAGE)))
    return log


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(driver=st.sampled_from(abi.DRIVERS), ops=st.lists(op, min_size=1, max_size=14))
def test_backends_agree_on_random_sequences(driver, ops):
    logs = {name: replay(name, driver, ops) for name in backend_names()}
    first = next(iter(logs.values()))
    for name, log in logs.items():
        for step, (a, b) in enumerate(zip(first, log)):
            assert a == b, f"{name} differs at step {step}: {a[:6]} vs {b[:6]}"
    for entry in first:
        assert entry[4] == 0 and entry[5] == 0, entry[:6]  # no leak, no lock held, after every call
