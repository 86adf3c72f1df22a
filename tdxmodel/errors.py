"""The one translator from TDX statuses and kernel errnos to Python exceptions (layer 0).

Every exception tdxmodel raises for a TDX status or an emulated errno is a ``TdxError`` (an
``OSError``) carrying ``.errno`` (or None where no kernel errno applies), ``.status`` (the 64-bit
TDX status, or None) and ``.operand_id`` (bits 31:0 of the status for the operand classes, or None).
Callers branch on those attributes or on the class, never on message text.

A TD exit (EPT violation) or a #VE is not a status (ref §4.3 step 3b): it raises ``TdExit``.
"""

from __future__ import annotations

import errno as _errno
import os as _os
from typing import Dict, Optional, Tuple, Type

from tdxmodel import abi
from tdxmodel import profiles as _profiles


class TdxError(OSError):
    """A TDX status or an emulated kernel errno, as an OSError."""

    def __init__(self, message: str, *, errno: Optional[int] = None, status: Optional[int] = None,
                 operand_id: Optional[int] = None) -> None:
        if errno is not None:
            super().__init__(errno, message)
        else:
            super().__init__(message)
        self.errno = errno
        self.status = status
        self.operand_id = operand_id
        self._message = message

    def __str__(self) -> str:
        return self._message

    def __reduce__(self):  # picklable across processes (the daemon, multiprocessing tests)
        return (_rebuild, (type(self), self._message, self.errno, self.status, self.operand_id))


def _rebuild(cls, message, errno, status, operand_id):
    return cls(message, errno=errno, status=status, operand_id=operand_id)


class OperandInvalid(TdxError):
    """TDX_OPERAND_INVALID + operand id (ref §4.2)."""


class OperandBusy(TdxError):
    """TDX_OPERAND_BUSY + operand id (ref §4.2, §4.8)."""


class InvalidCpuSvn(TdxError):
    """TDX_INVALID_CPUSVN from TDG.MR.VERIFYREPORT (ref §4.7)."""


class InvalidReportMacStruct(TdxError):
    """TDX_INVALID_REPORTMACSTRUCT from TDG.MR.VERIFYREPORT (ref §4.7)."""


class UnknownStatus(TdxError):
    """A nonzero status tdxmodel has no name for."""


class KernelError(TdxError):
    """An emulated syscall returned -errno."""


class Interrupted(KernelError, InterruptedError):
    """-EINTR: an interruptible lock was interrupted by a signal (ref §2.5)."""


class UserCopyFault(KernelError):
    """-EFAULT: a user copy faulted (ref §2, §7)."""


class KernelOops(KernelError):
    """The emulated kernel dereferenced a NULL pointer (<= 6.15 configfs-tsm `provider` after the
    provider unregistered, quote.md §1.7): the syscall has no return value."""


class TaskHung(KernelError):
    """The emulated task would wait forever in an uninterruptible ``mutex_lock``: the lock's holder
    returned to user space with it (v4 3/3's early returns keep quote_lock held, ref §2.2; lockdep's
    "lock held when returning to user space"). The syscall never returns; the emulator says so instead
    of hanging the caller."""


class TdExit(Exception):
    """The TDCALL did not complete: the CPU left the TD before writing RAX (ref §4.3 step 3b)."""

    kind = "exit"

    def __init__(self, gpa: int) -> None:
        super().__init__(f"{self.kind} at GPA 0x{gpa:x}")
        self.gpa = gpa


class EptViolation(TdExit):
    """EPT-violation TD exit to the VMM: the GPA is not mapped (or mapped with the other alias)."""

    kind = "EPT violation"


class VirtualizationException(TdExit):
    """#VE injected into the guest: the page is PENDING and SEPT_VE_DISABLE is clear."""

    kind = "#VE"


