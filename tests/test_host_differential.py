"""Differential test: the core and the reference Host agree step for step.

Hypothesis draws a sequence of TDVMCALLs (GetQuote over well-formed and hostile buffers, notify
vectors, GetTdVmCallInfo leaves, unknown sub-functions), faults pushed from the menu, header
rewrites, page-state changes, guest reads and clock advances, and runs it on a module + host of each
backend. After every step the registers returned, guest memory and the host counters must be equal.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdxmodel import _backend, abi
from tdxmodel.config import ModuleConfig

PAGE = abi.TDX_PAGE_SIZE
SHARED = abi.TDX_GPA_SHARED_BIT
MEMORY_PAGES = 40
FIRST, LAST = 16, 40

_wanted = os.environ.get("TDXMODEL_TEST_BACKENDS")
if _wanted and not {"core", "reference"} <= set(_wanted.split(",")):
    pytest.skip(f"the differential test needs both backends (TDXMODEL_TEST_BACKENDS={_wanted})",
                allow_module_level=True)

page = st.integers(FIRST - 1, LAST)
fault_specs = st.one_of(
    st.none(),
    st.sampled_from(abi.HOST_FAULTS).flatmap(lambda n: st.fixed_dictionaries(
        {"fault": st.just(n),
         "seconds": st.sampled_from([0, 0.001, 1, 29.9, 30, 45]),
         "out_len": st.sampled_from([0, 1, 8168, 9000, 70000])})))

ops = st.one_of(
    st.tuples(st.just("get_quote"), page, st.sampled_from([0, 0, 0, 64]), st.booleans(),
              st.sampled_from([0, PAGE, 2 * PAGE, 2 * PAGE + 1, 32 * PAGE, 33 * PAGE, 1 << 40])),
    st.tuples(st.just("header"), page, st.sampled_from([0, 1, 1, 1, 2]),
              st.sampled_from([0, 24, 1024, 1024, 2 * PAGE - 24, 2 * PAGE - 23, 0xFFFFFFFF])),
    st.tuples(st.just("fault"), fault_specs),
    st.tuples(st.just("advance"), st.sampled_from([0, 1, 4_676_000, 10**9, 30 * 10**9])),
    st.tuples(st.just("seni"), st.sampled_from([0, 31, 32, 100, 255, 256])),
    st.tuples(st.just("info"), st.integers(0, 3)),
    st.tuples(st.just("other"), st.sampled_from([abi.TDVMCALL_MAP_GPA, 0x10005, 0])),
    st.tuples(st.just("state"), page, st.sampled_from(["shared", "private", "unmapped"])),
    st.tuples(st.just("read"), page, st.sampled_from([4, 24])),
)


def make_pair():
    pair = []
    for name in ("core", "reference"):
        b = _backend.load(name)
        m = b.Module(ModuleConfig(seed=3), memory_pages=MEMORY_PAGES)
        m.set_page_state(FIRST * PAGE, LAST - FIRST, "shared")
        h = b.Host(m, producer=b.TestQuoteProducer())
        pair.append((m, h))
    return pair


def apply(m, h, op):
    kind = op[0]
    try:
        if kind == "get_quote":
            _, p, off, shared, size = op
            return m.tdvmcall(abi.TDVMCALL_GET_QUOTE, (p * PAGE + off) | (SHARED if shared else 0), size)
        if kind == "header":
            _, p, version, in_len = op
            if p * PAGE + 24 > MEMORY_PAGES * PAGE:
                return "skip"
            m.write_memory(p * PAGE, struct.pack("<QQII", version, 0, in_len, 0))
            return None
        if kind == "fault":
            h.push_fault(op[1]) if not isinstance(op[1], dict) else h.push_fault(**op[1])
            return None
        if kind == "advance":
            h.clock.advance_ns(op[1])
            return h.clock.now_ns()
        if kind == "seni":
            return m.tdvmcall(abi.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, op[1]), h.notify_vector
        if kind == "info":
            return m.tdvmcall(abi.TDVMCALL_GET_TD_VM_CALL_INFO, op[1])
        if kind == "other":
            return m.tdvmcall(op[1])
        if kind == "state":
            if op[1] >= MEMORY_PAGES:
                return "skip"
            m.set_page_state(op[1] * PAGE, 1, op[2])
            return None
        if kind == "read":
            h.guest_read(op[1] * PAGE + 20, op[2])
            return None
    except (ValueError, TypeError) as e:
        return type(e).__name__
    raise AssertionError(op)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=30))
def test_host_backends_agree(seq):
    (mc, hc), (mr, hr) = make_pair()
    try:
        for op in seq:
            assert apply(mc, hc, op) == apply(mr, hr, op), op
            assert hc.counters() == hr.counters(), op
            assert mc.read_memory(FIRST * PAGE, (LAST - FIRST) * PAGE) == \
                mr.read_memory(FIRST * PAGE, (LAST - FIRST) * PAGE), op
    finally:
        hc.close()
        hr.close()
