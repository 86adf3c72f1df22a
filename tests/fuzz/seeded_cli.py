"""The command line the seeded fuzzers share: ``--cases N --seed S``, a random seed printed when none
is given, each problem printed, exit 1 if any."""

from __future__ import annotations

import argparse
import random
from typing import Callable, List, Optional


def main(argv: Optional[List[str]], *, prog: str, doc: Optional[str], default_cases: int,
         campaign: Callable[[int, int], list], what: str, unit: str = "cases") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=default_cases)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    bad = campaign(seed, args.cases)
    for b in bad:
        print(b)
    print(f"{what}: seed {seed}: {args.cases} {unit}, "
          f"{len(bad)} with problems")
    return 1 if bad else 0