_STATUS_CLASSES: Dict[int, Tuple[Type[TdxError], str]] = {
    abi.status_class(abi.TDX_OPERAND_INVALID): (OperandInvalid, "TDX_OPERAND_INVALID"),
    abi.status_class(abi.TDX_OPERAND_BUSY): (OperandBusy, "TDX_OPERAND_BUSY"),
    abi.status_class(abi.TDX_INVALID_CPUSVN): (InvalidCpuSvn, "TDX_INVALID_CPUSVN"),
    abi.status_class(abi.TDX_INVALID_REPORTMACSTRUCT): (InvalidReportMacStruct, "TDX_INVALID_REPORTMACSTRUCT"),
}
_OPERAND_CLASSES = {abi.status_class(abi.TDX_OPERAND_INVALID), abi.status_class(abi.TDX_OPERAND_BUSY)}
OPERAND_NAMES: Dict[int, str] = {
    abi.TDX_OPERAND_ID_RAX: "RAX", abi.TDX_OPERAND_ID_RCX: "RCX", abi.TDX_OPERAND_ID_RDX: "RDX",
    abi.TDX_OPERAND_ID_R8: "R8", abi.TDX_OPERAND_ID_RTMR: "RTMR",
}

def status_errno(status: int, profile: str) -> int:
    """The errno (positive) driver generation ``profile`` maps a nonzero TDCALL status to, or 0 for
    success: the generation's errno map (``tdxmodel.profiles``; ref §2.2, §2.4, §2.5)."""
    return _profiles.get(profile).status_errno(status)


def describe_status(status: int) -> str:
    cls = abi.status_class(status)
    entry = _STATUS_CLASSES.get(cls)
    name = entry[1] if entry else f"status 0x{status:016X}"
    if cls in _OPERAND_CLASSES:
        op = abi.status_operand(status)
        name += f" (operand {OPERAND_NAMES.get(op, op)})"
    return name


def status_exception(status: int, *, profile: Optional[str] = None, leaf: Optional[str] = None) -> TdxError:
    """The exception for a nonzero 64-bit TDX status; with a driver ``profile``, ``.errno`` is the
    errno that generation returns for it."""
    if status == abi.TDX_SUCCESS:
        raise ValueError("TDX_SUCCESS is not an error")
    cls = abi.status_class(status)
    exc_type, _ = _STATUS_CLASSES.get(cls, (UnknownStatus, ""))
    operand = abi.status_operand(status) if cls in _OPERAND_CLASSES else None
    err = status_errno(status, profile) if profile is not None else None
    where = f"{leaf}: " if leaf else ""
    return exc_type(f"{where}{describe_status(status)}", errno=err, status=status, operand_id=operand)


def check_status(status: int, *, profile: Optional[str] = None, leaf: Optional[str] = None) -> int:
    """Return ``status`` if it is TDX_SUCCESS, else raise its exception."""
    if status != abi.TDX_SUCCESS:
        raise status_exception(status, profile=profile, leaf=leaf)
    return status


_ERRNO_CLASSES: Dict[int, Type[KernelError]] = {abi.EINTR: Interrupted, abi.EFAULT: UserCopyFault}


def errno_exception(err: int, what: str = "", *, status: Optional[int] = None) -> KernelError:
    """The exception for an emulated syscall that returned ``-err``."""
    if err <= 0:
        raise ValueError(f"errno must be positive, got {err}")
    exc_type = _ERRNO_CLASSES.get(err, KernelError)
    name = _errno.errorcode.get(err, str(err))
    text = f"{name} ({_os.strerror(err)})"
    msg = f"{what}: {text}" if what else text
    operand = abi.status_operand(status) if status is not None and \
        abi.status_class(status) in _OPERAND_CLASSES else None
    return exc_type(msg, errno=err, status=status, operand_id=operand)


def check_ret(ret: int, what: str = "", *, status: Optional[int] = None) -> int:
    """Return ``ret`` if it is >= 0 (a syscall-like result), else raise for ``-ret``."""
    if ret < 0:
        raise errno_exception(-ret, what, status=status)
    return ret
