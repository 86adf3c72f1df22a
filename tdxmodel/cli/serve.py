"""``tdxmodel serve`` and ``tdxmodel preload-path`` (layer 4; README "Serving the device")."""

from __future__ import annotations

import argparse
import os
import pathlib

from tdxmodel import abi
from tdxmodel import quote_abi as qa
from tdxmodel.cli import CliError

PRELOAD_LIBRARY = pathlib.Path(__file__).resolve().parents[1] / "_lib" / "libtdxmodel_preload.so"


def _mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"mode out of range: {text!r}")
    return value


def register(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "serve", help="serve the emulated device to unmodified programs (FUSE, Unix socket)",
        description="Serve one emulated TD until SIGINT/SIGTERM: a device file in --mount that answers "
                    "the driver's ioctl exactly as the emulated kernel does, fault-injection files "
                    "under DIR/fail and DIR/fail-nth, 6.16 measurement files under DIR/measurements.")
    p.add_argument("--driver", required=True, choices=abi.DRIVERS, metavar="NAME",
                   help=f"driver generation: {', '.join(abi.DRIVERS)}")
    p.add_argument("--mount", required=True, metavar="DIR", help="FUSE mount point (created if absent)")
    p.add_argument("--state", metavar="DIR", help="state directory (default: $TDXMODEL_STATE, else "
                   "$XDG_STATE_HOME/tdxmodel)")
    p.add_argument("--socket", metavar="PATH", help="also serve the device on this Unix socket (for "
                   "the LD_PRELOAD library)")
    p.add_argument("--bind", metavar="DEVPATH", help="bind-mount the device file on DEVPATH (e.g. "
                   "/dev/tdx_guest; created if absent, removed on exit)")
    p.add_argument("--bind-acpi", nargs="?", const="/sys/firmware/acpi/tables", metavar="DIR",
                   help="show the boot event log's CCEL table and data at DIR/CCEL and DIR/data/CCEL "
                        "(default DIR: /sys/firmware/acpi/tables; an overlay makes missing paths, "
                        "removed on exit)")
    p.add_argument("--bind-tsm", nargs="?", const="/sys/kernel/config/tsm", metavar="PATH",
                   help="show the configfs-tsm tree (DIR/tsm) at PATH (default /sys/kernel/config/tsm; "
                        "an overlay makes a missing path, removed on exit; generations with a quote "
                        "path only)")
    p.add_argument("--qgs", nargs="?", const=qa.QGS_UNIX_SOCKET_PATH, metavar="PATH",
                   help="also serve the emulated quote generation service on this Unix socket, Intel's "
                        "QGS protocol (default PATH: /var/run/tdx-qgs/qgs.socket); the TD's GetQuote "
                        "asks the same service")
    p.add_argument("--mode", type=_mode, default=0o600, metavar="OCTAL",
                   help="permissions of the device file and the socket (default 0600: root only)")
    p.add_argument("--backend", choices=("core", "reference"), help="emulator backend (default: core "
                   "when built)")
    p.add_argument("--threads", type=int, default=16, help="most FUSE worker threads (default 16)")
    p.add_argument("--null", action="store_true", help=argparse.SUPPRESS)  # benchmark baseline
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "preload-path", help="print the path of the LD_PRELOAD library",
        description="Print the absolute path of the library that, preloaded with "
                    "TDXMODEL_SOCKET=PATH, forwards the device node, the configfs-tsm tree, the CCEL "
                    "files and the measurement files to `tdxmodel serve --socket PATH`. It cannot "
                    "reach static or Go binaries or fopen: use the FUSE files (serve --mount, --bind, "
                    "--bind-tsm, --bind-acpi) for those.")
    p.set_defaults(func=cmd_preload_path)


def cmd_serve(args: argparse.Namespace) -> int:
    from tdxmodel.transport.daemon import Daemon, DaemonError

    if args.threads < 1:
        raise CliError("--threads must be at least 1")
    try:
        daemon = Daemon(args.driver, args.mount, state=args.state, socket_path=args.socket, bind=args.bind,
                        mode=args.mode, backend=args.backend, null=args.null, threads=args.threads,
                        bind_acpi=args.bind_acpi, qgs=args.qgs, bind_tsm=args.bind_tsm)
    except DaemonError as e:
        raise CliError(str(e)) from None
    daemon.handle_signals()
    try:
        daemon.start()
    except DaemonError as e:
        raise CliError(str(e)) from None
    print(f"tdxmodel serve: ready {daemon.device_file}"
          + (f" socket {daemon.socket_path}" if daemon.socket_path else "")
          + (f" bind {daemon.bind}" if daemon.bind else "")
          + (f" acpi {daemon.bind_acpi}" if daemon.bind_acpi else "")
          + (f" qgs {daemon.qgs_path}" if daemon.qgs_path else "")
          + (f" tsm {daemon.bind_tsm}" if daemon.bind_tsm else ""), flush=True)
    daemon.serve_forever()
    return 0


def cmd_preload_path(args: argparse.Namespace) -> int:
    if not PRELOAD_LIBRARY.is_file():
        raise CliError(f"{PRELOAD_LIBRARY} is not built: run `python3 setup.py build_ext --inplace`")
    print(os.fspath(PRELOAD_LIBRARY))
    return 0
