"""``tdxmodel bench``: throughput of the emulated attestation path under concurrent callers.

Flags and JSON keys are a contract: ``--callers N --seconds S --extend-ratio R --driver NAME --json
--plot FILE``. The workloads live in ``tdxmodel.bench``; this module runs them
(``measure``) and prints the table (``format_table``) or the JSON. JSON keys (one object):

* ``batch_reports_per_s``: ``Module.report_batch`` throughput, one thread, ``batch_rows`` rows per call;
* ``mac_floor_per_s`` (and ``sha384_floor_per_s``, ``floor_source``): HMAC-SHA-256 over 224 bytes with a
  precomputed key in an OpenSSL C loop, one thread, same run;
* ``call_median_us``, ``call_p99_us``: one GET_REPORT ioctl through ``Process.ioctl`` on the main
  backend (the Cython core when built); ``reference_call_median_us`` / ``reference_call_p99_us``: the
  same on the pure-Python reference;
* ``scaling``: callers ("1".."N") -> calls per second (reports + extends) of the batch API workload,
  with ``scaling_parallelism`` (cores its callers were granted) and ``scaling_cpu_efficiency`` (calls
  per CPU-second relative to one caller); ``ioctl_scaling`` and ``ioctl_batch_scaling``: the same for
  GET_REPORT ioctls one per Python call, and through the driver-path batch;
* ``mixed_scaling``: reports (extends not counted) per second of the batch-API callers at ratio R;
* ``quote_per_s`` and ``ecdsa_sign_floor_per_s``: the quoting enclave and its ECDSA-P256 floor
  (``tdxmodel.host.bench``, the same keys as ``--quote``); ``whole_path_quote_per_s``: quotes through
  the emulated configfs-tsm path (virtual clock, zero service time) beside that floor;
* ``busy_rate``: the fraction of the ``scaling`` workload's reports that met the module's RTMR lock
  (TDX_OPERAND_BUSY); ``ioctl_busy_rate``: the fraction of driver-path reports that failed because of
  it (-EBUSY on v6.16, -EIO on v6.2 and v4); both 0 when R is 0;
* ``quote_latency``: per completion mode (``"poll-1000"`` the stock loop, ``"poll-N"`` the proposed
  read_poll_timeout variant at N ms with its 2 s cap, ``"interrupt"``) ``quotes_per_s``, ``min_ms``,
  ``median_ms``, ``max_ms`` of quotes through configfs-tsm on the virtual clock (``tdxmodel.quote_latency``);
* ``ratios`` (the speed targets of benchmarks/RESULTS.md, from this run), ``machine``, and the options used.

``--quote-latency [--poll-ms LIST] [--service-ms MS] [--clock virtual|real] [--spin-us US] [--json]
[--plot FILE]`` runs only the quote latency table (``quote_latency``, beside the published figures,
quote.md §2.5) and the concurrency section (``quote_concurrency``: N callers in one TD asking at once,
on the same clock). On the real clock the table's sleeps spin their last ``--spin-us`` (default
``quote_latency.DEFAULT_REAL_SPIN_US``; ``spin_us`` in the JSON) so a late wake-up of this machine's
idle CPU does not count as the kernel's latency; the concurrency section sleeps plainly.

``--shared-host [--tds LIST] [--service-ms MS] [--json]`` runs N TDs on one ``SharedHost`` (its 16
in-flight slots shared; ``shared_host``: N -> quotes_per_s, median_ms, max_ms, quotes, retries,
host_retries, peak_in_flight) and the downstream driver's parallel requests in one TD
(``downstream_parallel``: callers -> quotes_per_s, median_ms, max_ms, quotes, retries), real clock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from tdxmodel import _backend, abi
from tdxmodel import bench as _wl
from tdxmodel.cli import CliError
from tdxmodel.host_faults import CLOCK_MAX_SPIN_US
from tdxmodel.quote_latency import DEFAULT_REAL_SPIN_US

DEFAULT_SECONDS = 0.5
#: Upstream's long-lived generation (ref §2.4): no driver lock, so caller scaling is meaningful.
DEFAULT_DRIVER = "v6.2"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be in 1..256, got {value}")
    return value


def _number_in(what: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False,
               unit: str = "") -> Callable[[str], float]:
    """An argparse type: a number in [lo, hi], either end open where asked (nan is never inside)."""
    def plain(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{v:g}"
    shown = f"{'(' if lo_open else '['}{plain(lo)}, {plain(hi)}{')' if hi_open else ']'}{unit}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        above = lo < value if lo_open else lo <= value
        below = value < hi if hi_open else value <= hi
        if not (above and below):
            raise argparse.ArgumentTypeError(f"must be in {shown}, got {text}")
        return value
    return parse


def _int_list(what: str, each: str, lo: int, hi: int, unit: str = "") -> Callable[[str], list]:
    """An argparse type: comma-separated integers, each in lo..hi."""
    def parse(text: str) -> list:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values or not all(lo <= v <= hi for v in values):
            raise argparse.ArgumentTypeError(f"each {each} must be in {lo}..{hi}{unit}, got {text!r}")
        return values
    return parse


_seconds = _number_in("a number of seconds", 0, 3600, lo_open=True)
_ratio = _number_in("a fraction", 0, 1, hi_open=True)
_poll_list = _int_list("milliseconds", "poll interval", 1, 60_000, " ms")
_spin_us = _number_in("microseconds", 0, CLOCK_MAX_SPIN_US, unit=" us")
#: below QEMU's 30 s transaction timer (quote.md §4.1)
_service_ms = _number_in("milliseconds", 0, 25_000, unit=" ms")
_tds_list = _int_list("numbers of TDs", "number of TDs", 1, 64)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="measure throughput and latency of the emulated attestation path",
        description="Run the throughput workloads (floors, batch API, one ioctl, 1..N concurrent callers) for "
                    "about S seconds each and print a table, or one JSON object with --json.")
    p.add_argument("--callers", type=_positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="measure 1..N concurrent caller threads (default: the number of cores)")
    p.add_argument("--seconds", type=_seconds, default=DEFAULT_SECONDS, metavar="S",
                   help=f"seconds per workload (default {DEFAULT_SECONDS})")
    p.add_argument("--extend-ratio", type=_ratio, default=0.0, metavar="R",
                   help="fraction of calls that are RTMR extends (0 <= R < 1; default 0); on v6.16 through "
                        "the measurement file under mr_lock, else through the module leaf directly")
    p.add_argument("--driver", choices=abi.DRIVERS, default=DEFAULT_DRIVER, metavar="NAME",
                   help=f"driver generation: {', '.join(abi.DRIVERS)} (default {DEFAULT_DRIVER}: upstream 6.2-6.15)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of throughput against callers (needs matplotlib)")
    p.add_argument("--quote", action="store_true",
                   help="measure the quote path instead (tdxmodel.host.bench: quote_per_s, "
                        "ecdsa_sign_floor_per_s, verify_per_s, dcap_qvl_verify_per_s, ...)")
    p.add_argument("--quote-latency", action="store_true",
                   help="measure quote latency through configfs-tsm per completion mode instead "
                        "(tdxmodel.quote_latency: quote_latency, quote_concurrency)")
    p.add_argument("--poll-ms", type=_poll_list, default=None, metavar="LIST",
                   help="with --quote-latency: poll intervals in ms, comma-separated (default 1000,5,1; "
                        "1000 is the stock loop, others the read_poll_timeout variant with a 2 s cap)")
    p.add_argument("--service-ms", type=_service_ms, default=None, metavar="MS",
                   help="with --quote-latency: the host's service time per quote (default 4.6)")
    p.add_argument("--clock", choices=("virtual", "real"), default=None,
                   help="with --quote-latency: the platform clock (default virtual: no wall time)")
    p.add_argument("--spin-us", type=_spin_us, default=None, metavar="US",
                   help="with --quote-latency --clock real: every emulated sleep spins its last US "
                        f"microseconds so it ends on time on a VM whose idle CPUs wake late (default "
                        f"{DEFAULT_REAL_SPIN_US}; 0: plain sleeps; costs one busy core while it spins)")
    p.add_argument("--shared-host", action="store_true",
                   help="measure N TDs sharing one host's 16 in-flight GetQuote slots instead (quotes/s and "
                        "RETRY counts; real clock), and the downstream driver's parallel requests")
    p.add_argument("--tds", type=_tds_list, default=None, metavar="LIST",
                   help="with --shared-host: the numbers of TDs, comma-separated (default 1,2,4,16,32); "
                        "--service-ms is the host's service time (default 4.6)")
    p.set_defaults(func=run)


def _check_plot_possible(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CliError(f"--plot: directory {directory} does not exist")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install 'tdxmodel[plot]'") from None


def write_plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    callers = [int(k) for k in result["scaling"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(callers, list(result["scaling"].values()), marker="o", label="batch API (report_batch)")
    ax.plot(callers, list(result["ioctl_scaling"].values()), marker="s", label="GET_REPORT ioctl via Python")
    ax.plot(callers, list(result["ioctl_batch_scaling"].values()), marker="^", label="driver-path ioctl_batch")
    ax.set_xlabel("caller threads")
    ax.set_ylabel("calls per second")
    ax.set_xticks(callers)
    ax.set_ylim(bottom=0)
    ax.set_title(f"tdxmodel {result['backend']}, {result['driver']}, extend ratio {result['extend_ratio']}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# ---- the whole run (the workloads are tdxmodel.bench's) ---------------------------------------

@dataclass
class BenchOptions:
    callers: int = field(default_factory=lambda: os.cpu_count() or 1)
    seconds: float = 0.5
    extend_ratio: float = 0.0
    driver: str = "v6.2"

    def validate(self) -> None:
        if isinstance(self.callers, bool) or not isinstance(self.callers, int) or not 1 <= self.callers <= 256:
            raise ValueError(f"--callers must be an integer in 1..256, got {self.callers!r}")
        if not (isinstance(self.seconds, (int, float)) and 0 < self.seconds <= 3600):
            raise ValueError(f"--seconds must be in (0, 3600], got {self.seconds!r}")
        if not (isinstance(self.extend_ratio, (int, float)) and 0 <= self.extend_ratio < 1):
            raise ValueError(f"--extend-ratio must be in [0, 1), got {self.extend_ratio!r}")
        if self.driver not in abi.DRIVERS:
            raise ValueError(f"--driver must be one of {', '.join(abi.DRIVERS)}, got {self.driver!r}")


def machine_info() -> Dict[str, object]:
    import platform
    import ssl
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION}


def measure(options: BenchOptions, progress: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Run every workload of ``tdxmodel bench``; the JSON object it prints (keys are a contract)."""
    options.validate()
    say = progress or (lambda msg: None)
    s = options.seconds
    main = _backend.default_name()  # TDXMODEL_BACKEND, else the core when built
    result: Dict[str, object] = {"backend": main, "driver": options.driver, "callers": options.callers,
                                 "seconds": s, "extend_ratio": options.extend_ratio,
                                 "machine": machine_info()}

    say("floors (HMAC-SHA-256 over 224 B, SHA-384 over 512 B)")
    result.update(_wl.measure_floors(s))

    say(f"batch API ({main}, one thread)")
    result["batch_reports_per_s"] = _wl.measure_batch(_wl.make_module(main), s)
    result["batch_rows"] = _wl.BATCH_ROWS

    say(f"one GET_REPORT ioctl ({main}, {options.driver})")
    lat = _wl.measure_call_latency(main, options.driver, s)
    result["call_median_us"], result["call_p99_us"] = lat["median_us"], lat["p99_us"]
    result["call_samples"] = lat["samples"]
    result["timer_overhead_us"] = lat["timer_overhead_us"]

    say(f"one GET_REPORT ioctl (reference, {options.driver})")
    ref = _wl.measure_call_latency("reference", options.driver, s, max_calls=20_000)
    result["reference_call_median_us"] = ref["median_us"]
    result["reference_call_p99_us"] = ref["p99_us"]

    scaling: Dict[str, float] = {}
    mixed_scaling: Dict[str, float] = {}
    ioctl_scaling: Dict[str, float] = {}
    parallelism: Dict[str, float] = {}
    ioctl_batch_scaling: Dict[str, float] = {}
    per_cpu: Dict[str, float] = {}
    busy = reports = ioctl_busy = ioctl_reports = 0
    # Each point is the best of WINDOWS windows: the machine is shared, and a throughput figure
    # should show what the code can do, not what a neighbour's compile left of the cores.
    for n in range(1, options.callers + 1):
        say(f"{n} caller(s): batch API, extend ratio {options.extend_ratio}")
        runs = [_wl.measure_batch_scaling(main, options.driver, n, s / _wl.WINDOWS, options.extend_ratio)
                for _ in range(_wl.WINDOWS)]
        best = max(runs, key=lambda r: r["calls_per_s"])
        scaling[str(n)] = best["calls_per_s"]
        mixed_scaling[str(n)] = best["reports"] / best["seconds"]
        parallelism[str(n)] = best["parallelism"]
        per_cpu[str(n)] = best["calls_per_cpu_s"]
        busy += sum(r["busy"] for r in runs)
        reports += sum(r["reports"] for r in runs)
        say(f"{n} caller(s): ioctl through the Python API, extend ratio {options.extend_ratio}")
        runs = [_wl.measure_ioctl_scaling(main, options.driver, n, s / _wl.WINDOWS, options.extend_ratio)
                for _ in range(_wl.WINDOWS)]
        ioctl_scaling[str(n)] = max(r["calls_per_s"] for r in runs)
        ioctl_busy += sum(r["busy"] for r in runs)
        ioctl_reports += sum(r["reports"] for r in runs)
        say(f"{n} caller(s): driver-path ioctl_batch, extend ratio {options.extend_ratio}")
        runs = [_wl.measure_ioctl_scaling(main, options.driver, n, s / _wl.WINDOWS, options.extend_ratio, batched=True)
                for _ in range(_wl.WINDOWS)]
        ioctl_batch_scaling[str(n)] = max(r["calls_per_s"] for r in runs)
        ioctl_busy += sum(r["busy"] for r in runs)
        ioctl_reports += sum(r["reports"] for r in runs)
    result["scaling"] = scaling
    # Reports (not extends) per second of the batch-API callers at the extend ratio given: what an
    # extend costs the reporters (each one recomputes TEE_INFO_HASH and the MAC midstate, ref §4.5).
    result["mixed_scaling"] = mixed_scaling
    result["ioctl_scaling"] = ioctl_scaling
    result["scaling_parallelism"] = parallelism
    # Calls per CPU-second relative to one caller. When the callers really ran at once (parallelism near
    # their count), 1.0 means they cost each other nothing (no lock or cache-line contention); when the
    # machine time-sliced them on fewer cores it is ~1.0 whatever the code does.
    result["scaling_cpu_efficiency"] = {k: v / per_cpu["1"] for k, v in per_cpu.items()} if per_cpu.get("1") else {}
    result["ioctl_batch_scaling"] = ioctl_batch_scaling
    result["busy_rate"] = busy / reports if reports else 0.0
    result["ioctl_busy_rate"] = ioctl_busy / ioctl_reports if ioctl_reports else 0.0

    # The speed targets (benchmarks/RESULTS.md), as ratios from this one run.
    result["ratios"] = {
        "batch_over_mac_floor": result["batch_reports_per_s"] / result["mac_floor_per_s"],
        "reference_over_core_call": (result["reference_call_median_us"] / result["call_median_us"]
                                     if result["call_median_us"] > 0 else None),
        "scaling_2_over_1": scaling["2"] / scaling["1"] if "2" in scaling and scaling["1"] else None,
        "mixed_2_over_1": (mixed_scaling["2"] / mixed_scaling["1"]
                           if "2" in mixed_scaling and mixed_scaling["1"] else None),
        "ioctl_2_over_1": (ioctl_scaling["2"] / ioctl_scaling["1"]
                           if "2" in ioctl_scaling and ioctl_scaling["1"] else None),
    }

    # The quote side, same run (tdxmodel.host.bench): the quoting enclave beside its signing floor.
    say("quote generation beside the ECDSA-P256 signing floor")
    from tdxmodel.host import bench as quote_bench
    quote = quote_bench.run(seconds=s, callers=1)
    result["quote_per_s"] = quote["quote_per_s"]
    result["ecdsa_sign_floor_per_s"] = quote["ecdsa_sign_floor_per_s"]
    result["whole_path_quote_per_s"] = quote["whole_path_quote_per_s"]
    result["whole_path_driver"] = quote["whole_path_driver"]
    result["ratios"]["quote_over_sign_floor"] = (quote["quote_per_s"] / quote["ecdsa_sign_floor_per_s"]
                                                 if quote["ecdsa_sign_floor_per_s"] else None)
    result["ratios"]["whole_path_over_sign_floor"] = (quote["whole_path_quote_per_s"] / quote["ecdsa_sign_floor_per_s"]
                                                      if quote["ecdsa_sign_floor_per_s"] else None)

    # Quote latency by completion mode on the virtual clock (tdxmodel.quote_latency; little wall time).
    say("quote latency by completion mode (virtual clock)")
    from tdxmodel import quote_latency
    result["quote_latency"] = quote_latency.run(backend=main)["quote_latency"]
    return result


