"""``tdxmodel run [--driver NAME] [--state DIR] [--config TOML] [--preload] -- CMD [ARGS...]``: one
command in a sandbox whose TDX guest paths are the emulator's (layer 4; README "A sandbox for one
command").

Two processes:

* the outer one (this command) makes a private work directory, starts the inner one, forwards
  SIGINT/SIGTERM/SIGHUP to it, removes the work directory when it is done and exits with its status;
* the inner one (``python -m tdxmodel.cli.run``) enters a new mount namespace first (every mount
  private, so nothing propagates to the host), starts the daemon there (FUSE mount in the work
  directory), makes the guest paths show the daemon's files (``tdxmodel.transport.placement``:
  bind mounts, overlays where a path is missing, nothing created on any file system of the host),
  runs CMD, then undoes the mounts and stops the daemon. When the last process of the namespace
  exits (CMD killed, the inner process killed) the kernel drops every mount in it anyway.

Paths: the device node of the generation, ``/sys/firmware/acpi/tables/CCEL`` and ``data/CCEL``, the
6.16 measurement directories, ``/etc/tdx-attest.conf`` (no vsock port: libtdx_attest then takes the
configfs path), and ``/sys/kernel/config/tsm`` when the daemon serves configfs-tsm. ``--preload``
places nothing: CMD runs under the LD_PRELOAD library, which forwards the device node, the CCEL and
measurement files and the configfs-tsm tree (README "LD_PRELOAD").

Exit status: CMD's (128 + N when signal N ended it); 2 with one line when run cannot start (no root,
no mount namespaces, a daemon that does not start).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional

from tdxmodel import abi
from tdxmodel.cli import CliError

#: /etc/tdx-attest.conf as run places it: no ``port``, so libtdx_attest finds vsock unconfigured
#: and goes on to configfs-tsm (quote.md §2.7 step 3).
TDX_ATTEST_CONF = "# tdxmodel run: no vsock port; quotes go through configfs-tsm\n"
TDX_ATTEST_CONF_PATH = "/etc/tdx-attest.conf"
TSM_PATH = "/sys/kernel/config/tsm"


def register(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "run", help="run one command with the emulated TDX guest paths (private mount namespace)",
        description="Run CMD in a private mount namespace where the TDX guest device node, the CCEL "
                    "ACPI tables, the 6.16 measurement files and /etc/tdx-attest.conf are the "
                    "emulator's; the host's paths and mount table are untouched. Exits with CMD's "
                    "status. Needs root and mount namespaces.")
    p.add_argument("--driver", default="v6.16", choices=abi.DRIVERS, metavar="NAME",
                   help=f"driver generation: {', '.join(abi.DRIVERS)} (default v6.16)")
    p.add_argument("--state", metavar="DIR", help="state directory (default: $TDXMODEL_STATE, else "
                   "$XDG_STATE_HOME/tdxmodel)")
    p.add_argument("--config", metavar="TOML", help="configuration a new state directory is made from")
    p.add_argument("--backend", choices=("core", "reference"), help="emulator backend")
    p.add_argument("--preload", action="store_true",
                   help="reach the device, configfs-tsm, CCEL and the measurement files through the "
                        "LD_PRELOAD library instead of mounts")
    p.add_argument("--vsock-port", type=int, metavar="N",
                   help="with --preload: CMD's /etc/tdx-attest.conf says port = N and its AF_VSOCK "
                        "connects to the host (CID 2) at port N reach the emulated QGS, so "
                        "libtdx_attest takes its vsock path for quotes")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    p.set_defaults(func=cmd_run)


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cmd_run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CliError("run: give the command after --, e.g. tdxmodel run -- ./client")
    if args.vsock_port is not None and not args.preload:
        raise CliError("--vsock-port needs --preload (only the preload library reaches the emulated "
                       "QGS over vsock)")
    if args.vsock_port is not None and not 0 < args.vsock_port <= 0xFFFFFFFF:
        raise CliError(f"--vsock-port must be a port number 1..4294967295, not {args.vsock_port}")
    if os.geteuid() != 0:
        raise CliError("run needs root (it mounts FUSE and makes a private mount namespace)")
    workdir = tempfile.mkdtemp(prefix="tdxm-run-")
    spec = {"driver": args.driver, "state": os.path.abspath(args.state) if args.state else None,
            "config": os.path.abspath(args.config) if args.config else None, "backend": args.backend,
            "preload": args.preload, "vsock_port": args.vsock_port, "workdir": workdir, "cmd": cmd}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tdxmodel.cli.run", json.dumps(spec)], env=env)
        forward = {s: signal.signal(s, lambda sig, _f: proc.send_signal(sig))
                   for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            rc = proc.wait()
        finally:
            for s, h in forward.items():
                signal.signal(s, h)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return rc if rc >= 0 else 128 - rc


# ------------------------------------------------------------------ the inner process
def _fail(msg: str) -> "NoReturn":  # type: ignore[name-defined]
    print(f"tdxmodel: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def _places(daemon: Any, driver: str, workdir: str) -> List[tuple]:
    """(target, source) pairs for one generation's daemon."""
    from tdxmodel import profiles
    profile = profiles.get(driver)
    mnt = daemon.mount
    out = [(profile.device_path, daemon.device_file),
           ("/sys/firmware/acpi/tables/CCEL", os.path.join(mnt, "acpi/tables/CCEL")),
           ("/sys/firmware/acpi/tables/data/CCEL", os.path.join(mnt, "acpi/tables/data/CCEL"))]
    if profile.measurements:
        out += [(d, os.path.join(mnt, "measurements")) for d in profile.measurement_dirs]
    conf = os.path.join(workdir, "tdx-attest.conf")
    with open(conf, "w") as f:
        f.write(TDX_ATTEST_CONF)
    out.append((TDX_ATTEST_CONF_PATH, conf))
    if os.path.isdir(os.path.join(mnt, "tsm")):  # configfs-tsm, where the daemon serves it
        out.append((TSM_PATH, os.path.join(mnt, "tsm")))
    return out


