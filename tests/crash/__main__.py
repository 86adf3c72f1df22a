"""``python -m tests.crash --kills N [--seed S]``: the long form of the crash-consistency harness
(tests/crash/harness.py). About half the kills go to `tdxmodel extend` and the looping writer, the
rest to measurement-file writers, `tdxmodel extend` and the daemon of a served 6.16 TD. Prints the
first broken promise and exits 1, else a summary."""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import pathlib

from tests.crash import harness


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.crash", description=__doc__)
    ap.add_argument("--kills", type=int, default=1000, help="SIGKILLs in all (default 1000)")
    ap.add_argument("--seed", type=int, help="default: random, printed")
    ap.add_argument("--only", choices=("extend", "writers", "mixed", "daemon"),
                    help="one scenario only (default: all, the kills shared out)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    rng = random.Random(seed)
    print(f"crash: seed {seed}, {args.kills} kills", file=sys.stderr)
    t0 = time.monotonic()

    def progress(name):
        def report(done, total):
            print(f"\rcrash: {name} {done}/{total}  {time.monotonic() - t0:.0f} s", end="", file=sys.stderr, flush=True)
        return report

    plan = {"extend": args.kills // 2, "writers": args.kills // 8, "mixed": args.kills // 8, "daemon": args.kills // 8}
    if args.only:
        plan = {args.only: args.kills}
    results = {}
    try:
        for name, n in plan.items():
            if n <= 0:
                continue
            if name == "extend":
                with tempfile.TemporaryDirectory() as d:
                    results[name] = harness.kill_extenders(pathlib.Path(d) / "state", n, rng, progress(name))
            else:
                # a round kills two or three processes
                rounds = max(1, n // (2 if name == "writers" else 3))
                results[name] = harness.kill_under_daemon(rounds, rng, kill_daemon=name == "daemon",
                                                          cli_extends=name in ("mixed",), progress=progress(name))
            print(file=sys.stderr)
    except harness.Inconsistent as e:
        print(file=sys.stderr)
        print(f"crash: seed {seed}: {name}: {e}")
        return 1
    total = sum(r["kills"] for r in results.values())
    out = {"seed": seed, "kills": total, "seconds": round(time.monotonic() - t0, 1), "scenarios": results}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"crash: seed {seed}: {total} kills survived, every check held ({out['seconds']} s): {json.dumps(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
