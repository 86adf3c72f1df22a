"""``tdxmodel report | extend | verify | show``: the TD's view of attestation (layer 4).

``report``, ``extend`` and ``verify`` work on the emulated platform and TD kept in the state
directory (``--state DIR``, else ``$TDXMODEL_STATE``, else ``$XDG_STATE_HOME/tdxmodel``; see
``tdxmodel.state``); ``show`` only decodes a file. Spellings of commands, flags, JSON keys and exit
codes are a contract:

* exit 0: done (``verify``: the report is genuine on this platform);
* exit 1: ``verify`` only, the report is not genuine; one line on stderr, ``tdxmodel: FILE: PART: why``
  with PART one of ``MAC``, ``TEE_TCB_INFO_HASH``, ``TEE_INFO_HASH``;
* exit 2: bad input (bad hex, wrong length, RTMR index out of range, missing or short file, unusable
  state, an ``--out`` the command will not write); one line on stderr, never a traceback.

``--out FILE`` (``write_output``): ``-`` is stdout (the raw bytes, no summary). A FILE that is absent
or a regular file is replaced atomically. One that exists and is not a regular file (a device, a
FIFO) is written in place, never replaced. A symbolic link is never replaced and is followed only to
something that is not a regular file (``/dev/stdout`` on a terminal or a pipe); a link to a regular
file or to nothing is refused (exit 2), so a planted link cannot make root overwrite or create a file.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys

from tdxmodel import abi
from tdxmodel.cli import CliError
from tdxmodel.report import PART_TEE_INFO_HASH, PART_TEE_TCB_INFO_HASH, TdReport, verify
from tdxmodel.state import StateStore, atomic_write

_REPORT_LEN = abi.TDX_REPORT_LEN


def register(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser("report", help="make a TDREPORT for this TD (TDG.MR.REPORT)",
                              description="Make a TDREPORT for the TD in the state directory.")
    p.add_argument("--reportdata", metavar="HEX", default="",
                   help=f"REPORTDATA: up to {abi.TDX_REPORTDATA_LEN} bytes of hex, zero-padded (default: all zero)")
    p.add_argument("--out", metavar="FILE", help=f"write the raw {_REPORT_LEN} bytes to FILE (a regular file "
                   "atomically, a device or FIFO in place; - for stdout, then no summary)")
    p.add_argument("--json", action="store_true", help="print the decoded fields and the raw hex as JSON")
    _state_args(p)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("extend", help="extend an RTMR (TDG.MR.RTMR.EXTEND)",
                              description="RTMR[I] <- SHA-384(RTMR[I] || DATA) on the TD in the state directory.")
    p.add_argument("--rtmr", metavar="I", required=True,
                   help=f"RTMR index, 0..{abi.TDX_NUM_RTMRS - 1} (the module accepts all of them, ref §4.6)")
    p.add_argument("--data", metavar="HEX", required=True,
                   help=f"exactly {abi.TDX_EXTEND_DATA_LEN} bytes of hex")
    _state_args(p)
    p.set_defaults(func=cmd_extend)

    p = subparsers.add_parser("verify", help="check a TDREPORT's MAC and hashes on this platform",
                              description="Exit 0 if FILE is a genuine TDREPORT of this emulated platform, "
                                          "else exit 1 naming the failing part (MAC, TEE_TCB_INFO_HASH, "
                                          "TEE_INFO_HASH).")
    p.add_argument("file", metavar="FILE")
    _state_args(p)
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser("show", help="decode any 1024-byte TDREPORT",
                              description="Decode a TDREPORT file field by field (no state needed).")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the decoded fields and the raw hex as JSON")
    p.set_defaults(func=cmd_show)


def _state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", metavar="DIR",
                   help="state directory (default: $TDXMODEL_STATE, else $XDG_STATE_HOME/tdxmodel)")
    p.add_argument("--config", metavar="TOML",
                   help="configuration a new state directory is made from (default: $TDXMODEL_CONFIG)")


def _store(args: argparse.Namespace) -> StateStore:
    return StateStore(args.state, config_path=args.config)


# ------------------------------------------------------------------ input parsing
def parse_hex(flag: str, text: str) -> bytes:
    """parse_hex(flag, text) -> bytes: hex digits, an optional 0x prefix; CliError naming ``flag``."""
    digits = text.strip()
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    if not all(c in "0123456789abcdefABCDEF" for c in digits):
        raise CliError(f"{flag}: not a hex string: {text!r}")
    if len(digits) % 2:
        raise CliError(f"{flag}: odd number of hex digits ({len(digits)})")
    return bytes.fromhex(digits)


def parse_rtmr_index(text: str) -> int:
    try:
        index = int(text, 10)
    except ValueError:
        raise CliError(f"--rtmr: not an RTMR index: {text!r}") from None
    if not 0 <= index < abi.TDX_NUM_RTMRS:
        raise CliError(f"--rtmr: index {index} out of range 0..{abi.TDX_NUM_RTMRS - 1}")
    return index


def read_report_file(path: str) -> bytes:
    """read_report_file(path) -> 1024 bytes; CliError for a missing, unreadable or wrong-sized file."""
    try:
        with open(path, "rb") as f:
            data = f.read(_REPORT_LEN + 1)  # bounded: FILE may be huge or endless
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory, not a TDREPORT file") from None
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) != _REPORT_LEN:
        size = f"{len(data)} bytes" if len(data) <= _REPORT_LEN else f"more than {_REPORT_LEN} bytes"
        raise CliError(f"{path}: {size}; a TDREPORT is exactly {_REPORT_LEN} bytes")
    return data


# ------------------------------------------------------------------ output
def write_output(path: str, data: bytes) -> None:
    """write_output(path, data) -> None: write a command's output file (module docstring, --out);
    CliError (exit 2) for what it will not or cannot write."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise CliError(f"{path}: cannot write: {e.strerror}") from None
    if st is None or stat.S_ISREG(st.st_mode):
        try:
            atomic_write(path, data)  # rename: a link raced in is replaced, never followed
        except OSError as e:
            raise CliError(f"{path}: cannot write: {e.strerror or e}") from None
        return
    if stat.S_ISDIR(st.st_mode):
        raise CliError(f"{path}: cannot write: {os.strerror(errno.EISDIR)}")
    flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC  # never O_CREAT or O_TRUNC
    if not stat.S_ISLNK(st.st_mode):
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CliError(f"{path}: a dangling symbolic link; refusing to create its target") from None
    except OSError as e:
        raise CliError(f"{path}: cannot write: {e.strerror}") from None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise CliError(f"{path}: a symbolic link to a regular file; refusing to write through it "
                           "(give the file's own path, or - for stdout)")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise CliError(f"{path}: cannot write: {e.strerror}") from None
    finally:
        os.close(fd)


