"""What a driver-generation encoding provides to the theorems (``proofs.theorems``).

Each driver module (``proofs.v4_2022_04``, ``proofs.v6_2``, ``proofs.v6_16``) defines one ``DRIVER``:
its z3 callables (the encoded ioctl entry point, mirroring the C step by step, and its status-to-errno
code) beside its generation's profile (``tdxmodel.profiles``), which holds the facts: the request
layout, the documented errno set, the status table, the locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import z3

from proofs.symbolic import Injection, Path, Prov
from tdxmodel import profiles as _profiles


@dataclass(frozen=True)
class DriverSpec:
    """The z3 callables of one generation; its facts come from its profile (tdxmodel.profiles)."""

    profile: str                               # the tdxmodel.profiles name
    anchor: str                                # code anchor: file and function the encoding mirrors
    steps: Dict[str, str]                      # theorem -> the reference rows it covers
    ioctl: Callable[[Injection], Path]         # the encoded entry point
    status_to_ret: Callable[[z3.BitVecRef], z3.BitVecRef]   # the driver's own mapping code
    reference_failing: Callable[[z3.BitVecRef], z3.BoolRef]  # ref: which statuses the driver treats as failure
    # Writes the reference documents on a failing call, besides a copy-out prefix (ref §7):
    # (path, i, byte provenance after the call) -> allowed.
    documented_failure_write: Callable[[Path, z3.BitVecRef, Prov], z3.BoolRef] = \
        lambda p, i, after: z3.BoolVal(False)
    init: Optional[Callable[[Injection], "InitPath"]] = None
    # Allocation alignment the driver relies on for its TDCALL operands (ref §2.4 Analysis):
    # operand -> (buffer allocation alignment name, offset within the buffer)
    operand_layout: Dict[str, Tuple[str, int]] = field(default_factory=dict)
    # A mutant (proofs/expected_sat) may state a fact other than its profile's: property -> value.
    override: Dict[str, Any] = field(default_factory=dict)

    # -- from the profile (unless overridden) -----------------------------------------------------------------------
    @property
    def p(self) -> _profiles.Profile:
        return _profiles.get(self.profile)

    @property
    def name(self) -> str:
        return self.profile

    @property
    def ref(self) -> str:                      # the reference section of its ioctl step table
        return self.p.ref

    @property
    def report_cmd(self) -> str:               # tdxmodel.abi name of the report ioctl number
        return self.p.report.name

    @property
    def user_len(self) -> int:                 # bytes of the caller's buffer the ioctl uses
        return self.p.report.request_len

    @property
    def tdreport_user_off(self) -> int:        # where the TDREPORT lands in the caller's buffer
        return self.p.report.field("tdreport").offset

    @property
    def documented_errnos(self) -> Tuple[str, ...]:   # the ioctl's documented -errno set (0 implied)
        if "documented_errnos" in self.override:
            return self.override["documented_errnos"]
        return self.p.errno_names(self.p.report_errnos)

    @property
    def reference_table(self) -> Tuple[Tuple[int, int], ...]:   # (status class, errno)
        if "reference_table" in self.override:
            return self.override["reference_table"]
        return self.p.errno_map

    @property
    def reference_default(self) -> int:        # errno of any other failing status
        if "reference_default" in self.override:
            return self.override["reference_default"]
        return self.p.errno_default

    @property
    def has_mr_lock(self) -> bool:
        if "has_mr_lock" in self.override:
            return self.override["has_mr_lock"]
        return self.p.has_lock("mr_lock")


@dataclass
class InitPath:
    """A module-load path (6.16's tdx_mr_init): its return value and what stays allocated."""

    ret: z3.BitVecRef
    path: Path
