"""Long-form soak: ``python benchmarks/soak.py --seconds 3600 [--seed S] [--json FILE]``.

Runs tests/soak/soak.py's load (reports over FUSE and LD_PRELOAD, measurement-file extends,
`tdxmodel extend`, killed clients, malformed socket messages, random fault knobs) against one
`tdxmodel serve` for the given time, then checks descriptors, RSS growth, counters, locks, the state
directory against the live TD, the preload client's stat of the node and SIGTERM's stop time.
Exit 1 with the broken promise, else the figures as JSON."""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests.soak import soak  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--rss-budget-mib", type=int, default=64)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    def stop(signum, frame):  # SIGTERM/SIGHUP: unwind, so soak.run's cleanup kills the clients and the daemon
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    print(f"soak: seed {seed}, {args.seconds:.0f} s", file=sys.stderr)

    def progress(done, total):
        print(f"\rsoak: {done:.0f}/{total:.0f} s", end="", file=sys.stderr, flush=True)

    try:
        result = soak.run(args.seconds, seed=seed, rss_budget=args.rss_budget_mib << 20, check_preload_stat=True,
                          check_sigterm=True, check_malformed_logged=True, progress=progress)
    except soak.SoakFailure as e:
        print(f"\nsoak: seed {seed}: {e}")
        return 1
    result["seed"] = seed
    print(file=sys.stderr)
    print(json.dumps(result))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
