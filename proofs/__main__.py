"""``python -m proofs [--driver NAME] [--theorem T] [--host qemu|any] [--json]`` runs every theorem x
driver (the ioctl theorems; the quote theorems for each generation with a quote path, configfs-tsm or
ioctl, under each host assumption) and prints a table; ``python -m proofs --replay THEOREM --driver NAME [--host H]`` replays
that counterexample on the emulator.

Exit status: 0 when every result equals its expectation (proofs/expected.py, proofs/quote_theorems.py)
- or the replay shows the same outcome -, 1 otherwise (``unknown`` and solver timeouts included), 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from proofs.drivers import DRIVERS
from proofs.engine import COUNTEREXAMPLE, TIMEOUT_MS, UNKNOWN
from proofs.quote_path import HOSTS
from proofs.quote_theorems import QUOTE_THEOREMS
from proofs.theorems import THEOREMS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one line, exit 2
        self.exit(2, f"{self.prog}: {message}\n")


def _format_value(key: str, value: object) -> str:
    if key.startswith("user_kind_at_") and isinstance(value, int):
        from proofs.symbolic import Kind
        return f"{key}={Kind(value).name}"
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{key}={value}"
    if value < 0 or key in ("i", "j", "ret") or key.endswith("ret") or key.startswith(("user_", "limit[")):
        return f"{key}={value}"
    return f"{key}=0x{value:x}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = _Parser(prog="python -m proofs", description="z3 proofs of the tdx_guest error-path invariants.")
    parser.add_argument("--driver", choices=list(DRIVERS), help="only this driver generation")
    parser.add_argument("--theorem", choices=list(THEOREMS) + list(QUOTE_THEOREMS), help="only this theorem")
    parser.add_argument("--host", choices=list(HOSTS),
                        help="quote theorems: only this host assumption (qemu: QEMU-conformant; any)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--replay", metavar="THEOREM", choices=list(THEOREMS) + list(QUOTE_THEOREMS),
                        help="replay THEOREM's counterexample for --driver on the emulator")
    parser.add_argument("--backend", action="append", choices=["core", "reference"],
                        help="replay on this backend (repeatable; default: every backend with a Kernel)")
    parser.add_argument("--timeout-ms", type=int, default=TIMEOUT_MS, help="solver timeout per check")
    args = parser.parse_args(argv)
    if args.timeout_ms <= 0:
        parser.error("--timeout-ms must be positive")

    from proofs.quote_runner import QUOTE_DRIVERS
    quote_asked = (args.theorem in QUOTE_THEOREMS) or (args.replay in QUOTE_THEOREMS)
    if quote_asked and args.driver and args.driver not in QUOTE_DRIVERS:
        parser.error(f"{args.driver} has no quote path; quote theorems run on {', '.join(QUOTE_DRIVERS)}")
    if args.replay in QUOTE_THEOREMS:
        if not args.driver:
            parser.error("--replay needs --driver")
        from proofs.quote_replay import replay as quote_replay
        ok, lines = quote_replay(args.replay, args.driver, args.host, args.backend or ())
        print("\n".join(lines))
        return 0 if ok else 1
    if args.replay:
        if not args.driver:
            parser.error("--replay needs --driver")
        from proofs.replay import replay
        ok, lines = replay(args.replay, args.driver, args.backend or ())
        print("\n".join(lines))
        return 0 if ok else 1

    from proofs.quote_runner import run_quote_all
    from proofs.replay import prune
    from proofs.runner import run_all
    drivers = [args.driver] if args.driver else list(DRIVERS)
    theorems = [args.theorem] if args.theorem else list(THEOREMS) + list(QUOTE_THEOREMS)
    results = run_all(drivers, [t for t in theorems if t in THEOREMS], args.timeout_ms)
    for r in results:
        r.counterexample = prune(DRIVERS[r.driver], r.counterexample)
    quote = run_quote_all(drivers, [t for t in theorems if t in QUOTE_THEOREMS],
                          [args.host] if args.host else HOSTS, args.timeout_ms)
    if args.json:
        print(json.dumps([r.to_json() for r in results] + [r.to_json() for r in quote], indent=1))
    else:
        dw = max([len("driver")] + [len(r.driver) for r in results])
        print(f"{'theorem':16} {'driver':{dw}} {'result':15} {'expected':15} {'time':>7}  reference")
        for r in results:
            mark = "" if r.ok else "   <-- UNEXPECTED"
            print(f"{r.theorem:16} {r.driver:{dw}} {r.result:15} {r.expected:15} {r.seconds:6.2f}s  {r.ref}{mark}")
            if r.result == COUNTEREXAMPLE and r.counterexample:
                print("    " + " ".join(_format_value(k, v) for k, v in r.counterexample.items()))
                if r.citation:
                    print(f"    known defect: {r.citation}")
            if r.result == UNKNOWN:
                print(f"    solver unknown: {r.reason}")
        for r in quote:
            mark = "" if r.ok else "   <-- UNEXPECTED"
            name = f"{r.theorem} ({r.host} host{', ioctl' if r.path == 'ioctl' else ''})"
            print(f"{name:40} {r.driver:{dw}} {r.result:15} {r.expected:15} {r.seconds:6.2f}s  {r.ref}{mark}")
            for part, cex in r.counterexamples.items():
                shown = {k: v for k, v in cex.items() if not _irrelevant(k, v)}
                print(f"    {part}: " + " ".join(_format_quote_value(k, v) for k, v in shown.items()))
                if part in r.citations:
                    print(f"    known defect: {r.citations[part]}")
            if r.result == UNKNOWN:
                print(f"    solver unknown: {r.reason}")
        everything = list(results) + list(quote)
        bad = [r for r in everything if not r.ok]
        print(f"{len(everything) - len(bad)}/{len(everything)} results as expected")
        return 0 if not bad else 1
    return 0 if all(r.ok for r in list(results) + list(quote)) else 1


def _format_quote_value(key: str, value: object) -> str:
    from proofs.quote_path import FAULT_NAMES
    if key == "host_fault" and isinstance(value, int) and value < len(FAULT_NAMES):
        return f"host_fault={FAULT_NAMES[value]}"
    if key == "service_us" and isinstance(value, int):
        return f"service={value / 1e6:g}s"
    if key == "clock_ns" and isinstance(value, int):
        return f"clock={value / 1e9:g}s"
    if isinstance(value, int) and not isinstance(value, bool) and key not in ("tdcall_status", "status_after"):
        return f"{key}={value}"
    return _format_value(key, value)


def _irrelevant(key: str, value: object) -> bool:
    """Quote counterexample values that say "nothing injected here"."""
    return value is False or (key in ("signal_sleep", "tdcall_status", "out_len_param") and value == 0) \
        or key.startswith("init.")


if __name__ == "__main__":
    sys.exit(main())
