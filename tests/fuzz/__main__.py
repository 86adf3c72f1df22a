"""``python -m tests.fuzz --ops N --seed S``: a long differential campaign (tests/fuzz/engine.py)
with a progress line on stderr; on a difference it prints the minimal reproducer (the shortest
prefix of the episode's stream that still differs, greedily shrunk) and exits 1.

``python -m tests.fuzz --coverage [--ops N] [--seed S]``: the fault-injection coverage report
(tests/fuzz/coverage.py): per driver generation, the injection points the campaign and the fuzzer
reached, and any neither did (exit 1 then)."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from tests.fuzz import engine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    ap.add_argument("--ops", type=int, default=100_000, help="operations to run (default 100000)")
    ap.add_argument("--seed", type=int, help="stream seed (default: a random one, printed)")
    ap.add_argument("--backends", help="comma-separated (default: every backend, or $TDXMODEL_TEST_BACKENDS)")
    ap.add_argument("--keep-going", action="store_true",
                    help="after a difference, go on with the next episode and report every difference")
    ap.add_argument("--without", default="", metavar="F1,F2",
                    help="leave these parts of the stream out: " + "; ".join(f"{k}: {v}" for k, v in engine.FEATURES.items()))
    ap.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    ap.add_argument("--coverage", action="store_true",
                    help="print which injection points of every generation the campaign and the fuzzer "
                         "(--ops of stream --seed, on the first backend) reach, instead of comparing backends")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    if args.coverage:
        from tests.fuzz import coverage
        rep = coverage.report(seed, args.ops, (args.backends or engine.backends()[0]).split(",")[0])
        print(coverage.format_report(rep, seed, args.ops))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"seed": seed, "ops": args.ops, "generations": rep}, f, indent=1)
        return 1 if coverage.problems(rep) else 0
    names = args.backends.split(",") if args.backends else None
    print(f"fuzz: seed {seed}, {args.ops} ops, backends {','.join(names or engine.backends())}", file=sys.stderr)
    t0 = time.monotonic()
    last = [0.0]

    def progress(done, total, episodes, ndiff):
        now = time.monotonic()
        if now - last[0] >= 1.0 or done >= total:
            last[0] = now
            rate = done / max(now - t0, 1e-9)
            print(f"\rfuzz: {done}/{total} ops  {episodes} episodes  {ndiff} differences  {rate:,.0f} ops/s",
                  end="", file=sys.stderr, flush=True)

    result = engine.campaign(seed, args.ops, names, keep_going=args.keep_going, progress=progress,
                             without=[w for w in args.without.split(",") if w])
    print(file=sys.stderr)
    result["seconds"] = round(time.monotonic() - t0, 1)
    for d in result["differences"]:
        print(f"# seed {seed}: difference at op {d['op_index']} (feature {d['feature']}); minimal reproducer "
              f"({len(d['reproducer'])} ops, run with tests.fuzz.engine.describe(ops)):")
        print(d["text"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in result.items() if k != "differences"}
                      | {"differences": [{"op_index": d["op_index"], "op": repr(d["op"]), "feature": d["feature"], "text": d["text"]}
                                         for d in result["differences"]]}, f, indent=1)
    print(f"fuzz: seed {seed}: {result['ops']} ops in {result['episodes']} episodes, "
          f"{len(result['differences'])} differences, {result['seconds']} s")
    return 1 if result["differences"] else 0


if __name__ == "__main__":
    sys.exit(main())
