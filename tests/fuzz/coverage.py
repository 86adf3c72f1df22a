"""Fault-injection coverage: for every driver generation (``tdxmodel.profiles.PROFILES``), which of
its injection points the fault campaign (``tdxmodel.campaign``, every case of the generation) and the
differential fuzzer (``tests/fuzz/engine.py``: per generation a seeded stream of that generation's
episodes) passed, and which neither did.

A point counts as reached when it is in a ``Process.last_trace()`` of a syscall or in a
``Kernel.init_trace()`` (module init), failed or not. The point lists come from the profiles, so a
point added to a profile shows up here (as never reached until something passes it).

``python -m tests.fuzz --coverage [--ops N] [--seed S]`` prints the table and exits 1 when some point
is reached by neither; ``report(seed, n_ops)`` is the data.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Set

from tdxmodel import campaign, profiles
from tests.fuzz import engine


def campaign_reached(driver: str, backend_name: Optional[str] = None) -> Set[str]:
    """The points the campaign's cases of ``driver`` passed (syscalls and module init)."""
    out: Set[str] = set()
    for rec in campaign.run(driver, backend_name)["cases"]:
        out.update(pt for pt, _, _ in rec["trace"])
        out.update(pt for pt, _, _ in rec.get("init_trace", ()))
    return out


def report(seed: int, n_ops: int, backend_name: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """{generation: {"points", "campaign", "fuzzer", "campaign_missed", "never", "unlisted"}}, each a
    list in the profile's point order; the fuzzer runs ``n_ops`` of stream ``seed`` per generation."""
    out: Dict[str, Dict[str, Any]] = {}
    for prof in profiles.PROFILES:
        by_campaign = campaign_reached(prof.name, backend_name)
        fuzzed = engine.reached(seed, n_ops, backend_name, driver=prof.name)
        by_fuzzer = fuzzed.get(prof.name, set())
        stray = set().union(*(v for d, v in fuzzed.items() if d != prof.name))
        assert not stray, f"episodes of other generations in {prof.name}'s stream"
        pts = list(prof.points)
        out[prof.name] = {
            "points": pts,
            "campaign": [p for p in pts if p in by_campaign],
            "fuzzer": [p for p in pts if p in by_fuzzer],
            "campaign_missed": [p for p in pts if p not in by_campaign],
            "never": [p for p in pts if p not in by_campaign and p not in by_fuzzer],
            # a trace naming a point the profile does not list would be a profile that lies
            "unlisted": sorted((by_campaign | by_fuzzer) - set(pts)),
        }
    return out


def format_report(rep: Dict[str, Dict[str, Any]], seed: int, n_ops: int) -> str:
    lines = [f"fault-injection coverage: the campaign (every case) and the fuzzer (seed {seed}, {n_ops} ops "
             "per generation)",
             f"{'generation':<17} {'points':>6} {'campaign':>8} {'fuzzer':>6} {'neither':>7}"]
    for name, r in rep.items():
        lines.append(f"{name:<17} {len(r['points']):>6} {len(r['campaign']):>8} {len(r['fuzzer']):>6} "
                     f"{len(r['never']):>7}")
    for name, r in rep.items():
        if r["campaign_missed"]:
            lines.append(f"  {name}: not in the campaign: {', '.join(r['campaign_missed'])}")
        if r["never"]:
            lines.append(f"  {name}: NEVER REACHED: {', '.join(r['never'])}")
        if r["unlisted"]:
            lines.append(f"  {name}: traced but not in the profile: {', '.join(r['unlisted'])}")
    never = sum(len(r["never"]) + len(r["unlisted"]) for r in rep.values())
    lines.append("every point reached" if not never else f"{never} point(s) never reached or not in the profile")
    return "\n".join(lines)


def problems(rep: Dict[str, Dict[str, Any]]) -> List[str]:
    return [f"{name}: {p} never reached" for name, r in rep.items() for p in r["never"]] + \
        [f"{name}: {p} traced but not in the profile" for name, r in rep.items() for p in r["unlisted"]]
