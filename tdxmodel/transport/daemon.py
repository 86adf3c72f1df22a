"""``tdxmodel serve``: one emulated TD served through FUSE (and optionally a Unix socket) until
SIGINT/SIGTERM (layer 4).

Life cycle (``Daemon.start`` / ``Daemon.stop``):

1. recover a stale mount point left by a daemon that died (``Transport endpoint is not connected``):
   say so on stderr and detach it; refuse a mount point a live daemon still serves;
2. build the TD from the state directory (``tdxmodel.state.StateStore``) and load the driver;
3. mount the file system (multithreaded FUSE loop, ``allow_other`` + ``default_permissions``, the
   device file ``--mode`` 0600 by default) and start the socket server and the state watcher;
4. ``--bind``: bind-mount the device file on DEVPATH (created if absent); ``--bind-acpi`` and
   ``--bind-tsm`` place the CCEL files and ``DIR/tsm`` (``tdxmodel.transport.placement``: a bind
   mount, over an overlay with a private tmpfs upper where the path is missing);
5. on stop, in reverse: undo the placements, unbind (and remove DEVPATH if we created it), remove
   the socket, unmount.

The daemon prints ``tdxmodel serve: ready <device file>`` on stdout once everything is up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from typing import Any, List, Optional

from tdxmodel import _backend, abi, profiles

FUSE_OPTIONS = "fsname=tdxmodel,subtype=tdxmodel,default_permissions,allow_other"
MS_BIND = 4096
ACPI_TABLES = "/sys/firmware/acpi/tables"   # where Linux shows ACPI tables (drivers/acpi/sysfs.c)
MNT_DETACH = 2
STATE_POLL_SECONDS = 0.2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def node_name(driver: str) -> str:
    """node_name(driver: str) -> str: the device file's name, as the version's node (ref §1)."""
    return os.path.basename(abi.DEVICE_PATHS[driver])


class DaemonError(Exception):
    """A one-line reason the daemon cannot start (the CLI prints it and exits 2)."""


def _mounts() -> List[List[str]]:
    with open("/proc/self/mounts") as f:
        return [line.split() for line in f]


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_type(path: str) -> Optional[str]:
    """The file-system type mounted exactly at `path`, or None."""
    real = os.path.realpath(path)
    found = None
    for fields in _mounts():
        if len(fields) > 2 and _unescape(fields[1]) == real:
            found = fields[2]
    return found


def lazy_unmount(path: str) -> None:
    if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True, timeout=10)


def _fs_type_of(path: str) -> Optional[str]:
    """The type of the file system `path` is on (the longest mount point above it)."""
    real = os.path.realpath(path)
    best, kind = -1, None
    for fields in _mounts():
        if len(fields) > 2:
            mnt = _unescape(fields[1])
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= best:
                best, kind = len(mnt), fields[2]
    return kind


def _private_mount_namespace() -> bool:
    """Whether this process's mount namespace is not init's (False when that cannot be told)."""
    try:
        return os.stat("/proc/self/ns/mnt").st_ino != os.stat("/proc/1/ns/mnt").st_ino
    except OSError:
        return False


class Daemon:
    """Daemon(driver, mount, *, state=None, socket_path=None, bind=None, mode=0o600, backend=None,
    null=False, threads=16)

    ``null`` serves the transport alone (every ioctl answers 0, nothing is emulated): the benchmark's
    baseline."""

    def __init__(self, driver: str, mount: str, *, state: Optional[str] = None,
                 socket_path: Optional[str] = None, bind: Optional[str] = None, mode: int = 0o600,
                 backend: Optional[str] = None, null: bool = False, threads: int = 16,
                 bind_acpi: Optional[str] = None, qgs: Optional[str] = None,
                 bind_tsm: Optional[str] = None) -> None:
        if driver not in abi.DRIVERS:
            raise DaemonError(f"--driver must be one of {', '.join(abi.DRIVERS)}, not {driver!r}")
        if not 0 <= mode <= 0o777:
            raise DaemonError(f"--mode must be an octal permission like 0600, not {oct(mode)}")
        self.driver = driver
        self.mount = os.path.abspath(mount)
        self.state = state
        self.socket_path = os.path.abspath(socket_path) if socket_path else None
        self.bind = os.path.abspath(bind) if bind else None
        self.bind_acpi = os.path.abspath(bind_acpi) if bind_acpi else None
        self.bind_tsm = os.path.abspath(bind_tsm) if bind_tsm else None
        if self.bind_tsm and profiles.get(driver).quote is None:
            raise DaemonError(f"--bind-tsm: {driver} has no configfs-tsm (it is ioctl-only)")
        self._placement: Any = None
        self._platform: Any = None
        self.qgs_path = os.path.abspath(qgs) if qgs else None
        self.qgs_service: Any = None
        self.host: Any = None
        self._qgs_server: Any = None
        self.mode = mode
        self.backend_name = backend
        self.null = null
        self.threads = threads
        self.device_file = os.path.join(self.mount, node_name(driver))
        self.server: Any = None
        self.device: Any = None
        self._threads: List[threading.Thread] = []
        self._stop = threading.Event()
        self._bind_created = False
        self._bound = False
        self._mounted = False
        self._fuse_conn: Optional[int] = None
        self._backend: Any = None

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        from tdxmodel.transport._server import NODE_CONTROL, NODE_DEVICE, NODE_DIR, NODE_VFS, DeviceServer

        if os.geteuid() != 0:
            raise DaemonError("serving needs root (FUSE allow_other, process_vm_readv on clients, binds)")
        if not os.path.exists("/dev/fuse"):
            raise DaemonError("/dev/fuse is missing: load the fuse module (in a container, give it the "
                              "host's /dev/fuse)")
        if not self.null:
            try:
                self._backend = _backend.load(self.backend_name)
            except ImportError as e:
                raise DaemonError(f"backend {self.backend_name or _backend.default_name()}: {e}") from None
        self._prepare_mount_point()
        if self.socket_path:
            self._prepare_socket_path()
        if self.null:
            handler = None
        else:
            handler = self._make_device()
            self._attach_quote_service()
        # the ioctl hot path runs without the GIL when the emulator is the C core, which lends the
        # transport its C path; the reference backend is served through Python alone
        # An ioctl that extends an RTMR (Command.extends_rtmr) must be committed to the state directory
        # under its lock, which the C path cannot take: such a generation served with a state directory
        # goes through Python for every ioctl (one lock per open file, one order of extends).
        fast = None
        needs_store = handler is not None and handler.store is not None and \
            profiles.get(self.driver).extends_through_ioctl
        if handler is not None and self._backend.BACKEND_NAME == "core" and not needs_store:
            from tdxmodel._core._ext import DevicePath
            fast = DevicePath()
            handler.attach_fast_path(fast)
        self.server = DeviceServer(handler, abi.DEVICE_PATHS[self.driver], fast)
        self.server.set_rdev(abi.DEVICE_RDEV[0], abi.DEVICE_RDEV[1])
        from tdxmodel.transport.device import driver_buffers, driver_windows
        for cmd, window in driver_windows(self.driver).items():
            self.server.set_window(cmd, window)
        for cmd, (ptr_off, len_off) in driver_buffers(self.driver).items():
            self.server.set_buffer(cmd, ptr_off, len_off)
        self.server.add_node(1, node_name(self.driver), NODE_DEVICE, self.mode)
        if handler is not None:
            dirs = {"": 1}
            for path, node_id, mode in handler.control_nodes():
                parent = ""
                for part in path.split("/")[:-1]:
                    child = f"{parent}/{part}" if parent else part
                    if child not in dirs:
                        dirs[child] = self.server.add_node(dirs[parent], part, NODE_DIR, 0o755)
                    parent = child
                self.server.add_node(dirs[parent], path.split("/")[-1], NODE_CONTROL, mode,
                                     handler.control_sizes.get(
                                         path, abi.MEASUREMENT_LEN if path.startswith("measurements/") else 0),
                                     node_id)
            if handler.tree.has_tsm:  # configfs-tsm: DIR/tsm is the emulated kernel's tree
                self.server.add_node(1, "tsm", NODE_VFS, 0o755)
            # what the preload library forwards to the served tree (README "LD_PRELOAD")
            from tdxmodel.transport.tree import TSM, TSM_KERNEL_DIR
            if handler.tree.has_tsm:
                self.server.add_map(TSM_KERNEL_DIR, TSM)
            for rel in ("CCEL", "data/CCEL"):
                self.server.add_map(f"{ACPI_TABLES}/{rel}", f"acpi/tables/{rel}", True)
            for d in profiles.get(self.driver).measurement_dirs:
                self.server.add_map(d, "measurements")
        try:
            self.server.fuse_mount(self.mount, FUSE_OPTIONS, self.threads)
        except OSError as e:
            raise DaemonError(f"cannot mount FUSE on {self.mount}: {e.strerror}") from None
        self._mounted = True
        self._spawn("fuse", self.server.fuse_run)
        try:  # the connection's id in fusectl, to abort it if clients keep files open at stop
            self._fuse_conn = os.minor(os.stat(self.mount).st_dev)
        except OSError:
            self._fuse_conn = None
        if self.socket_path:
            try:
                self.server.socket_listen(self.socket_path, self.mode)
            except OSError as e:
                self.stop()
                raise DaemonError(f"cannot listen on {self.socket_path}: {e.strerror}") from None
            self._spawn("socket", self.server.socket_run)
        if self.qgs_path and self.qgs_service is not None:
            from tdxmodel.transport.qgs_server import QgsServer, QgsServerError
            try:
                self._qgs_server = QgsServer(self.qgs_service, self.qgs_path, mode=self.mode,
                                             log=self._log).start()
            except QgsServerError as e:
                self.stop()
                raise DaemonError(str(e)) from None
        if handler is not None and handler.store is not None:
            self._spawn("state", self._watch_state)
        if self.bind:
            try:
                self._bind()
            except DaemonError:
                self.stop()
                raise
        if self.bind_acpi and handler is not None:
            try:
                self._bind_acpi()
            except DaemonError:
                self.stop()
                raise
        if self.bind_tsm and handler is not None:
            try:
                self._bind_tsm()
            except DaemonError:
                self.stop()
                raise

    def _bind_tsm(self) -> None:
        """--bind-tsm PATH: PATH shows DIR/tsm. Where PATH is missing (no configfs, or configfs
        without a TSM provider) an overlay on its deepest existing directory makes it, with nothing
        written below (tdxmodel.transport.placement). An overlay on a mounted configfs would take
        its other subsystems' mkdirs into the overlay's tmpfs, so that is refused in the host's
        mount namespace (use `tdxmodel run`, or `unshare -m`)."""
        from tdxmodel.transport.placement import Placement
        target = self.bind_tsm
        assert target is not None
        if not os.path.lexists(target):
            anc = os.path.dirname(target)
            while not os.path.lexists(anc):
                anc = os.path.dirname(anc)
            if _fs_type_of(anc) == "configfs" and not _private_mount_namespace():
                raise DaemonError(f"--bind-tsm {target}: {anc} is configfs without a TSM provider; "
                                  "making the path would overlay configfs for every process of the "
                                  "host: run in a private mount namespace (tdxmodel run, unshare -m)")
        if self._placement is None:
            self._placement = Placement()
        try:
            self._placement.place(target, os.path.join(self.mount, "tsm"))
        except OSError as e:
            raise DaemonError(f"--bind-tsm {target}: {e.strerror or e}") from None

    def _bind_acpi(self) -> None:
        """--bind-acpi DIR: DIR/CCEL and DIR/data/CCEL show the served table and log (an overlay on
        the deepest existing directory makes whatever is missing; tdxmodel.transport.placement)."""
        from tdxmodel.transport.placement import Placement
        if self._placement is None:
            self._placement = Placement()
        for rel in ("CCEL", "data/CCEL"):
            try:
                self._placement.place(os.path.join(self.bind_acpi, rel),
                                      os.path.join(self.mount, "acpi/tables", rel))
            except OSError as e:
                raise DaemonError(f"--bind-acpi {self.bind_acpi}: {e.strerror or e}") from None

    def _make_device(self) -> Any:
        from tdxmodel.state import StateStore
        from tdxmodel.transport.device import EmulatedDevice

        from tdxmodel.host.collateral import Platform

        backend = self._backend
        store = StateStore(self.state, backend=backend)
        # the platform first: making its PKI sets the TD's TEE_TCB_SVNs in the state to its TCB level
        # (Platform._apply_position), and the live TD must be built with them for its quotes to verify
        self._platform = Platform(store)
        self._platform.pki()
        module = backend.Module(store.load())
        # the VMM before the kernel: an ioctl quote path registers its notify vector at boot
        self._make_host(module)
        kernel = backend.Kernel(module, self.driver)
        self.device = EmulatedDevice(kernel, store=store)
        return self.device

    def _make_host(self, module: Any) -> None:
        """The emulated platform's quote generation service (tdxmodel.host.qgs over its TDQE) and the
        VMM behind the TD's GetQuote, which asks that same service (QgsVmm: framed payloads pass
        through, a raw TDREPORT is framed as upstream QEMU does). ``--qgs PATH`` also serves it on a
        Unix socket."""
        from tdxmodel.host.qgs import QgsService, QgsVmm
        from tdxmodel.transport.qgs_server import RateLimitedLog

        from tdxmodel.host.qe import PositionedQuotingEnclave
        tdqe = PositionedQuotingEnclave(self._platform.quoting_enclave(module=module), module.tee_tcb_info())
        self.qgs_service = QgsService(tdqe, log=RateLimitedLog(self._log))
        self.host = self._backend.Host(module, producer=QgsVmm(self.qgs_service))

        def tcb_moved() -> bytes:
            """The state's TCB position, read under its lock with the PCK and level it goes with:
            the QE of that position joins the service; returns its TEE_TCB_INFO for the TD."""
            from tdxmodel.host.collateral import Platform
            store = self.device.store
            with store._locked():
                info = store._config_of(store._read(locked=True)).tee_tcb_info()
                qe = Platform(store).quoting_enclave(module=module)
            tdqe.move(info, qe)
            return info

        self._tcb_moved = tcb_moved

    def _attach_quote_service(self) -> None:
        self.device.attach_host(self.host, self.qgs_service)
        self.device.tcb_moved = self._tcb_moved

    def _spawn(self, name: str, target) -> None:
        t = threading.Thread(target=target, name=f"tdxmodel-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _prepare_mount_point(self) -> None:
        try:
            try:
                os.stat(self.mount)
            except FileNotFoundError:
                os.makedirs(self.mount)
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                self._recover_stale()
                return
            raise DaemonError(f"{self.mount}: {e.strerror}") from None
        kind = mount_type(self.mount)
        if kind is not None and kind.startswith("fuse"):
            # stat() may answer from the attribute cache; a directory read needs the daemon
            try:
                os.listdir(self.mount)
            except OSError as e:
                if e.errno == errno.ENOTCONN:
                    self._recover_stale()
                    return
                raise DaemonError(f"{self.mount}: {e.strerror}") from None
            if kind == "fuse.tdxmodel":
                raise DaemonError(f"{self.mount} is already served by a running tdxmodel daemon "
                                  "(stop it first, or choose another --mount)")
            raise DaemonError(f"{self.mount} is already a {kind} mount point")
        if not os.path.isdir(self.mount):
            raise DaemonError(f"--mount {self.mount} is not a directory")
        if os.listdir(self.mount):
            raise DaemonError(f"--mount {self.mount} is not empty")

    def _recover_stale(self) -> None:
        print(f"tdxmodel serve: {self.mount} is a stale mount left by a daemon that died; "
              "unmounting it and serving afresh", file=sys.stderr, flush=True)
        lazy_unmount(self.mount)
        try:
            os.stat(self.mount)
        except OSError as e:
            raise DaemonError(f"{self.mount}: still unusable after unmounting the stale mount: "
                              f"{e.strerror}") from None

    def _prepare_socket_path(self) -> None:
        path = self.socket_path
        assert path is not None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise DaemonError(f"--socket {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(2)
            probe.connect(path)
        except OSError:
            print(f"tdxmodel serve: removing stale socket {path}", file=sys.stderr, flush=True)
            os.unlink(path)
            return
        finally:
            probe.close()
        raise DaemonError(f"--socket {path} is served by a running daemon")

    def _bind(self) -> None:
        target = self.bind
        assert target is not None
        if not os.path.lexists(target):
            try:
                fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.close(fd)
            except OSError as e:
                raise DaemonError(f"--bind {target}: cannot create it: {e.strerror}") from None
            self._bind_created = True
        elif os.path.isdir(target):
            raise DaemonError(f"--bind {target} is a directory")
        if _libc.mount(os.fsencode(self.device_file), os.fsencode(target), None, MS_BIND, None) != 0:
            e = ctypes.get_errno()
            raise DaemonError(f"--bind {target}: mount failed: {os.strerror(e)}")
        self._bound = True

    # ------------------------------------------------------------------ run / stop
    def _watch_state(self) -> None:
        last_error = None
        while not self._stop.wait(STATE_POLL_SECONDS):
            try:
                self.device.sync_state()
                last_error = None
            except Exception as e:  # a corrupt state file must not kill the daemon; say it once
                if str(e) != last_error:
                    self.device.log(f"state directory: {e} (serving the last good state)")
                last_error = str(e)

    def handle_signals(self) -> None:
        """SIGINT/SIGTERM end serve_forever (main thread only). Install before start(), so a signal
        during start-up still unmounts."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())

    def serve_forever(self) -> None:
        """Block until stopped (a signal, with handle_signals), then stop."""
        try:
            while not self._stop.wait(0.5):
                if self._threads and not self._threads[0].is_alive():
                    self._log("the FUSE loop ended (unmounted from outside?)")
                    break
        finally:
            self.stop()

    def _log(self, msg: str) -> None:
        print(f"tdxmodel serve: {msg}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._placement is not None:
            for err in self._placement.undo():
                self._log(f"--bind-acpi: {err}")
            self._placement = None
        if self._bound and self.bind:
            lazy_unmount(self.bind)
            self._bound = False
        if self._bind_created and self.bind:
            try:
                os.unlink(self.bind)
            except OSError:
                pass
            self._bind_created = False
        if self.device is not None:
            # a client waiting for the lock held through debug/mr_lock would keep its FUSE worker,
            # and so the loop, from ending
            self.device.release_debug_lock()
        if self._qgs_server is not None:
            self._qgs_server.stop()
            self._qgs_server = None
        if self.server is not None:
            if self.socket_path:
                self.server.socket_stop()
            if self._mounted:
                self.server.fuse_stop()  # ends the loop even while clients keep files open
        fuse_thread = next((t for t in self._threads if t.name == "tdxmodel-fuse"), None)
        if fuse_thread is not None:
            # Should the loop still run (a request that does not return), abort the connection
            # where fusectl is mounted (their next call gets ECONNABORTED), as the kernel does when
            # a FUSE daemon exits.
            fuse_thread.join(0.5)
            abort = f"/sys/fs/fuse/connections/{self._fuse_conn}/abort"
            if fuse_thread.is_alive() and self._fuse_conn is not None and os.path.exists(abort):
                try:
                    with open(abort, "w") as f:
                        f.write("1")
                except OSError:
                    pass
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        if self._mounted:
            if mount_type(self.mount):
                lazy_unmount(self.mount)
            self._mounted = False
        if self.device is not None:
            self.device.close()
        if self.host is not None:
            self.host.close()
            self.host = None
