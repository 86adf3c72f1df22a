"""Differential test: the Cython core and the pure-Python reference Module agree byte for byte.

Hypothesis draws a configuration and a sequence of operations - TDCALLs and the three GPA leaves with
register values that are often misaligned, shared, invalid, unmapped, pending or beyond memory, R8 and
indices above 2**32, host-buffer reports/extends/verifies, reports planted for VERIFYREPORT, and page
state changes - and runs it on one module of each backend built from the same config and seed. After
every step the outcome (status, or TD exit kind and GPA), guest memory, TDINFO and counters must be
equal. Any difference is a bug in one of them (docs/CONTRACT.md).
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tdxmodel import _backend, abi, errors
from tdxmodel.config import ModuleConfig

PAGE = abi.TDX_PAGE_SIZE
SHARED = abi.TDX_GPA_SHARED_BIT
MEMORY_PAGES = 24
FIRST, LAST = 16, MEMORY_PAGES          # the pages the operations play with (16..23)
U64 = (1 << 64) - 1
STATES = ("unmapped", "private", "shared", "pending")

_wanted = os.environ.get("TDXMODEL_TEST_BACKENDS")
if _wanted and not {"core", "reference"} <= set(_wanted.split(",")):
    pytest.skip(f"the differential test needs both backends (TDXMODEL_TEST_BACKENDS={_wanted})",
                allow_module_level=True)

# --- strategies ------------------------------------------------------------------------------
page_gpa = st.integers(FIRST - 1, LAST).map(lambda p: p * PAGE)   # one page below and one past
offsets = st.sampled_from([0, 0, 0, 8, 48, 64, 128, 256, 512, 1024, 2048, 3072, 4032])
invalid_bits = st.sampled_from([0, 0, 0, 0, 1 << 48, 1 << 51, 1 << 63])


#: How make_pair maps pages FIRST.. (set_page_state operations change it later).
INITIAL_SHARED = {FIRST + 3, FIRST + 4}


@st.composite
def gpas(draw):
    """Half well-formed (aligned, valid, the alias of the page's initial mapping), half hostile."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.integers(0, U64))
    gpa = draw(page_gpa)
    if choice <= 5:
        shared = gpa // PAGE in INITIAL_SHARED
        return gpa + draw(st.sampled_from([0, 1024, 2048, 3072])) | (SHARED if shared else 0)
    gpa += draw(offsets)
    if draw(st.booleans()):
        gpa |= SHARED
    return gpa | draw(invalid_bits)


def mostly(value, *others):
    """value about 70% of the time, else one of the other strategies."""
    return st.integers(0, 9).flatmap(lambda k: st.just(value) if k < 7 else st.one_of(*others))


r8_values = mostly(0, st.sampled_from([1, 1 << 32, 1 << 63]), st.integers(0, U64))
indices = st.one_of(st.integers(0, 3), st.sampled_from([4, 1 << 32, U64]), st.integers(0, U64))
raxes = st.one_of(st.sampled_from([2, 4, 22]),
                  st.sampled_from([0, 3, 4 | 1 << 16, 2 | 1 << 24, 22 | 1 << 63, 4 | 1 << 32]),
                  st.integers(0, U64))
data48 = st.binary(min_size=48, max_size=48)

#: How a planted report is altered: (byte to flip bit 0 of, MAC recomputed). The default CPUSVN is
#: 01 02 00..: flipping byte 16 lowers it, byte 17 raises it (ref §4.7).
TAMPERING = [None, None, (224, False), (130, False), (16, True), (17, True), (17, False)]

operations = st.one_of(
    st.tuples(st.just("tdcall"), raxes, gpas(), gpas(), r8_values),
    st.tuples(st.just("mr_report"), gpas(), gpas(), r8_values),
    st.tuples(st.just("mr_rtmr_extend"), gpas(), indices),
    st.tuples(st.just("mr_verifyreport"), gpas()),
    st.tuples(st.just("report"), st.binary(max_size=64), st.sampled_from([0, 0, 0, 1, 1 << 40])),
    st.tuples(st.just("extend"), indices, data48),
    st.tuples(st.just("plant_report"), st.integers(FIRST, LAST - 1), st.sampled_from([0, 256, 1024]),
              st.sampled_from(TAMPERING)),
    st.tuples(st.just("plant_and_verify"), st.one_of(st.integers(FIRST, FIRST + 2), st.integers(FIRST - 1, LAST)),
              st.sampled_from([0, 256, 1024]),
              st.sampled_from(TAMPERING)),
    st.tuples(st.just("write"), st.integers(FIRST, LAST - 1), offsets, st.binary(min_size=1, max_size=96)),
    st.tuples(st.just("set_page_state"), st.integers(FIRST, LAST - 1), st.integers(1, 3),
              st.sampled_from(STATES)),
    st.tuples(st.just("inject_interrupts"), st.integers(0, 3)),  # ref §4.3 row 6 (1.5 only)
)

configs = st.fixed_dictionaries({
    "version": st.sampled_from(["1.0", "1.5"]),
    "attributes": st.sampled_from([0, 1 << 28, 1 | 1 << 28]),
    "servtd_hash": st.sampled_from([bytes(48), b"\x01" * 48]),
    "seed": st.integers(0, 3),
})


# --- running one operation ---------------------------------------------------------------------
def run(m, op):
    """The observable outcome of one operation on one module."""
    kind, *args = op
    try:
        if kind in ("plant_report", "plant_and_verify"):
            # A report of this platform (a flip in CPUSVN raises or lowers it; elsewhere it breaks
            # the MAC), written where VERIFYREPORT may look; plant_and_verify then checks it there.
            page, offset, tamper = args
            report = bytearray(m.report(b"planted"))
            if tamper is not None:
                where, remac = tamper
                report[where] ^= 1
                if remac:
                    report[224:256] = hmac.new(m.mac_key, bytes(report[:224]), hashlib.sha256).digest()
            gpa = page * PAGE + offset
            if FIRST <= page < LAST:
                m.write_memory(gpa, bytes(report[:PAGE - offset]))
            if kind == "plant_and_verify":
                return ("value", m.mr_verifyreport(gpa))
            return ("ok", None)
        if kind == "write":
            page, offset, data = args
            m.write_memory(page * PAGE + offset, data[:PAGE - offset])
            return ("ok", None)
        if kind == "inject_interrupts":
            m.inject_interrupts(*args)
            return ("ok", m.pending_interrupts)
        if kind == "set_page_state":
            page, n, state = args
            m.set_page_state(page * PAGE, min(n, LAST - page), state)
            return ("ok", None)
        result = getattr(m, kind)(*args)
        return ("value", result)
    except errors.TdExit as e:
        return (type(e).__name__, e.gpa)
    except errors.TdxError as e:
        return (type(e).__name__, e.status, e.operand_id)


def snapshot(m):
    return (m.read_memory(0, MEMORY_PAGES * PAGE), m.tdinfo(),
            tuple(m.page_state(p * PAGE) for p in range(MEMORY_PAGES)), m.counters(), m.pending_interrupts)


def make_pair(config):
    modules = []
    for name in ("core", "reference"):
        m = _backend.load(name).Module(ModuleConfig(**config), memory_pages=MEMORY_PAGES)
        m.set_page_state(FIRST * PAGE, 3, "private")
        m.set_page_state((FIRST + 3) * PAGE, 2, "shared")
        m.set_page_state((FIRST + 5) * PAGE, 1, "pending")
        m.write_memory(FIRST * PAGE, bytes(range(256)) * 16)
        modules.append(m)
    return modules


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# (hypothesis --hypothesis-show-statistics lists the outcomes each operation reached)
@given(config=configs, ops=st.lists(operations, min_size=1, max_size=25))
def test_core_equals_reference(config, ops):
    core, ref = make_pair(config)
    assert core.mac_key == ref.mac_key and core.tdinfo() == ref.tdinfo()
    for step, op in enumerate(ops):
        outcome = run(core, op)
        assert outcome == run(ref, op), f"step {step}: {op}"
        if op[0] not in ("write", "set_page_state", "plant_report", "inject_interrupts"):
            shown = hex(outcome[1]) if isinstance(outcome[1], int) and outcome[0] == "value" else outcome[0]
            event(f"{op[0]} -> {shown}")
        assert snapshot(core) == snapshot(ref), f"state differs after step {step}: {op}"
    for m in (core, ref):
        c = m.counters()
        assert c["rtmr_shared_acquired"] == c["rtmr_shared_released"]
        assert c["rtmr_exclusive_acquired"] == c["rtmr_exclusive_released"]


@settings(max_examples=40, deadline=None)
@given(config=configs, reportdata=st.lists(st.binary(min_size=64, max_size=64), max_size=6),
       extends=st.lists(st.tuples(st.integers(0, 3), data48), max_size=4))
def test_batch_core_equals_reference(config, reportdata, extends):
    import numpy as np
    core, ref = make_pair(config)
    idx = np.array([i for i, _ in extends], dtype=np.uint64)
    rows = np.frombuffer(b"".join(d for _, d in extends), dtype=np.uint8).reshape(len(extends), 48)
    assert core.extend_batch(idx, rows).tolist() == ref.extend_batch(idx, rows).tolist()
    rd = np.frombuffer(b"".join(reportdata), dtype=np.uint8).reshape(len(reportdata), 64)
    (core_reports, core_status), (ref_reports, ref_status) = core.report_batch(rd), ref.report_batch(rd)
    assert core_reports.tobytes() == ref_reports.tobytes()
    assert core_status.tolist() == ref_status.tolist()
    assert core.counters() == ref.counters()