def format_table(result: Dict[str, object]) -> str:
    """The human-readable report of ``measure``."""
    m = result["machine"]
    lines = [f"tdxmodel bench: backend {result['backend']}, driver {result['driver']}, "
             f"{result['callers']} caller(s), {result['seconds']} s per workload, "
             f"extend ratio {result['extend_ratio']}",
             f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; {m['openssl']}", ""]
    rows = [
        ("HMAC-SHA-256 224 B floor", f"{result['mac_floor_per_s']:,.0f} /s", result["floor_source"]),
        ("SHA-384 512 B floor", f"{result['sha384_floor_per_s']:,.0f} /s", result["floor_source"]),
        (f"batch API, 1 thread, {result['batch_rows']} rows", f"{result['batch_reports_per_s']:,.0f} reports/s",
         f"{result['ratios']['batch_over_mac_floor']:.2f} x MAC floor"),
        ("GET_REPORT ioctl median", f"{result['call_median_us']:.3f} us", f"p99 {result['call_p99_us']:.3f} us"),
        ("reference ioctl median", f"{result['reference_call_median_us']:.1f} us",
         (f"{result['ratios']['reference_over_core_call']:.0f} x the core"
          if result["ratios"]["reference_over_core_call"] else "")),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    lines += ["", "calls/s (x 1 caller) by caller threads; for the batch API, 'cores' is the CPU its callers got",
              "and 'eff' their calls per CPU-second relative to one caller",
              f"{'callers':>7}  {'batch API':>20}  {'cores':>5}  {'eff':>4}  {'ioctl via Python':>20}  "
              f"{'driver ioctl_batch':>20}"]
    series = [result["scaling"], result["ioctl_scaling"], result["ioctl_batch_scaling"]]
    for k in result["scaling"]:
        cells = [f"{d[k]:>11,.0f} ({d[k] / d['1'] if d['1'] else 0:4.2f})" for d in series]
        lines.append(f"{k:>7}  {cells[0]:>20}  {result['scaling_parallelism'][k]:>5.2f}  "
                     f"{result['scaling_cpu_efficiency'].get(k, 0.0):>4.2f}  {cells[1]:>20}  {cells[2]:>20}")
    lines += ["", f"busy rate (reports meeting TDX_OPERAND_BUSY): batch {result['busy_rate']:.4f}, "
                  f"ioctl {result['ioctl_busy_rate']:.4f}"]
    lines.append("reports/s of the batch callers at this extend ratio (mixed_scaling): "
                 + ", ".join(f"{k}: {v:,.0f}" for k, v in result["mixed_scaling"].items()))
    lines.append(f"quote_per_s {result['quote_per_s']:,.0f} beside ecdsa_sign_floor_per_s "
                 f"{result['ecdsa_sign_floor_per_s']:,.0f}; whole path ({result['whole_path_driver']} "
                 f"configfs-tsm) {result['whole_path_quote_per_s']:,.0f}")
    return "\n".join(lines)


def run_quote_latency(args) -> int:
    from tdxmodel import quote_latency as ql
    if args.plot:
        _check_plot_possible(args.plot)
    clock = args.clock or "virtual"
    if args.spin_us is not None and clock != "real":
        raise CliError("--spin-us needs --clock real (a virtual clock's sleeps take no time)")
    poll = args.poll_ms or list(ql.DEFAULT_POLL_MS)
    service = ql.DEFAULT_SERVICE_MS if args.service_ms is None else args.service_ms

    def progress(message: str) -> None:  # the real clock sleeps for real: say what runs
        if clock == "real":
            print(f"bench: {message}", file=sys.stderr, flush=True)

    result = ql.run(poll, service_ms=service, clock=clock, progress=progress, spin_us=args.spin_us)
    progress(f"concurrency: 1, 2, 4, 8 callers in one TD ({clock} clock)")
    result["quote_concurrency"] = {"mode": "poll-5", "clock": clock,
                                   "callers": ql.measure_concurrency(service_ms=service, quotes_per_caller=3,
                                                                     clock=clock)}
    result["machine"] = machine_info()
    if args.plot:
        ql.write_plot(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(ql.format_table(result))
        print(f"N callers in one TD asking at once (poll-5, {clock} clock), callers: quotes/s, ms for all N"
              + (", a caller's median ms" if clock == "real" else "") + " -> "
              + "; ".join(f"{n}: {r['quotes_per_s']:.1f}, {r['round_ms']:.2f}"
                          + (f", {r['median_ms']:.2f}" if "median_ms" in r else "")
                          for n, r in result["quote_concurrency"]["callers"].items()))
    return 0


def run_shared_host(args) -> int:
    from tdxmodel import quote_latency as ql
    service = ql.DEFAULT_SERVICE_MS if args.service_ms is None else args.service_ms
    tds = args.tds or list(ql.DEFAULT_TDS)
    print(f"bench: {', '.join(map(str, tds))} TDs on one shared host (real clock, service {service} ms)",
          file=sys.stderr, flush=True)
    rounds = 3
    result = {"shared_host": ql.measure_shared_host(tds, service_ms=service, rounds=rounds),
              "mode": "interrupt", "clock": "real", "service_ms": service, "rounds": rounds,
              "driver": ql.DEFAULT_DRIVER, "backend": _backend.default_name()}
    print("bench: the downstream driver's parallel requests (1, 4, 16, 24 threads of one TD)",
          file=sys.stderr, flush=True)
    result["downstream_parallel"] = ql.measure_downstream_parallel(service_ms=service, rounds=rounds)
    result["machine"] = machine_info()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(ql.format_shared_host(result))
    return 0


def run(args) -> int:
    if args.shared_host:
        given = [f for f, v in (("--quote", args.quote), ("--quote-latency", args.quote_latency),
                                ("--poll-ms", args.poll_ms), ("--clock", args.clock), ("--plot", args.plot),
                                ("--spin-us", args.spin_us is not None))
                 if v]
        if given:
            raise CliError(f"--shared-host is its own run: {given[0]} does not apply")
        return run_shared_host(args)
    if args.tds is not None:
        raise CliError("--tds needs --shared-host")
    latency_only = [f for f, v in (("--poll-ms", args.poll_ms), ("--service-ms", args.service_ms),
                                   ("--clock", args.clock), ("--spin-us", args.spin_us)) if v is not None]
    if latency_only and not args.quote_latency:
        raise CliError(f"{latency_only[0]} needs --quote-latency")
    if args.quote_latency:
        if args.quote:
            raise CliError("--quote and --quote-latency are separate runs: give one")
        return run_quote_latency(args)
    if getattr(args, "quote", False):
        from tdxmodel.host import bench as quote_bench
        result = quote_bench.run(seconds=args.seconds, callers=args.callers,
                                 progress=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True)
                                 if args.seconds * (6 + args.callers) >= 2 else None)
        print(json.dumps(result, indent=2) if args.json else quote_bench.format_table(result))
        return 0
    if args.plot:
        _check_plot_possible(args.plot)  # fail before the measurements, not after
    options = BenchOptions(callers=args.callers, seconds=args.seconds,
                                 extend_ratio=args.extend_ratio, driver=args.driver)
    estimate = options.seconds * (10 + 3 * options.callers)

    def progress(message: str) -> None:
        if estimate >= 2:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    result = measure(options, progress)
    if args.plot:
        write_plot(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0
