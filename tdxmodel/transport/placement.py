"""Make a path show one of the daemon's files without creating anything on the file system below
(layer 4; used by ``serve --bind-acpi`` and ``tdxmodel run``).

``Placement.place(target, source)`` makes ``target`` show ``source`` (a file or a directory):

* if ``target`` exists, ``source`` is bind-mounted onto it;
* otherwise the deepest existing ancestor A of ``target`` gets an overlay mount (lower: A itself,
  upper and work: a private tmpfs), the missing directories and an empty ``target`` are made in
  the overlay (they land in the tmpfs, never in A's file system), and ``source`` is bind-mounted
  onto it. Mounts below A (``/dev/pts`` under ``/dev``, ``debugfs`` under ``/sys/kernel``) would be
  hidden by the overlay, so each is bind-mounted again at the same place on top of it.

``undo()`` detaches every mount in reverse order and removes the tmpfs's mount point. Nothing is
ever written to a file system the placement did not mount. Run it in a private mount namespace
(``tdxmodel run``) to keep the host's mount table untouched; on the host it changes the mount
table until ``undo``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from typing import List, Optional, Tuple

MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000  # linux/sched.h

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class PlacementError(OSError):
    """A mount a placement needs failed; the message names the path."""


def _mount(source: Optional[str], target: str, fstype: Optional[str], flags: int,
           data: Optional[str] = None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        raise PlacementError(e, f"mount {fstype or 'bind'} {source} on {target}: {os.strerror(e)}")


def umount(target: str) -> None:
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise PlacementError(e, f"umount {target}: {os.strerror(e)}")


def unshare_mounts() -> None:
    """Enter a new mount namespace and make every mount in it private, so nothing done here
    propagates to the host (call before starting threads: unshare(CLONE_NEWNS) needs that)."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        e = ctypes.get_errno()
        raise PlacementError(e, f"unshare(CLONE_NEWNS): {os.strerror(e)}")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_points() -> List[str]:
    """Mount points of this namespace, in mount order (/proc/self/mountinfo)."""
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f if len(line.split()) > 4]


class Placement:
    """Placement(workdir=None): ``place(target, source)`` as often as needed, then ``undo()``."""

    def __init__(self, workdir: Optional[str] = None) -> None:
        self._workdir = workdir
        self._scratch: Optional[str] = None   # a tmpfs for the overlays' upper and work dirs
        self._scratch_created = False
        self._mounts: List[str] = []          # to detach, newest last
        self._overlays: List[str] = []        # overlaid directories
        self._count = 0

    # ------------------------------------------------------------------ public
    def place(self, target: str, source: str) -> None:
        """Make ``target`` show ``source`` (bind mount), creating ``target`` only inside an overlay."""
        target = os.path.abspath(target)
        is_dir = os.path.isdir(source)
        if os.path.lexists(target):
            if os.path.islink(target):
                raise PlacementError(errno.ELOOP, f"{target} is a symbolic link; not following it")
            if os.path.isdir(target) != is_dir:
                kind = "a directory" if is_dir else "a file"
                raise PlacementError(errno.EEXIST, f"{target} exists and is not {kind}")
        else:
            self._make_in_overlay(target, is_dir)
        _mount(source, target, None, MS_BIND)
        self._mounts.append(target)

    def undo(self) -> List[str]:
        """Detach everything, newest first; returns the errors (one line each), never raises."""
        errors = []
        for target in reversed(self._mounts):
            try:
                umount(target)
            except OSError as e:
                errors.append(str(e))
        self._mounts.clear()
        self._overlays.clear()
        if self._scratch_created and self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch = None
        self._scratch_created = False
        return errors

    # ------------------------------------------------------------------ internals
    def _inside_overlay(self, path: str) -> bool:
        return any(path == o or path.startswith(o.rstrip("/") + "/") for o in self._overlays)

    def _make_in_overlay(self, target: str, is_dir: bool) -> None:
        missing = []
        anc = os.path.dirname(target)
        while not os.path.isdir(anc):
            if os.path.lexists(anc):
                raise PlacementError(errno.ENOTDIR, f"{anc} exists and is not a directory")
            missing.append(anc)
            anc = os.path.dirname(anc)
        if not self._inside_overlay(anc):
            self._overlay(anc)
        for d in reversed(missing):
            os.mkdir(d, 0o755)
        if is_dir:
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))

    def _ensure_scratch(self) -> str:
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="tdxm-ovl-", dir=self._workdir)
            self._scratch_created = True
            _mount("tdxmodel", self._scratch, "tmpfs", 0, "mode=0700")
            self._mounts.append(self._scratch)
        return self._scratch

    def _overlay(self, directory: str) -> None:
        scratch = self._ensure_scratch()
        self._count += 1
        upper, work = os.path.join(scratch, f"u{self._count}"), os.path.join(scratch, f"w{self._count}")
        os.mkdir(upper)
        os.mkdir(work)
        prefix = directory.rstrip("/") + "/"
        below = [m for m in mount_points() if m.startswith(prefix)]
        # mounts under the directory: keep a handle on each before the overlay hides it
        held: List[Tuple[str, int]] = []
        try:
            for m in below:
                if any(m.startswith(p.rstrip("/") + "/") for p, _ in held):
                    continue  # carried by its parent's recursive bind
                held.append((m, os.open(m, os.O_PATH)))
            _mount("overlay", directory, "overlay", 0,
                   f"lowerdir={directory},upperdir={upper},workdir={work}")
            self._mounts.append(directory)
            self._overlays.append(directory)
            for m, fd in held:
                _mount(f"/proc/self/fd/{fd}", m, None, MS_BIND | MS_REC)
                self._mounts.append(m)
        finally:
            for _, fd in held:
                os.close(fd)
