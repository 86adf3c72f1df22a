"""Two Python threads making one call at a time: tdxmodel's per-call ioctl beside CPython's own ceiling.

    python3 benchmarks/gil_ceiling.py [--pairs N] [--seconds S] [--extend-ratio R] [--switch-interval S]

Each pair runs, back to back, one and two threads of ``tdxmodel.bench.measure_ioctl_scaling`` (GET_REPORT
through ``Process.ioctl`` on v6.2, extends making up R of the calls, as ``tdxmodel bench`` does), then
one and two threads calling an empty Python function in the same harness. The empty function is the
ceiling of anything that holds the GIL: only one thread runs Python at a time, and CPython hands the
GIL over every ``sys.getswitchinterval()``, each hand-over waiting for the other thread to wake.
Interleaved pairs in ABBA order, so a neighbour's load or a drifting machine hits both sides of a ratio
alike; the medians are printed last.
``--switch-interval`` sets ``sys.setswitchinterval`` for the run (a knob the calling program owns;
tdxmodel never changes it).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from tdxmodel import bench as workloads

ROUND = 64  # calls per loop round, as measure_ioctl_scaling's chunk


def empty_calls_per_s(callers: int, seconds: float) -> float:
    """Calls per second of ``callers`` threads each calling an empty function ROUND times per round,
    in the harness the ioctl workload runs in (``tdxmodel.bench._run_callers``)."""
    counts = [0] * callers

    def nothing():
        pass

    def make_worker(i: int):
        def work():
            for _ in range(ROUND):
                nothing()
            counts[i] += ROUND
        return work

    elapsed, _cpu = workloads._run_callers(callers, seconds, make_worker)
    return sum(counts) / elapsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=6, help="interleaved 1- and 2-thread pairs (default 6)")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per window (default 1)")
    p.add_argument("--extend-ratio", type=float, default=0.1, help="fraction of calls that are extends (0.1)")
    p.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval for the run")
    p.add_argument("--driver", default="v6.2", help="driver generation (default v6.2)")
    a = p.parse_args(argv)
    if a.pairs < 1 or not 0 < a.seconds <= 60 or not 0 <= a.extend_ratio < 1:
        p.error("--pairs >= 1, 0 < --seconds <= 60, 0 <= --extend-ratio < 1")
    if a.switch_interval is not None:
        if not 0 < a.switch_interval <= 1:
            p.error("--switch-interval must be in (0, 1] seconds")
        sys.setswitchinterval(a.switch_interval)
    print(f"switch interval {sys.getswitchinterval() * 1000:g} ms, extend ratio {a.extend_ratio}, "
          f"{a.seconds:g} s windows, driver {a.driver}", flush=True)
    ioctl_ratios, empty_ratios = [], []
    def ioctl_calls_per_s(callers: int) -> float:
        return workloads.measure_ioctl_scaling("core", a.driver, callers, a.seconds, a.extend_ratio)["calls_per_s"]

    for pair in range(a.pairs):
        # ABBA: odd pairs run two threads first, so a machine drifting faster or slower over the run
        # (seen here: +-5 % between consecutive one-thread windows) favours neither side
        order = (1, 2) if pair % 2 == 0 else (2, 1)
        ioctl = {n: ioctl_calls_per_s(n) for n in order}
        empty = {n: empty_calls_per_s(n, a.seconds) for n in order}
        one, two, e1, e2 = ioctl[1], ioctl[2], empty[1], empty[2]
        ioctl_ratios.append(two / one)
        empty_ratios.append(e2 / e1)
        print(f"ioctl {one / 1e6:.2f} -> {two / 1e6:.2f} M calls/s ({two / one:.2f}x); "
              f"empty function {e1 / 1e6:.1f} -> {e2 / 1e6:.1f} M/s ({e2 / e1:.2f}x)", flush=True)
    print(f"median: ioctl {statistics.median(ioctl_ratios):.3f}x, "
          f"empty function (the ceiling) {statistics.median(empty_ratios):.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
