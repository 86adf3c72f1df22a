"""``tdxmodel bench``: throughput of the emulated attestation path under concurrent callers (issue 5).

Flags and JSON keys are a contract: ``--callers N --seconds S --extend-ratio R --driver NAME --json
--plot FILE``. The workloads live in ``tdxmodel.bench``. JSON keys (one object):

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
* ``busy_rate``: the fraction of the ``scaling`` workload's reports that met the module's RTMR lock
  (TDX_OPERAND_BUSY); ``ioctl_busy_rate``: the fraction of driver-path reports that failed because of
  it (-EBUSY on v6.16, -EIO on v6.2 and v4); both 0 when R is 0;
* ``ratios`` (the issue's targets from this run), ``machine``, and the options used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tdxmodel import abi
from tdxmodel.cli import CliError

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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be in (0, 3600], got {text}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
    if not 0 <= value < 1:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="measure throughput and latency of the emulated attestation path",
        description="Run the issue-5 workloads (floors, batch API, one ioctl, 1..N concurrent callers) for "
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


def run(args) -> int:
    if getattr(args, "quote", False):
        from tdxmodel.host import bench as quote_bench
        result = quote_bench.run(seconds=args.seconds, callers=args.callers,
                                 progress=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True)
                                 if args.seconds * (6 + args.callers) >= 2 else None)
        print(json.dumps(result, indent=2) if args.json else quote_bench.format_table(result))
        return 0
    from tdxmodel import bench

    if args.plot:
        _check_plot_possible(args.plot)  # fail before the measurements, not after
    options = bench.BenchOptions(callers=args.callers, seconds=args.seconds,
                                 extend_ratio=args.extend_ratio, driver=args.driver)
    estimate = options.seconds * (4 + 3 * options.callers)

    def progress(message: str) -> None:
        if estimate >= 2:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    result = bench.run(options, progress)
    if args.plot:
        write_plot(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(bench.format_table(result))
    return 0