def summary(report: TdReport) -> str:
    """A readable multi-line summary of every named field, with the two hash checks."""
    hashes = report.check_hashes()

    def mark(part: str) -> str:
        return "(matches)" if hashes[part] else "(MISMATCH)"

    rows = [
        ("report_type", f"type 0x{report.type:02x} subtype {report.subtype} version {report.version}"),
        ("cpusvn", report.cpusvn.hex()),
        ("tee_tcb_info_hash", f"{report.tee_tcb_info_hash.hex()} {mark(PART_TEE_TCB_INFO_HASH)}"),
        ("tee_info_hash", f"{report.tee_info_hash.hex()} {mark(PART_TEE_INFO_HASH)}"),
        ("reportdata", report.reportdata.hex()),
        ("mac", report.mac.hex()),
        ("tcb_valid", f"0x{report.tcb_valid:x}"),
        ("tee_tcb_svn", report.tee_tcb_svn.hex()),
        ("mrseam", report.mrseam.hex()),
        ("mrsignerseam", report.mrsignerseam.hex()),
        ("seam_attributes", f"0x{report.seam_attributes:016x}"),
        ("tee_tcb_svn2", report.tee_tcb_svn2.hex()),
        ("attributes", f"0x{report.attributes:016x}"),
        ("xfam", f"0x{report.xfam:016x}"),
        ("mrtd", report.mrtd.hex()),
        ("mrconfigid", report.mrconfigid.hex()),
        ("mrowner", report.mrowner.hex()),
        ("mrownerconfig", report.mrownerconfig.hex()),
    ]
    rows += [(f"rtmr{i}", r.hex()) for i, r in enumerate(report.rtmr)]
    rows.append(("servtd_hash", report.servtd_hash.hex()))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _print_report(report: TdReport, as_json: bool) -> None:
    text = json.dumps(report.to_json(), indent=2) if as_json else summary(report)
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # `tdxmodel show FILE | head`: the reader left, which is not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# ------------------------------------------------------------------ commands
def cmd_report(args: argparse.Namespace) -> int:
    reportdata = parse_hex("--reportdata", args.reportdata)
    if len(reportdata) > abi.TDX_REPORTDATA_LEN:
        raise CliError(f"--reportdata: {len(reportdata)} bytes; at most {abi.TDX_REPORTDATA_LEN}")
    if args.out == "-" and args.json:
        raise CliError("--out - writes the raw report to stdout; it cannot also carry --json")
    raw = _store(args).module().report(reportdata)
    if args.out:
        write_output(args.out, raw)
        if args.out == "-":
            return 0
    _print_report(TdReport.from_bytes(raw), args.json)
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    index = parse_rtmr_index(args.rtmr)
    data = parse_hex("--data", args.data)
    if len(data) != abi.TDX_EXTEND_DATA_LEN:
        raise CliError(f"--data: {len(data)} bytes; an RTMR extend takes exactly {abi.TDX_EXTEND_DATA_LEN}")
    value = _store(args).extend(index, data)
    print(f"rtmr{index}  {value.hex()}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    raw = read_report_file(args.file)
    ok, _part, reason = verify(raw, _store(args).module())
    if not ok:
        print(f"tdxmodel: {args.file}: {reason}", file=sys.stderr)
        return 1
    print(f"{args.file}: {reason}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _print_report(TdReport.from_bytes(read_report_file(args.file)), args.json)
    return 0

