"""``tdxmodel quote | quote show | quote verify | collateral export | tcb | pccs`` (layer 4).

Spellings, JSON keys and exit codes are a contract (README "Quotes and verification"):

* ``quote [--reportdata HEX] [--out FILE] [--json] [--state DIR]``: a TDREPORT of the state's TD, then
  the emulated TDQE; exit 0, or 1 with the TDQE's error, 2 on bad input;
* ``quote show FILE [--json]``: decode any DCAP TD quote v4/v5 (``signature_data_len``, not the file
  size); exit 0, or 2 if FILE is not a quote;
* ``quote verify FILE [--collateral PATH | --pccs URL] [--root PEM] [--at TIME] [--json] [--state DIR]``:
  exit 0 with the TCB status on stdout when the chain holds (even OutOfDate), 1 with one line
  ``tdxmodel: FILE: STEP: reason`` otherwise, 2 on bad input. ``--json`` prints ``status``,
  ``advisory_ids``, ``failed_step`` (null on success), ``reason`` (and ``steps_passed``) on both exits;
* ``collateral export DIR [--format files|dcap-qvl] [--state DIR]``; ``collateral issue [--issue-date TIME]
  [--next-update TIME] [--unpin] [--state DIR]``;
* ``tcb [--level N | --status STATUS] [--revoke-pck | --unrevoke-pck] [--quote-version 4|5] [--state DIR]``;
* ``pccs [--listen HOST:PORT] [--state DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any

from tdxmodel import quote as quote_mod
from tdxmodel import quote_abi as qa
from tdxmodel.cli import CliError

#: A quote file is read up to this many bytes: the largest quote buffer is 128 KiB (quote.md §0).
MAX_QUOTE_FILE = 1 << 20


def register(subparsers: "argparse._SubParsersAction") -> None:
    from tdxmodel.cli.td import _state_args

    p = subparsers.add_parser("quote", help="make, decode or verify a DCAP TD quote",
                              description="Without a subcommand: make a quote for the TD in the state "
                                          "directory (TDREPORT, then the emulated TDQE).")
    p.add_argument("--reportdata", metavar="HEX", default="", help="REPORTDATA: up to 64 bytes of hex")
    p.add_argument("--out", metavar="FILE", help="write the quote bytes to FILE (as report --out: - for stdout, a device or FIFO in place)")
    p.add_argument("--json", action="store_true", help="print the decoded fields and the raw hex as JSON")
    _state_args(p)
    p.set_defaults(func=cmd_quote)
    sub = p.add_subparsers(dest="quote_command", metavar="{show,verify}", parser_class=type(p))

    s = sub.add_parser("show", help="decode a DCAP TD quote v4 or v5")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--json", dest="show_json", action="store_true", help="print JSON (with raw hex)")
    s.set_defaults(func=cmd_show)

    v = sub.add_parser("verify", help="verify a quote against collateral and a root (quote.md §5.5)")
    v.add_argument("file", metavar="FILE")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--collateral", metavar="PATH",
                     help="an exported collateral directory or a dcap-qvl collateral JSON file "
                          "(default: the emulated platform's)")
    src.add_argument("--pccs", metavar="URL", help="fetch the collateral from a PCCS/PCS v4 service")
    v.add_argument("--root", metavar="PEM", help="trusted root CA, PEM or DER (default: the emulated platform's)")
    v.add_argument("--at", metavar="TIME", help="ISO 8601 or seconds since the epoch (default: now)")
    v.add_argument("--json", dest="verify_json", action="store_true", help="print the result as JSON")
    _state_args(v)
    v.set_defaults(func=cmd_verify)

    c = subparsers.add_parser("collateral", help="export the emulated platform's collateral")
    csub = c.add_subparsers(dest="collateral_command", metavar="{export}", parser_class=type(p))
    csub.required = True
    e = csub.add_parser("export", help="write the root CA, CRLs, chains, TCB Info and QE identity")
    e.add_argument("dir", metavar="DIR")
    e.add_argument("--format", choices=("files", "dcap-qvl"), default="files",
                   help="files: PEM/DER/JSON files (README); dcap-qvl: collateral.json + root_ca.der")
    _state_args(e)
    e.set_defaults(func=cmd_collateral_export)

    i = csub.add_parser("issue", help="issue the collateral anew, optionally with a pinned validity window")
    i.add_argument("--issue-date", metavar="TIME", help="ISO 8601 or seconds since the epoch (default: now)")
    i.add_argument("--next-update", metavar="TIME", help="default: 30 days after the issue date")
    i.add_argument("--unpin", action="store_true",
                   help="drop a pinned window: issue now and anew on expiry (the default behaviour)")
    _state_args(i)
    i.set_defaults(func=cmd_collateral_issue)

    t = subparsers.add_parser("tcb", help="show or set the emulated platform's TCB position",
                              description="Without options: show the TCB levels and where the platform "
                                          "sits. --level N / --status STATUS move the PCK certificate and "
                                          "TEE_TCB_SVN to that level; --revoke-pck revokes the PCK "
                                          "certificate through the PCK CRL.")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--level", metavar="N", type=str, help="TCB level index (0 = the highest)")
    g.add_argument("--status", metavar="STATUS", help=f"one of {', '.join(qa.TCB_STATUSES)}")
    r = t.add_mutually_exclusive_group()
    r.add_argument("--revoke-pck", action="store_true", help="list the PCK certificate in the PCK CRL")
    r.add_argument("--unrevoke-pck", action="store_true", help="take it off the PCK CRL again")
    t.add_argument("--quote-version", choices=("4", "5"),
                   help="TEE_TCB_SVN2 equal to TEE_TCB_SVN (v4 quotes) or populated and different (v5, "
                        "type-3 body; quote.md §5.2)")
    t.add_argument("--json", action="store_true", help="print the position as JSON")
    _state_args(t)
    t.set_defaults(func=cmd_tcb)

    s = subparsers.add_parser("pccs", help="serve the emulated collateral on the PCS v4 paths")
    s.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8081",
                   help="address to listen on (default 127.0.0.1:8081, loopback)")
    _state_args(s)
    s.set_defaults(func=cmd_pccs)


# ------------------------------------------------------------------ helpers
def _print(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def read_quote_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_QUOTE_FILE + 1)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory, not a quote file") from None
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) > MAX_QUOTE_FILE:
        raise CliError(f"{path}: more than {MAX_QUOTE_FILE} bytes; not a quote file")
    return data


def _parse(path: str) -> quote_mod.Quote:
    try:
        return quote_mod.parse_quote(read_quote_file(path))
    except quote_mod.QuoteFormatError as e:
        raise CliError(f"{path}: not a DCAP TD quote: {e}") from None


def quote_summary(q: quote_mod.Quote) -> str:
    j = q.to_json()
    rows = [("version", str(q.version)), ("att_key_type", str(q.att_key_type)),
            ("tee_type", f"0x{q.tee_type:08x}"), ("header_reserved", j["header_reserved"]),
            ("qe_vendor_id", j["qe_vendor_id"]), ("user_data", j["user_data"]),
            ("body_type", f"{q.body_type} ({q.body_size} bytes at offset {q.body_offset})")]
    rows += [(k, v) for k, v in j["body"].items()]
    rows += [("signature_data_len", f"{q.signature_data_len} (quote {q.quote_len} bytes, "
                                    f"{q.trailing_len} trailing)"),
             ("signature", j["signature"]), ("attestation_key", j["attestation_key"]),
             ("cert_type", f"{q.cert_type} ({q.cert_size} bytes)"),
             ("qe_mrsigner", j["qe_report"]["mrsigner"]), ("qe_isvprodid", str(j["qe_report"]["isvprodid"])),
             ("qe_isvsvn", str(j["qe_report"]["isvsvn"])), ("qe_reportdata", j["qe_report"]["reportdata"]),
             ("qe_auth_data", j["qe_auth_data"]),
             ("inner_cert_type", f"{q.inner_cert_type} ({len(q.inner_cert_data)} bytes)")]
    rows += [(f"pck_chain[{i}]", str(s)) for i, s in enumerate(j["pck_chain"])]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _platform(args: argparse.Namespace) -> Any:
    from tdxmodel.host.collateral import Platform
    from tdxmodel.state import StateStore
    return Platform(StateStore(args.state, config_path=getattr(args, "config", None)))


# ------------------------------------------------------------------ commands
def cmd_quote(args: argparse.Namespace) -> int:
    from tdxmodel.cli.td import parse_hex, write_output
    from tdxmodel.host.qe import TdqeError

    if args.out == "-" and args.json:
        raise CliError("--out - writes the raw quote to stdout; it cannot also carry --json")
    reportdata = parse_hex("--reportdata", args.reportdata)
    if len(reportdata) > 64:
        raise CliError(f"--reportdata: {len(reportdata)} bytes; at most 64")
    qe = _platform(args).quoting_enclave()  # makes the platform (and its TCB position) on first use
    tdreport = qe.module.report(reportdata)
    try:
        raw = qe.produce(tdreport)
    except TdqeError as e:
        raise CliError(f"quote: {e}", exit_code=1) from None
    if args.out:
        write_output(args.out, raw)  # never replaces a device, FIFO or link (cli/td.py); - is stdout
        if args.out == "-":
            return 0
    q = quote_mod.parse_quote(raw)
    _print(json.dumps(q.to_json(), indent=2) if args.json else quote_summary(q))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    q = _parse(args.file)
    _print(json.dumps(q.to_json(), indent=2) if args.show_json else quote_summary(q))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    q = _parse(args.file)
    try:
        now = quote_mod.parse_time(args.at)
    except ValueError as e:
        raise CliError(f"--at: {e}") from None
    if args.root:
        try:
            root = quote_mod.load_root(pathlib.Path(args.root))
        except FileNotFoundError:
            raise CliError(f"{args.root}: no such file") from None
        except (OSError, ValueError) as e:
            raise CliError(f"--root {args.root}: {getattr(e, 'strerror', None) or e}") from None
    else:
        root = None
    try:
        if args.collateral:
            collateral = quote_mod.Collateral.load(args.collateral)
        elif args.pccs:
            collateral = quote_mod.fetch_collateral(args.pccs, q)
        else:
            collateral = None
    except quote_mod.CollateralError as e:
        raise CliError(f"collateral: {e}") from None
    if collateral is None or root is None:
        platform = _platform(args)
        if collateral is None:
            collateral = platform.collateral()
        if root is None:
            root = platform.pki().root_cert
    result = quote_mod.verify(q, collateral, root, now)
    if args.verify_json:
        _print(json.dumps(result.to_json(), indent=2))
    if not result.ok:
        print(f"tdxmodel: {args.file}: {result.reason}", file=sys.stderr)
        return 1
    if not args.verify_json:
        ids = f" ({', '.join(result.advisory_ids)})" if result.advisory_ids else ""
        _print(f"{result.status}{ids}")
    return 0


def cmd_collateral_export(args: argparse.Namespace) -> int:
    written = _platform(args).export(args.dir, fmt=args.format)
    for path in written:
        _print(str(path))
    return 0


def cmd_collateral_issue(args: argparse.Namespace) -> int:
    from tdxmodel.host.collateral import PlatformError

    if args.unpin and (args.issue_date or args.next_update):
        raise CliError("--unpin takes no --issue-date or --next-update")
    try:
        issue = quote_mod.parse_time(args.issue_date) if args.issue_date else None
        nxt = quote_mod.parse_time(args.next_update) if args.next_update else None
    except ValueError as e:
        raise CliError(str(e)) from None
    platform = _platform(args)
    try:
        if args.unpin or (issue is None and nxt is None):
            platform.set_validity()
        else:
            platform.set_validity(issue if issue is not None else quote_mod.parse_time(None), nxt)
    except PlatformError as e:
        raise CliError(str(e)) from None
    window = platform.meta().get("window")
    _print(f"collateral issued; window {window[0]} .. {window[1]} (pinned)" if window
           else "collateral issued; renewed on expiry")
    return 0


def cmd_tcb(args: argparse.Namespace) -> int:
    from tdxmodel.host.collateral import PlatformError

    platform = _platform(args)
    level = None
    if args.level is not None:
        try:
            level = int(args.level, 10)
        except ValueError:
            raise CliError(f"--level: not a level index: {args.level!r}") from None
    try:
        if level is not None or args.status or args.revoke_pck or args.unrevoke_pck or args.quote_version:
            platform.set_tcb(level=level, status=args.status,
                             revoked=True if args.revoke_pck else False if args.unrevoke_pck else None,
                             quote_version=int(args.quote_version) if args.quote_version else None)
        pos = platform.position()
    except PlatformError as e:
        raise CliError(str(e)) from None
    if args.json:
        _print(json.dumps(pos, indent=2))
        return 0
    lines = []
    for i, lvl in enumerate(pos["levels"]):
        mark = "*" if i == pos["level"] else " "
        ids = f"  {','.join(lvl['advisory_ids'])}" if lvl["advisory_ids"] else ""
        lines.append(f"{mark} {i}  {lvl['status']:<35} tdx {lvl['tdx_svn']}{ids}")
    lines.append(f"level {pos['level']} ({pos['status']}); PCK certificate "
                 f"{'revoked' if pos['pck_revoked'] else 'not revoked'}; quotes v{pos['quote_version']}")
    _print("\n".join(lines))
    return 0


def cmd_pccs(args: argparse.Namespace) -> int:
    from tdxmodel.host.pccs import serve

    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise CliError(f"--listen: not HOST:PORT: {args.listen!r}")
    return serve(_platform(args), host.strip("[]") or "127.0.0.1", int(port))
