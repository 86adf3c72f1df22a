"""What does tdxmodel add to one ioctl over the transport alone?

Each transport is measured beside a null server of the same transport in the same run: `tdxmodel
serve --null` answers every ioctl with 0 without emulating anything, over the same FUSE file system
and the same socket server. The client is tests/clients/bench_ioctl.c (TDX_CMD_GET_REPORT0 on v6.2,
timed per call with CLOCK_MONOTONIC; the median is reported), reaching the daemon

* through the FUSE device file, and
* through the LD_PRELOAD library at /dev/tdx_guest (Unix socket);

plus a Python client (fcntl.ioctl) on the FUSE file, timed by pytest-benchmark. Target: tdxmodel
adds at most 20% over the null FUSE server.

Client and daemon (every thread) are pinned to one CPU: a round trip between two processes on
different, partly idle CPUs is dominated by wake-up latency (on the 2-CPU test machine the socket
path measured ~60 us unpinned against ~7 us pinned), which would hide what the emulator costs.

    python3 -m pytest benchmarks/bench_transport.py --benchmark-enable   # pytest-benchmark table
    python3 benchmarks/bench_transport.py                                # the numbers for the lead

Needs root and /dev/fuse, like the daemon.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tdxmodel import abi, profiles  # noqa: E402
from tdxmodel.pytest_plugin import ServedDevice  # noqa: E402

CALLS = 20000
PIN_CPU = max(os.sched_getaffinity(0))


def pin(pid: int, cpu: int = PIN_CPU) -> None:
    """Pin every thread of process `pid` to `cpu` (threads created later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass


def start_pinned(driver: str, *extra: str) -> ServedDevice:
    device = ServedDevice(driver, extra_args=extra).start()
    assert device.proc is not None
    pin(device.proc.pid)
    return device


def build_client(directory: str) -> str:
    out = os.path.join(directory, "bench_ioctl")
    subprocess.run(["cc", "-O2", "-I", os.path.join(ROOT, "csrc"), "-o", out,
                    os.path.join(ROOT, "tests", "clients", "bench_ioctl.c")], check=True, timeout=120)
    return out


def client_median_ns(client: str, device: ServedDevice, transport: str, calls: int = CALLS) -> float:
    layout = profiles.get(device.driver).report.client_layout
    if transport == "fuse":
        cmd, env = [client, device.path, layout, str(calls)], None
    else:
        cmd, env = [client, device.device_node, layout, str(calls)], device.preload_env()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=True,
                       preexec_fn=lambda: os.sched_setaffinity(0, {PIN_CPU}))
    return float(r.stdout.split()[0])


@pytest.fixture(scope="module")
def servers():
    devices = {"null": start_pinned("v6.2", "--null"), "tdxmodel": start_pinned("v6.2")}
    yield devices
    for d in devices.values():
        d.stop()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return build_client(str(tmp_path_factory.mktemp("bench")))


@pytest.mark.parametrize("server", ["null", "tdxmodel"])
@pytest.mark.parametrize("transport", ["fuse", "preload"])
def test_c_client_ioctl(benchmark, servers, client, transport, server):
    """One round = the C client making CALLS ioctls; extra_info holds its per-call median."""
    benchmark.group = f"{transport}: C client, {CALLS} x GET_REPORT0"
    medians = []

    def run():
        medians.append(client_median_ns(client, servers[server], transport))

    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["median_ns_per_ioctl"] = sorted(medians)[len(medians) // 2]


@pytest.mark.parametrize("server", ["null", "tdxmodel"])
def test_python_fcntl_ioctl(benchmark, servers, server):
    benchmark.group = "fuse: Python fcntl.ioctl, one GET_REPORT0"
    fd = os.open(servers[server].path, os.O_RDWR)
    buf = bytearray(abi.TDX_REPORT_REQ_LEN)
    try:
        assert benchmark(fcntl.ioctl, fd, abi.TDX_CMD_GET_REPORT0, buf) == 0
    finally:
        os.close(fd)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        client = build_client(tmp)
        print(f"per-ioctl median latency, {CALLS} calls, best of 3 interleaved runs, "
              f"client and daemons on CPU {PIN_CPU}")
        # v6.2: FUSE copies the 1088-byte struct; v4: the daemon copies 1024 bytes in place through
        # process_vm_readv/writev (its command encodes 8)
        # the first generation of each request layout: the struct (v6.2) and the in-place buffer (v4)
        for driver in [next(p.name for p in profiles.PROFILES if p.report.in_place == in_place)
                       for in_place in (False, True)]:
            null = start_pinned(driver, "--null")
            emulated = start_pinned(driver)
            try:
                for transport in ("fuse", "preload"):
                    # interleave the runs so load on the machine hits both alike
                    n, t = [], []
                    for _ in range(3):
                        n.append(client_median_ns(client, null, transport))
                        t.append(client_median_ns(client, emulated, transport))
                    bn, bt = min(n), min(t)
                    print(f"  {driver:10s} {transport:8s} null {bn / 1000:6.2f} us   "
                          f"tdxmodel {bt / 1000:6.2f} us   added {100 * (bt - bn) / bn:+5.1f}%")
            finally:
                null.stop()
                emulated.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
