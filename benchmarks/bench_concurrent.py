"""Concurrent callers: 1..N threads on one TD, with and without a concurrent RTMR extender.

Question: do Python threads scale across cores? The batch calls release the GIL for their whole
loop, so a fixed amount of work split over 2 threads should take about half as long on 2 cores
(target for the batch API: >= 1.7x one caller); single leaves and ioctls keep it (README "Speed"). The extender hammers TDG.MR.RTMR.EXTEND on the module leaf,
outside any driver (ref §4.8), so some reports meet BUSY|RTMR; their count is kept in extra_info.
"""

import os
import threading

import numpy as np
import pytest

CALLER_COUNTS = tuple(range(1, max(2, os.cpu_count() or 1) + 1))
from tdxmodel import abi, bench, errors, profiles
from tdxmodel.client import TdxGuest

TOTAL_REPORTS = 65536
CHUNK = 512
TOTAL_IOCTLS = 16384


def run_split(callers, work, extender=None):
    """Run ``work(i)`` on ``callers`` threads at once (and ``extender(stop)`` beside them)."""
    stop = threading.Event()
    failures = []

    def guard(fn, *args):
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001
            failures.append(e)

    threads = [threading.Thread(target=guard, args=(work, i)) for i in range(callers)]
    ext = threading.Thread(target=guard, args=(extender, stop)) if extender else None
    if ext:
        ext.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    if ext:
        ext.join()
    if failures:
        raise failures[0]


def module_extender(module, counts):
    def extender(stop):
        data = bytes(48)
        while not stop.is_set():
            try:
                module.extend(bench.EXTEND_INDEX, data)
                counts["extends"] += 1
            except errors.OperandBusy:
                counts["extend_busy"] += 1
    return extender


@pytest.mark.parametrize("extender", ["no-extender", "extender"])
@pytest.mark.parametrize("callers", CALLER_COUNTS)
def test_batch_api_threads(benchmark, backend_name, callers, extender):
    benchmark.group = f"concurrent batch API, {extender}"
    benchmark.extra_info["callers"] = callers
    module = bench.make_module(backend_name)
    total = TOTAL_REPORTS if backend_name == "core" else TOTAL_REPORTS // 64
    per_thread = total // callers
    benchmark.extra_info["calls"] = total  # the reference does a fraction of the core's work
    data = bench.random_reportdata(CHUNK)
    busy = np.zeros(callers, dtype=np.int64)
    counts = {"extends": 0, "extend_busy": 0}

    def work(i):
        for _ in range(per_thread // CHUNK):
            _, statuses = module.report_batch(data)
            busy[i] += int(np.count_nonzero(statuses == bench.BUSY_RTMR))
            assert not (statuses[statuses != bench.BUSY_RTMR]).any()

    benchmark.pedantic(run_split, args=(callers, work, module_extender(module, counts) if extender == "extender"
                                        else None), rounds=3, iterations=1)
    benchmark.extra_info["busy_reports"] = int(busy.sum())
    benchmark.extra_info.update(counts)


@pytest.mark.parametrize("extender", ["no-extender", "extender"])
@pytest.mark.parametrize("callers", CALLER_COUNTS)
def test_ioctl_threads_v62(benchmark, backend_name, callers, extender):
    """GET_REPORT0 ioctls one at a time through the Python API, one process per thread; on v6.2 a
    module BUSY turns into -EIO (ref §2.4)."""
    benchmark.group = f"concurrent ioctl v6.2, {extender}"
    benchmark.extra_info["callers"] = callers
    kernel = bench.make_kernel(backend_name, "v6.2")
    total = TOTAL_IOCTLS if backend_name == "core" else TOTAL_IOCTLS // 32
    per_thread = total // callers
    benchmark.extra_info["calls"] = total  # the reference does a fraction of the core's work
    callers_ = [TdxGuest(kernel=kernel) for _ in range(callers)]
    results = [dict() for _ in range(callers)]
    counts = {"extends": 0, "extend_busy": 0}

    def work(i):
        c, res = callers_[i], results[i]
        ioctl, fd, cmd, arg = c.process.ioctl, c.fd, c.cmd, c.buffer
        for _ in range(per_thread):
            ret = ioctl(fd, cmd, arg)
            res[ret] = res.get(ret, 0) + 1

    try:
        benchmark.pedantic(run_split, args=(callers, work, module_extender(kernel.module, counts)
                                            if extender == "extender" else None), rounds=3, iterations=1)
    finally:
        for c in callers_:
            c.close()
    merged = {}
    for res in results:
        for k, v in res.items():
            merged[k] = merged.get(k, 0) + v
    assert set(merged) <= {0, -abi.EIO}, merged
    benchmark.extra_info["eio_from_busy"] = merged.get(-abi.EIO, 0)
    benchmark.extra_info.update(counts)


@pytest.mark.parametrize("extender", ["no-extender", "extender"])
@pytest.mark.parametrize("callers", CALLER_COUNTS)
@pytest.mark.parametrize("drv", ["v6.2", "v6.16"])
def test_ioctl_batch_threads(benchmark, backend_name, drv, callers, extender):
    """The driver-path batch (``TdxGuest.ioctl_batch``: one nogil C loop per call on the core), one
    process per thread. v6.2 takes no lock (ref §2.4); v6.16 serialises every REPORT on mr_lock
    (ref §2.5), so it cannot scale by design. A module BUSY from the extender gives -EIO on v6.2 and
    -EBUSY on v6.16."""
    benchmark.group = f"concurrent driver ioctl_batch {drv}, {extender}"
    benchmark.extra_info["callers"] = callers
    kernel = bench.make_kernel(backend_name, drv)
    total = TOTAL_IOCTLS if backend_name == "core" else TOTAL_IOCTLS // 32
    per_thread = total // callers
    benchmark.extra_info["calls"] = total  # the reference does a fraction of the core's work
    chunk = 64
    callers_ = [TdxGuest(kernel=kernel) for _ in range(callers)]
    data = bench.random_reportdata(chunk)
    failed = [[] for _ in range(callers)]
    counts = {"extends": 0, "extend_busy": 0}

    def work(i):
        for _ in range(max(1, per_thread // chunk)):
            rets, _ = callers_[i].ioctl_batch(data)
            failed[i].extend(rets[rets != 0].tolist())

    try:
        benchmark.pedantic(run_split, args=(callers, work, module_extender(kernel.module, counts)
                                            if extender == "extender" else None), rounds=3, iterations=1)
    finally:
        for c in callers_:
            c.close()
    busy_ret = -profiles.get(drv).status_errno(abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR)
    assert all(r == busy_ret for f in failed for r in f)
    benchmark.extra_info["busy_rets"] = sum(len(f) for f in failed)
    benchmark.extra_info.update(counts)