def inner(spec: Dict[str, Any]) -> int:
    from tdxmodel.transport.placement import Placement, PlacementError, unshare_mounts
    try:
        unshare_mounts()  # first, while this process has one thread
    except PlacementError as e:
        _fail(f"run needs mount namespaces: {e.strerror or e}")
    if spec["config"]:
        os.environ["TDXMODEL_CONFIG"] = spec["config"]
    from tdxmodel.transport.daemon import Daemon, DaemonError
    workdir = spec["workdir"]
    socket_path = os.path.join(workdir, "sock")
    qgs_path = os.path.join(workdir, "qgs.sock")
    daemon = Daemon(spec["driver"], os.path.join(workdir, "mnt"), state=spec["state"],
                    socket_path=socket_path, backend=spec["backend"], qgs=qgs_path)
    placement = Placement(workdir)
    child: Optional[subprocess.Popen] = None
    stop_requested: List[int] = []

    def on_signal(sig: int, _frame: Any) -> None:
        if child is not None and child.poll() is None:
            child.send_signal(sig)
        else:
            stop_requested.append(sig)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        try:
            daemon.start()
        except DaemonError as e:
            _fail(f"run: {e}")
        env = dict(os.environ)
        if spec["preload"]:
            from tdxmodel.cli.serve import PRELOAD_LIBRARY
            from tdxmodel.transport.qgs_server import preload_env
            env["TDXMODEL_SOCKET"] = socket_path
            env["LD_PRELOAD"] = os.fspath(PRELOAD_LIBRARY)
            env.update(preload_env(qgs_path, spec.get("vsock_port"), workdir))
        else:
            try:
                for target, source in _places(daemon, spec["driver"], workdir):
                    placement.place(target, source)
            except OSError as e:
                _fail(f"run: cannot place the guest paths: {e.strerror or e}")
        if stop_requested:
            return 128 + stop_requested[0]
        try:
            child = subprocess.Popen(spec["cmd"], env=env)
        except OSError as e:
            _fail(f"run: {spec['cmd'][0]}: {e.strerror}")
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:
                continue
        return rc if rc >= 0 else 128 - rc
    finally:
        for err in placement.undo():
            print(f"tdxmodel run: {err}", file=sys.stderr, flush=True)
        daemon.stop()


if __name__ == "__main__":
    sys.exit(inner(json.loads(sys.argv[1])))
