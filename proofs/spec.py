"""What a driver-generation encoding provides to the theorems (``proofs.theorems``).

Each driver module (``proofs.v4_2022_04``, ``proofs.v6_2``, ``proofs.v6_16``) defines one ``DRIVER``:
the encoded ioctl entry point (mirroring the C step by step), its status-to-errno code, and the facts
the reference documents for it (errno set, documented writes, the reference's status table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import z3

from proofs.symbolic import Injection, Path, Prov


@dataclass(frozen=True)
class DriverSpec:
    name: str                                  # tdxmodel.abi.DRIVERS spelling
    ref: str                                   # the reference section of its ioctl step table
    anchor: str                                # code anchor: file and function the encoding mirrors
    report_cmd: str                            # tdxmodel.abi name of the report ioctl number
    user_len: int                              # bytes of the caller's buffer the ioctl uses
    tdreport_user_off: int                     # where the TDREPORT lands in the caller's buffer
    documented_errnos: Tuple[str, ...]         # the ioctl's documented -errno set (0 is implied)
    ioctl: Callable[[Injection], Path]         # the encoded entry point
    status_to_ret: Callable[[z3.BitVecRef], z3.BitVecRef]   # the driver's own mapping code
    reference_table: Tuple[Tuple[str, str], ...]             # ref: (status class name, errno name)
    reference_default: str                     # ref: errno of any other failing status
    reference_failing: Callable[[z3.BitVecRef], z3.BoolRef]  # ref: which statuses the driver treats as failure
    has_mr_lock: bool
    # Writes the reference documents on a failing call, besides a copy-out prefix (ref §7):
    # (path, i, byte provenance after the call) -> allowed.
    documented_failure_write: Callable[[Path, z3.BitVecRef, Prov], z3.BoolRef] = \
        lambda p, i, after: z3.BoolVal(False)
    init: Optional[Callable[[Injection], "InitPath"]] = None
    # Allocation alignment the driver relies on for its TDCALL operands (ref §2.4 Analysis):
    # operand -> (buffer allocation alignment name, offset within the buffer)
    operand_layout: Dict[str, Tuple[str, int]] = field(default_factory=dict)


@dataclass
class InitPath:
    """A module-load path (6.16's tdx_mr_init): its return value and what stays allocated."""

    ret: z3.BitVecRef
    path: Path
