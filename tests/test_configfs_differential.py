"""Differential test: the core and the reference agree on the configfs-tsm quote path step for step.

Hypothesis draws a generation and a sequence of configfs syscalls (mkdir/rmdir on good and bad paths,
opens in every access mode, reads and writes of every size, closes), host faults from the menu, clock
advances, signals, fail-nth, forced TDCALL statuses and provider (un)registration, and runs it on a
Module + Host + Kernel of each backend. After every step the return value, the bytes a read returned,
the host counters and the kernel's allocation and lock counters must be equal.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdxmodel import _backend, abi, errors, profiles
from tdxmodel.config import ModuleConfig

R = profiles.TSM_REPORT_DIR
GENS = [p.name for p in profiles.PROFILES if p.quote is not None]
UBUF = 0x100000
PAGE = abi.TDX_PAGE_SIZE

_wanted = os.environ.get("TDXMODEL_TEST_BACKENDS")
if _wanted and not {"core", "reference"} <= set(_wanted.split(",")):
    pytest.skip(f"the differential test needs both backends (TDXMODEL_TEST_BACKENDS={_wanted})",
                allow_module_level=True)

names = st.sampled_from(["a", "b"])
attrs = st.sampled_from(["inblob", "outblob", "generation", "provider", "auxblob", ""])
paths = st.one_of(st.builds(lambda n, a: f"{R}/{n}/{a}" if a else f"{R}/{n}", names, attrs),
                  st.sampled_from([R, R + "/", R.rsplit("/", 1)[0], R + "/a/outblob/x"]))
faults = st.one_of(st.none(), st.sampled_from(abi.HOST_FAULTS).flatmap(
    lambda n: st.fixed_dictionaries({"fault": st.just(n), "seconds": st.sampled_from([0, 0.5, 5, 29.5, 30, 45]),
                                     "out_len": st.sampled_from([0, 10, 3000, 9000])})))
ops = st.one_of(
    st.tuples(st.just("mkdir"), paths), st.tuples(st.just("rmdir"), paths),
    st.tuples(st.just("open"), paths, st.sampled_from([os.O_RDONLY, os.O_WRONLY, os.O_RDWR])),
    st.tuples(st.just("read"), st.integers(0, 3), st.sampled_from([0, 1, 100, 1088, 1 << 16])),
    st.tuples(st.just("write"), st.integers(0, 3), st.sampled_from([0, 1, 32, 63, 64, 65]),
              st.sampled_from([0, 0, 0, 0x7000_0000])),
    st.tuples(st.just("pread"), st.integers(0, 3), st.sampled_from([0, 50]), st.sampled_from([0, 10, 5000])),
    st.tuples(st.just("close"), st.integers(0, 3)),
    st.tuples(st.just("fault"), faults),
    st.tuples(st.just("advance"), st.sampled_from([0, 10**9, 30 * 10**9])),
    st.tuples(st.just("signal"), st.booleans()),
    st.tuples(st.just("fail_nth"), st.integers(0, 3)),
    st.tuples(st.just("force"), st.sampled_from([abi.TDX_OPERAND_INVALID | 1, abi.TDX_OPERAND_BUSY | 0xA8])),
    st.tuples(st.just("unregister")), st.tuples(st.just("register")),
    st.tuples(st.just("stat"), paths), st.tuples(st.just("readdir"), paths),
)


def make(name, driver):
    b = _backend.load(name)
    m = b.Module(ModuleConfig(seed=4), memory_pages=160)
    h = b.Host(m, producer=b.TestQuoteProducer())
    k = b.Kernel(m, driver, seed=2)
    p = k.process()
    p.mmap(UBUF, 32 * PAGE, "rw")
    p.poke(UBUF, bytes(range(256)) * 4)
    k.fault("failslab").ignore_gfp_wait = False
    return {"k": k, "p": p, "h": h, "fds": []}


def apply(env, op):
    k, p, h, fds = env["k"], env["p"], env["h"], env["fds"]
    kind = op[0]
    fd_at = lambda i: fds[i % len(fds)] if fds else 99  # noqa: E731
    try:
        if kind == "mkdir":
            return p.mkdir(op[1])
        if kind == "rmdir":
            return p.rmdir(op[1])
        if kind == "open":
            fd = p.open(op[1], op[2])
            if fd >= 0:
                fds.append(fd)
            return fd >= 0 or fd
        if kind == "read":
            n = p.read(fd_at(op[1]), UBUF + 8 * PAGE, op[2])
            return n, p.peek(UBUF + 8 * PAGE, min(max(n, 0), 4096))
        if kind == "write":
            return p.write(fd_at(op[1]), UBUF + op[3], op[2])
        if kind == "pread":
            n = p.pread(fd_at(op[1]), UBUF + 8 * PAGE, op[2], op[3])
            return n, p.peek(UBUF + 8 * PAGE, min(max(n, 0), 4096))
        if kind == "close":
            if not fds:
                return p.close(99)
            return p.close(fds.pop(op[1] % len(fds)))
        if kind == "fault":
            h.push_fault(op[1]) if not isinstance(op[1], dict) else h.push_fault(**op[1])
            return None
        if kind == "advance":
            h.clock.advance_ns(op[1])
            return h.clock.now_ns()
        if kind == "signal":
            p.signal_pending = op[1]
            return None
        if kind == "fail_nth":
            p.fail_nth = op[1]
            return None
        if kind == "force":
            k.force_tdcall(op[1], leaf=abi.TDG_MR_REPORT)
            return None
        if kind == "unregister":
            return k.tsm_unregister()
        if kind == "register":
            return k.tsm_register()
        if kind == "stat":
            return p.stat(op[1])
        if kind == "readdir":
            return p.readdir(op[1])
    except errors.KernelOops:
        return "oops"
    except (ValueError, TypeError) as e:
        return type(e).__name__
    raise AssertionError(op)


def observe(env):
    c = dict(env["k"].counters())
    return c, env["h"].counters(), env["p"].fail_nth


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(GENS), st.lists(ops, min_size=1, max_size=25))
def test_configfs_backends_agree(driver, seq):
    core, ref = make("core", driver), make("reference", driver)
    # every sequence starts with a committed inblob and an open outblob, so reads reach the provider
    prefix = [("mkdir", R + "/a"), ("open", R + "/a/inblob", os.O_WRONLY), ("write", 0, 64, 0), ("close", 0),
              ("open", R + "/a/outblob", os.O_RDONLY)]
    try:
        for op in prefix + seq:
            assert apply(core, op) == apply(ref, op), op
            assert observe(core) == observe(ref), op
    finally:
        core["h"].close()
        ref["h"].close()
