"""``python -m proofs [--driver NAME] [--json]`` runs every theorem x driver and prints a table;
``python -m proofs --replay THEOREM --driver NAME`` replays that counterexample on the emulator.

Exit status: 0 when every result equals its expectation (proofs/expected.py) - or the replay shows
the same outcome -, 1 otherwise (``unknown`` and solver timeouts included), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from proofs.drivers import DRIVERS
from proofs.engine import COUNTEREXAMPLE, TIMEOUT_MS, UNKNOWN
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
    parser.add_argument("--theorem", choices=list(THEOREMS), help="only this theorem")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--replay", metavar="THEOREM", choices=list(THEOREMS),
                        help="replay THEOREM's counterexample for --driver on the emulator")
    parser.add_argument("--backend", action="append", choices=["core", "reference"],
                        help="replay on this backend (repeatable; default: every backend with a Kernel)")
    parser.add_argument("--timeout-ms", type=int, default=TIMEOUT_MS, help="solver timeout per check")
    args = parser.parse_args(argv)
    if args.timeout_ms <= 0:
        parser.error("--timeout-ms must be positive")

    if args.replay:
        if not args.driver:
            parser.error("--replay needs --driver")
        from proofs.replay import replay
        ok, lines = replay(args.replay, args.driver, args.backend or ())
        print("\n".join(lines))
        return 0 if ok else 1

    from proofs.replay import prune
    from proofs.runner import run_all
    drivers = [args.driver] if args.driver else list(DRIVERS)
    theorems = [args.theorem] if args.theorem else list(THEOREMS)
    results = run_all(drivers, theorems, args.timeout_ms)
    for r in results:
        r.counterexample = prune(DRIVERS[r.driver], r.counterexample)
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=1))
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
        bad = [r for r in results if not r.ok]
        print(f"{len(results) - len(bad)}/{len(results)} results as expected")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
