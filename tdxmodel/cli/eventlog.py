"""``tdxmodel eventlog [--json] [--state DIR]``: the TD's boot event log and its replay beside the live
RTMRs (layer 4; README "Boot event log").

The replay is the boot log (``boot-eventlog.json``, what the CCEL table serves) followed by the
extend log (``events.jsonl``, every extend made since). Exit 0 when it reproduces the state's RTMRs,
1 when it does not (each differing RTMR is named), 2 for an unusable state directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

from tdxmodel import abi, eventlog
from tdxmodel.cli import CliError


def register(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser("eventlog", help="print the boot event log and its replay next to the live RTMRs",
                              description="Print the TD's boot event log (the CCEL log) and the extend "
                                          "log, replay both, and compare with the state's RTMRs. Exit 0 "
                                          "when they match, 1 when they do not.")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--state", metavar="DIR",
                   help="state directory (default: $TDXMODEL_STATE, else $XDG_STATE_HOME/tdxmodel)")
    p.add_argument("--config", metavar="TOML",
                   help="configuration a new state directory is made from (default: $TDXMODEL_CONFIG)")
    p.set_defaults(func=cmd_eventlog)


def report(store: Any) -> Dict[str, Any]:
    """The JSON object of ``tdxmodel eventlog --json`` for a StateStore."""
    from tdxmodel.state import replay_events
    live = list(store.load().rtmr)
    boot = store.boot_events()
    boot_replay = eventlog.replay(boot)
    extends = store.events()
    replayed = replay_events(extends, initial=boot_replay)
    return {"boot_events": [ev.to_json() for ev in boot], "extends": extends,
            "boot_replay": [r.hex() for r in boot_replay], "replay": [r.hex() for r in replayed],
            "live": [r.hex() for r in live], "match": replayed == live}


def cmd_eventlog(args: argparse.Namespace) -> int:
    from tdxmodel.state import StateStore
    doc = report(StateStore(args.state, config_path=args.config))
    try:
        _print(doc, args.json)
    except BrokenPipeError:  # `tdxmodel eventlog | head`: the reader left
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if not doc["match"]:
        bad = [f"rtmr{i}" for i in range(abi.TDX_NUM_RTMRS) if doc["replay"][i] != doc["live"][i]]
        print(f"tdxmodel: the event log does not replay to the live {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def _print(doc: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"boot event log ({len(doc['boot_events'])} events, served as the CCEL log):")
        for n, ev in enumerate(doc["boot_events"]):
            where = f"rtmr{ev['rtmr']}" if ev["rtmr"] is not None else "-"
            print(f"  {n:3}  mr {ev['mr_index']} ({where})  {ev['type']:<34} {ev['digest'][:32]}...")
        print(f"extend log: {len(doc['extends'])} extends")
        for i in range(abi.TDX_NUM_RTMRS):
            ok = doc["replay"][i] == doc["live"][i]
            print(f"rtmr{i}  replay {doc['replay'][i]}")
            print(f"       live   {doc['live'][i]}  {'(matches)' if ok else '(MISMATCH)'}")
    sys.stdout.flush()
