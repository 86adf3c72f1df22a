"""The RTMR lock (ref §4.8): REPORT takes it shared, EXTEND exclusive, nobody waits.

Held-lock tests pin the lock from outside (rtmr_lock_try / rtmr_unlock) and check each leaf's answer,
including where step 5 (the lock) sits among the other checks (ref §4.3, §4.6). The real-thread tests
run leaves from several Python threads at once (the core releases the GIL around each C call) and
check that no extend is lost and that no report is torn.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import threading
import time

import numpy as np
import pytest

from tdxmodel import abi, errors

PAGE = abi.TDX_PAGE_SIZE
OUT, RD, EXT, UNM = 16 * PAGE, 17 * PAGE, 18 * PAGE, 19 * PAGE
BUSY_RTMR = abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR
OI = abi.TDX_OPERAND_INVALID
DATA = hashlib.sha384(b"data").digest()


@pytest.fixture
def guest(make_module):
    def factory(**config):
        m = make_module(memory_pages=32, **config)
        for gpa in (OUT, RD, EXT):
            m.set_page_state(gpa, 1, "private")
        m.write_memory(EXT, DATA)
        m.write_memory(OUT, b"\xee" * PAGE)
        return m
    return factory


def rtmrs(m):
    return [m.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]


def test_report_is_busy_while_the_lock_is_held_exclusive(guest):
    m = guest()
    assert m.rtmr_lock_try(True) == abi.TDX_SUCCESS
    try:
        with pytest.raises(errors.OperandBusy) as info:
            m.report(b"x")
        assert info.value.status == BUSY_RTMR and info.value.operand_id == abi.TDX_OPERAND_ID_RTMR
        assert m.mr_report(OUT, RD) == BUSY_RTMR
        assert m.read_memory(OUT, PAGE) == b"\xee" * PAGE, "a BUSY report wrote its output"
        # ref §4.3: step 5 (lock) comes after step 4 (R8) and before step 8 (RCX validity) ...
        assert m.mr_report(OUT | (1 << 48), RD) == BUSY_RTMR
        assert m.mr_report(OUT, RD, 1) == OI | abi.TDX_OPERAND_ID_R8
        assert m.mr_report(OUT + 64, RD) == OI | abi.TDX_OPERAND_ID_RCX
        # ... and after the RDX walk (3b)
        with pytest.raises(errors.EptViolation):
            m.mr_report(OUT, UNM)
        reports, statuses = m.report_batch(np.zeros((3, 64), dtype=np.uint8))
        assert statuses.tolist() == [BUSY_RTMR] * 3 and not reports.any()
        # VERIFYREPORT takes no RTMR lock (ref §4.7)
        assert m.verify(bytes(256)) == abi.TDX_INVALID_REPORTMACSTRUCT
    finally:
        m.rtmr_unlock(True)
    assert m.mr_report(OUT, RD) == abi.TDX_SUCCESS
    assert m.counters()["rtmr_busy"] == 6


@pytest.mark.parametrize("exclusive", [False, True], ids=["shared held", "exclusive held"])
def test_extend_is_busy_while_the_lock_is_held(guest, exclusive):
    m = guest()
    before = rtmrs(m)
    assert m.rtmr_lock_try(exclusive) == abi.TDX_SUCCESS
    try:
        with pytest.raises(errors.OperandBusy) as info:
            m.extend(0, DATA)
        assert info.value.status == BUSY_RTMR
        assert m.mr_rtmr_extend(EXT, 1) == BUSY_RTMR
        # ref §4.6: the index (step 3) and RCX (steps 1-2) are checked before the lock (step 4)
        assert m.mr_rtmr_extend(EXT, 4) == OI | abi.TDX_OPERAND_ID_RDX
        assert m.mr_rtmr_extend(EXT + 8, 0) == OI | abi.TDX_OPERAND_ID_RCX
        assert rtmrs(m) == before
    finally:
        m.rtmr_unlock(exclusive)
    m.extend(0, DATA)
    assert m.rtmr(0) == hashlib.sha384(bytes(48) + DATA).digest()


def test_shared_holders_do_not_conflict(guest):
    m = guest()
    assert m.rtmr_lock_try(False) == abi.TDX_SUCCESS
    assert m.rtmr_lock_try(False) == abi.TDX_SUCCESS
    assert m.mr_report(OUT, RD) == abi.TDX_SUCCESS  # a third shared holder, for the leaf
    assert m.rtmr_lock_try(True) == BUSY_RTMR
    m.rtmr_unlock(False)
    assert m.rtmr_lock_try(True) == BUSY_RTMR       # one reader still holds it
    m.rtmr_unlock(False)
    assert m.rtmr_lock_try(True) == abi.TDX_SUCCESS
    assert m.rtmr_lock_try(False) == BUSY_RTMR
    assert m.rtmr_lock_try(True) == BUSY_RTMR
    m.rtmr_unlock(True)
    c = m.counters()
    assert c["rtmr_busy"] == 4
    assert c["rtmr_shared_acquired"] == 3 and c["rtmr_exclusive_acquired"] == 1


def test_unlocking_a_lock_not_held_is_refused(guest):
    m = guest()
    with pytest.raises(ValueError, match="not held"):
        m.rtmr_unlock(True)
    with pytest.raises(ValueError, match="not held"):
        m.rtmr_unlock(False)
    assert m.rtmr_lock_try(False) == abi.TDX_SUCCESS
    with pytest.raises(ValueError, match="not held"):
        m.rtmr_unlock(True)
    m.rtmr_unlock(False)
    m.extend(0, DATA)  # the lock word survived the refused unlocks
    c = m.counters()
    assert c["rtmr_shared_released"] == 1 and c["rtmr_exclusive_released"] == 1


def test_set_rtmr_waits_for_the_exclusive_lock(guest):
    m = guest()
    value = hashlib.sha384(b"from the state directory").digest()
    assert m.rtmr_lock_try(False) == abi.TDX_SUCCESS   # a report in flight
    done = threading.Event()

    def sync():
        m.set_rtmr(2, value)
        done.set()

    t = threading.Thread(target=sync)
    t.start()
    try:
        assert not done.wait(0.2), "set_rtmr did not wait for the RTMR lock"
        assert m.rtmr(2) == bytes(48)
    finally:
        m.rtmr_unlock(False)
    t.join(10)
    assert done.is_set() and m.rtmr(2) == value
    report = m.report()
    assert report[abi.TDR_OFF_RTMR0 + 96:][:48] == value
    assert report[80:128] == hashlib.sha384(report[512:]).digest()


# ---------------------------------------------------------------------------------------------
# Real threads
# ---------------------------------------------------------------------------------------------
def _chain(start, datas):
    value = start
    for d in datas:
        value = hashlib.sha384(value + d).digest()
    return value


def _prefix_values(datas):
    values = {bytes(48)}
    value = bytes(48)
    for d in datas:
        value = hashlib.sha384(value + d).digest()
        values.add(value)
    return values


def _run(threads):
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()


def _reporter(m, barrier, rounds, reports, busy):
    barrier.wait()
    for k in range(rounds):
        try:
            reports.append(m.report(k.to_bytes(8, "little")))
        except errors.OperandBusy as e:
            assert e.status == BUSY_RTMR
            busy.append(k)


def test_concurrent_reports_never_conflict(make_module):
    """Two REPORTs do not conflict (ref §4.8): with no extender, no thread ever sees BUSY."""
    m = make_module()
    rounds, n = 400, 3
    barrier = threading.Barrier(n)
    reports, busy = [[] for _ in range(n)], [[] for _ in range(n)]
    _run([threading.Thread(target=_reporter, args=(m, barrier, rounds, reports[i], busy[i]))
          for i in range(n)])
    assert sum(map(len, busy)) == 0 and m.counters()["rtmr_busy"] == 0
    assert all(len(r) == rounds for r in reports)


def test_threads_extending_and_reporting_lose_no_extend(make_module):
    """One extender thread per RTMR index (so each index's lock order is that thread's program order)
    and reporter threads, all at once: every RTMR ends at the serial replay of its successful
    extends, every BUSY is counted, and every report is internally consistent (never torn)."""
    m = make_module()
    rounds, n_ext, n_rep = 300, 3, 2
    barrier = threading.Barrier(n_ext + n_rep)
    done = [[] for _ in range(n_ext)]
    ext_busy = [[] for _ in range(n_ext)]
    reports = [[] for _ in range(n_rep)]
    rep_busy = [[] for _ in range(n_rep)]

    def extender(index):
        barrier.wait()
        for k in range(rounds):
            data = hashlib.sha384(b"%d/%d" % (index, k)).digest()
            try:
                m.extend(index, data)
            except errors.OperandBusy as e:
                assert e.status == BUSY_RTMR
                ext_busy[index].append(k)
            else:
                done[index].append(data)

    _run([threading.Thread(target=extender, args=(i,)) for i in range(n_ext)]
         + [threading.Thread(target=_reporter, args=(m, barrier, rounds, reports[i], rep_busy[i]))
            for i in range(n_rep)])

    for i in range(n_ext):
        assert m.rtmr(i) == _chain(bytes(48), done[i]), f"RTMR{i} lost an extend"
    assert m.rtmr(3) == bytes(48)
    c = m.counters()
    busy_seen = sum(map(len, ext_busy)) + sum(map(len, rep_busy))
    assert c["rtmr_busy"] == busy_seen
    assert c["extends"] == n_ext * rounds and c["reports"] == n_rep * rounds
    assert c["rtmr_exclusive_acquired"] == sum(map(len, done))
    prefixes = [_prefix_values(done[i]) for i in range(n_ext)]
    for report in itertools.chain.from_iterable(reports):
        assert report[80:128] == hashlib.sha384(report[512:]).digest(), "torn TDINFO"
        assert report[224:256] == hmac.new(m.mac_key, report[:224], hashlib.sha256).digest()
        for i in range(n_ext):
            off = abi.TDR_OFF_RTMR0 + 48 * i
            assert report[off:off + 48] in prefixes[i], "a report saw an RTMR no extend produced"


def _some_interleaving_reaches(target, a, b):
    """Whether some merge of the sequences a and b (each kept in order) extends 0 to target."""
    stack = [(0, 0, bytes(48))]
    while stack:
        i, j, value = stack.pop()
        if i == len(a) and j == len(b):
            if value == target:
                return True
            continue
        if i < len(a):
            stack.append((i + 1, j, hashlib.sha384(value + a[i]).digest()))
        if j < len(b):
            stack.append((i, j + 1, hashlib.sha384(value + b[j]).digest()))
    return False


def test_two_threads_extending_one_rtmr_lose_no_extend(make_module):
    """Two threads extend the same RTMR with a reporter running. Python cannot log the extends in
    lock order, so the check searches the merges of the two program orders: the final RTMR must be
    the chain of some merge of all successful extends - a lost or doubled extend matches none."""
    m = make_module()
    goal = 7
    done = [[], []]
    busy = [0, 0]
    stop = threading.Event()
    barrier = threading.Barrier(3)

    def extender(t):
        barrier.wait()
        k = 0
        deadline = time.monotonic() + 20
        while len(done[t]) < goal and time.monotonic() < deadline:
            data = hashlib.sha384(b"thread %d event %d" % (t, k)).digest()
            k += 1
            try:
                m.extend(1, data)
            except errors.OperandBusy:
                busy[t] += 1
            else:
                done[t].append(data)

    def reporter():
        barrier.wait()
        while not stop.is_set():
            try:
                m.report()
            except errors.OperandBusy:
                pass

    rep = threading.Thread(target=reporter)
    rep.start()
    try:
        _run([threading.Thread(target=extender, args=(t,)) for t in (0, 1)])
    finally:
        stop.set()
        rep.join(60)
    assert len(done[0]) == len(done[1]) == goal
    assert _some_interleaving_reaches(m.rtmr(1), done[0], done[1])
    # the search can fail: dropping any one extend matches no merge
    assert not _some_interleaving_reaches(m.rtmr(1), done[0][:-1], done[1])


def test_batch_reports_racing_extends_are_never_torn(make_module, backend):
    """report_batch runs its whole loop without the GIL (core), one shared lock per report, while
    another thread extends: each row is either BUSY (and zero) or a consistent report of an RTMR
    value some prefix of the extends produced; no extend is lost."""
    m = make_module()
    rows = 4000 if backend.BACKEND_NAME == "core" else 200
    stop = threading.Event()
    done, ext_busy, batches = [], [], []

    def batcher():
        try:
            for r in range(3):
                rd = np.full((rows, 64), r, dtype=np.uint8)
                batches.append(m.report_batch(rd))
        finally:
            stop.set()

    def extender():
        k = 0
        while not stop.is_set():
            data = hashlib.sha384(b"%d" % k).digest()
            k += 1
            try:
                m.extend(0, data)
            except errors.OperandBusy:
                ext_busy.append(k)
            else:
                done.append(data)

    _run([threading.Thread(target=extender), threading.Thread(target=batcher)])
    assert m.rtmr(0) == _chain(bytes(48), done)
    prefixes = _prefix_values(done)
    batch_busy = 0
    for reports, statuses in batches:
        for report, status in zip(reports, statuses.tolist()):
            if status == BUSY_RTMR:
                batch_busy += 1
                assert not report.any(), "a BUSY row was written"
                continue
            assert status == abi.TDX_SUCCESS
            report = report.tobytes()
            assert report[80:128] == hashlib.sha384(report[512:]).digest(), "torn TDINFO"
            assert report[224:256] == hmac.new(m.mac_key, report[:224], hashlib.sha256).digest()
            assert report[abi.TDR_OFF_RTMR0:abi.TDR_OFF_RTMR0 + 48] in prefixes
    assert m.counters()["rtmr_busy"] == batch_busy + len(ext_busy)


def test_state_snapshots_are_never_torn(make_module):
    """rtmr()/tdinfo() read while another thread extends always show an RTMR value the extends
    produced, never a half-written one (the snapshot does not take the RTMR lock)."""
    m = make_module()
    stop = threading.Event()
    done = []
    snapshots = []

    def extender():
        k = 0
        while not stop.is_set() and k < 3000:
            data = hashlib.sha384(b"%d" % k).digest()
            k += 1
            m.extend(0, data)  # the only lock user: never BUSY
            done.append(data)
        stop.set()

    t = threading.Thread(target=extender)
    t.start()
    try:
        while not stop.is_set():
            snapshots.append(m.tdinfo()[abi.TDR_OFF_RTMR0 - abi.TDR_OFF_TDINFO:][:48])
            snapshots.append(m.rtmr(0))
    finally:
        stop.set()
        t.join(60)
    prefixes = _prefix_values(done)
    assert all(s in prefixes for s in snapshots)
    assert m.rtmr(0) == _chain(bytes(48), done)


def test_a_shared_hold_released_from_another_thread_frees_the_lock(make_module):
    """The lock counts holders, not threads (as the module's one-word lock does): a shared hold taken
    on one thread and released on another leaves the lock free for a writer."""
    m = make_module()
    took = []
    t = threading.Thread(target=lambda: took.append(m.rtmr_lock_try(False)))
    t.start()
    t.join()
    assert took == [0]
    assert m.rtmr_lock_try(True) == abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR
    m.rtmr_unlock(False)
    assert m.rtmr_lock_try(True) == 0
    m.rtmr_unlock(True)
    with pytest.raises(ValueError):
        m.rtmr_unlock(False)
