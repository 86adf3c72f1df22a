"""``tdxmodel campaign --driver NAME [--json] [--backend core|reference]`` (layer 4).

Runs the exhaustive fault campaign (``tdxmodel.campaign``) over one driver generation's ioctl path (and
its quote path, where it has one) and prints a table of outcome classes with counts per path, or with
``--json`` one object
``{"driver": NAME, "backend": ..., "cases": [...], "summary": {...}}``. Progress goes to stderr on long
runs. Exit 0 when it ran; 2 with a one-line message for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from tdxmodel import _backend, abi


def register(subparsers) -> None:
    p = subparsers.add_parser("campaign", help="run the exhaustive fault campaign over a driver's ioctl "
                                               "and quote paths",
                              description="Run the ioctl path of one driver generation through every "
                                          "injectable point failed, user-buffer faults at each position "
                                          "class, each TDCALL outcome and an unknown command, and its "
                                          "quote path through each injection point, host fault, signal "
                                          "and configfs misuse; print the outcome classes with counts.")
    p.add_argument("--driver", required=True, metavar="NAME", help=f"one of {', '.join(abi.DRIVERS)}")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--backend", default=None, metavar="core|reference",
                   help="backend to run on (default: the default backend)")
    p.set_defaults(func=run)


def _table(result) -> str:
    from tdxmodel.campaign import is_measurement_case, is_quote_case, is_report_case
    out = [_report_table(result, [r for r in result["cases"] if is_report_case(r)])]
    measurement = [r for r in result["cases"] if is_measurement_case(r)]
    if measurement:
        out.append(_measurement_table(result["summary"]["measurement"], measurement))
    for key, path in (("quote", "configfs"), ("quote_ioctl", "ioctl")):
        recs = [r for r in result["cases"] if is_quote_case(r) and r["path"] == path]
        if recs:
            out.append(_quote_table(result["summary"][key], recs))
    return "\n".join(out)


def _measurement_table(s, records) -> str:
    by_outcome = {}
    for r in records:
        row = by_outcome.setdefault(r["outcome"], {"cases": 0, "leaked": 0, "locks": 0})
        row["cases"] += 1
        row["leaked"] += bool(r["leaked"])
        row["locks"] += bool(r["locks_held"])
    lines = [f"measurement files: {s['cases']} cases",
             f"{'outcome':<10} {'cases':>6} {'leaking':>8} {'locks held':>11}"]
    for outcome, row in sorted(by_outcome.items()):
        lines.append(f"{outcome:<10} {row['cases']:>6} {row['leaked']:>8} {row['locks']:>11}")
    lines.append(f"{'total':<10} {s['cases']:>6} {s['leaking_cases']:>8} {s['lock_imbalanced_cases']:>11}")
    return "\n".join(lines)


def _quote_table(s, records) -> str:
    by_outcome = {}
    for r in records:
        row = by_outcome.setdefault(r["outcome"], {"cases": 0, "leaked": 0, "empty": 0, "foreign": 0})
        row["cases"] += 1
        row["leaked"] += bool(r["leaked"])
        row["empty"] += r["ret"] == 0 and r["outblob_len"] == 0
        row["foreign"] += r.get("foreign_bytes", 0)
    lines = [f"quote path ({records[0]['path']}): {s['cases']} cases",
             f"{'outcome':<10} {'cases':>6} {'leaking':>8} {'empty outblob':>14} {'foreign bytes':>14}"]
    for outcome, row in sorted(by_outcome.items()):
        lines.append(f"{outcome:<10} {row['cases']:>6} {row['leaked']:>8} {row['empty']:>14} {row['foreign']:>14}")
    empty = sum(1 for r in records if r["ret"] == 0 and r["outblob_len"] == 0)
    leaking = sum(1 for r in records if r["leaked"])
    lines.append(f"{'total':<10} {s['cases']:>6} {leaking:>8} {empty:>14} "
                 f"{sum(r.get('foreign_bytes', 0) for r in records):>14}")
    return "\n".join(lines)


def _report_table(result, records) -> str:
    by_outcome = {}
    for r in records:
        row = by_outcome.setdefault(r["outcome"], {"cases": 0, "leaked": 0, "changed": 0, "foreign": 0})
        row["cases"] += 1
        row["leaked"] += bool(r["leaked"])
        row["changed"] += bool(r["user_changed"])
        row["foreign"] += r["foreign_bytes"]
    s = result["summary"]
    lines = [f"campaign: driver {result['driver']}, backend {result['backend']}, {s['cases']} cases",
             f"report ioctl: {s['report_cases']} cases",
             f"{'outcome':<10} {'cases':>6} {'leaking':>8} {'user changed':>13} {'foreign bytes':>14}"]
    for outcome, row in sorted(by_outcome.items()):
        lines.append(f"{outcome:<10} {row['cases']:>6} {row['leaked']:>8} {row['changed']:>13} "
                     f"{row['foreign']:>14}")
    lines.append(f"{'total':<10} {s['report_cases']:>6} {s['leaking_cases']:>8} {s['user_changed_cases']:>13} "
                 f"{s['foreign_bytes']:>14}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tdxmodel import campaign
    from tdxmodel.cli import CliError
    if args.driver not in abi.DRIVERS:
        raise CliError(f"unknown driver {args.driver!r}; choose one of {', '.join(abi.DRIVERS)}")
    if args.backend is not None and args.backend not in _backend.BACKENDS:
        raise CliError(f"unknown backend {args.backend!r}; choose one of {', '.join(_backend.BACKENDS)}")
    try:
        backend = _backend.load(args.backend)
    except ImportError as e:
        raise CliError(f"backend {args.backend or _backend.default_name()} is not available: "
                       f"{str(e).splitlines()[0]}") from None
    if not hasattr(backend, "Kernel"):
        raise CliError(f"backend {backend.BACKEND_NAME} has no kernel model yet")
    result = campaign.run(args.driver, args.backend, progress=campaign.stderr_progress())
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(_table(result))
    return 0
