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
UNMAPPED = 0x90000
STATUSES = [abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_R8, abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR,
            abi.TDX_INVALID_CPUSVN]


def backend_names():
    env = os.environ.get("TDXMODEL_TEST_BACKENDS")
    return env.split(",") if env else list(_backend.BACKENDS)


op = st.one_of(
    st.tuples(st.just("mprotect"), st.integers(0, PAGES - 1), st.sampled_from(["", "r", "w", "rw"])),
    st.tuples(st.just("knob"), st.sampled_from(abi.FAULT_CAPABILITIES),
              st.sampled_from(["probability", "interval", "times", "space", "verbose"]),
              st.one_of(st.integers(-1, 100), st.just(2**64 - 1), st.just(2**63))),
    st.tuples(st.just("gfp"), st.sampled_from(["failslab", "fail_page_alloc"]), st.booleans()),
    st.tuples(st.just("min_order"), st.integers(0, 1)),
    st.tuples(st.just("fail_nth"), st.integers(0, 6)),
    st.tuples(st.just("partial"), st.integers(0, 1100)),
    st.tuples(st.just("force"), st.sampled_from(STATUSES), st.integers(1, 2)),
    st.tuples(st.just("ioctl"), st.sampled_from(["own", "other", "zero"]), st.integers(0, 3 * PAGE)),
    st.tuples(st.just("mread"), st.sampled_from(sorted(abi.MEASUREMENTS)), st.integers(0, 60),
              st.integers(0, 50), st.integers(0, 2 * PAGE)),
    st.tuples(st.just("mwrite"), st.integers(0, 3), st.sampled_from([48, 47]), st.integers(0, 2 * PAGE)),
    # cases the backends once disagreed on (docs/CONTRACT.md "Kernel-model details")
    st.tuples(st.just("misalign"), st.sampled_from([None, "tdreport", "reportdata"])),
    st.tuples(st.just("zero_bytes"), st.sampled_from([UNMAPPED, UNMAPPED + 1, WINDOW + PAGES * PAGE + 3])),
    st.tuples(st.just("rejected"), st.sampled_from(["cmd", "arg", "fd_type", "close_type", "addr"])),
    st.tuples(st.just("neg_offset"), st.booleans(), st.sampled_from(["own", "bad"])),
    st.tuples(st.just("fill_fds")),
)


def replay(name, driver, ops, memory_pages=24):
    backend = _backend.load(name)
    q = profiles.get(driver).quote  # room for the quote buffer too (quote.md §2.2)
    memory_pages += 2 << q.buf_order if q else 0
    k = backend.Kernel(backend.Module(ModuleConfig(seed=5), memory_pages=memory_pages), driver, seed=11)
    p = k.process()
    p.mmap(WINDOW, PAGES * PAGE, "rw")
    p.poke(WINDOW, bytes(i * 7 % 251 for i in range(PAGES * PAGE)))
    fd = p.open(k.device_path)
    own = profiles.get(driver).report.value
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
                ret = ("set", getattr(attr, o[2]), attr.times, attr.space)
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
        elif kind == "misalign":
            try:
                k.force_misaligned(o[1])
                ret = "set"
            except ValueError:
                ret = "ValueError"
        elif kind == "zero_bytes":
            ret = (p.peek(o[1], 0), p.poke(o[1], b""))
        elif kind == "rejected":
            call = {"cmd": lambda: p.ioctl(fd, 1 << 32, WINDOW), "arg": lambda: p.ioctl(fd, own, -1),
                    "fd_type": lambda: p.ioctl(str(fd), own, WINDOW), "close_type": lambda: p.close(None),
                    "addr": lambda: p.pread(fd, -1, 48, 0)}[o[1]]
            try:
                call()
            except (TypeError, ValueError) as e:
                ret = type(e).__name__
        elif kind == "neg_offset":
            f = fd if o[2] == "own" else 99
            ret = (p.pwrite if o[1] else p.pread)(f, WINDOW, 48, -1)
        elif kind == "fill_fds":
            opened, r = [], 0
            while r >= 0 and len(opened) <= abi.FD_LIMIT:  # bounded even where a limit is missing
                r = p.open(k.device_path)
                if r >= 0:
                    opened.append(r)
            ret = (len(opened), r, [p.close(f) for f in opened].count(0))
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
@given(driver=st.sampled_from(abi.DRIVERS), ops=st.lists(op, min_size=1, max_size=14),
       memory_pages=st.sampled_from([17, 18, 19, 24]))
def test_backends_agree_on_random_sequences(driver, ops, memory_pages):
    """17..19 pages leave the kernel 1..3 pages: slabs of several size classes must share them."""
    logs = {name: replay(name, driver, ops, memory_pages) for name in backend_names()}
    first = next(iter(logs.values()))
    for name, log in logs.items():
        for step, (a, b) in enumerate(zip(first, log)):
            assert a == b, f"{name} differs at step {step}: {a[:6]} vs {b[:6]}"
    for entry in first:
        assert entry[4] == 0 and entry[5] == 0, entry[:6]  # no leak, no lock held, after every call
