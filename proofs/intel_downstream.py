"""Intel's out-of-tree tdx-guest driver (quote.md §2.6; ref §1): ``intel/td-partitioning``
``drivers/virt/coco/tdx-guest/tdx-guest.c`` @1b3c1894 ``tdx_guest_ioctl`` / ``tdx_get_report0`` and
``arch/x86/coco/tdx/tdx.c`` @01e17622 ``tdx_mcall_get_report0``.

Its GET_REPORT0 path is the upstream 6.2 function row for row (ref §2.4 rows 1-6; the status mapping
is the same INVALID_OPERAND -> -EINVAL, else -EIO), so the encoding reuses ``proofs.v6_2``'s body on
this generation's request layout. Scope: the theorems speak about the report ioctl and commands the
driver does not know; TDX_CMD_VERIFY_REPORT and TDX_CMD_EXTEND_RTMR are other step tables, assumed
away here and covered row by row by tests/test_driver_intel_downstream.py on both backends.
"""

from __future__ import annotations

import z3

from proofs import abi as zabi
from proofs import v6_2
from proofs.abi import CMD_BITS
from proofs.spec import DriverSpec
from proofs.symbolic import Injection, Path
from tdxmodel import profiles as _profiles

#: The generation's facts (request layout, commands, errno map): tdxmodel.profiles.
P = _profiles.get("intel-downstream")
REQ = P.report
assert REQ.fields == _profiles.get("v6.2").report.fields, "GET_REPORT0's struct is upstream's"


def tdx_guest_ioctl(inj: Injection) -> Path:
    """tdx_guest_ioctl(file, cmd, arg): GET_REPORT0 or -ENOTTY; the other known commands are out of
    this encoding's scope (module docstring)."""
    p = Path(inj, "intel-downstream tdx_guest_ioctl")
    p.assumptions += [inj.cmd != z3.BitVecVal(c.value, CMD_BITS) for c in P.commands[1:]]
    p.return_if(inj.cmd != z3.BitVecVal(REQ.value, CMD_BITS), zabi.neg_errno("ENOTTY", inj.reg_bits))
    v6_2.tdx_get_report0(p)
    return p


DRIVER = DriverSpec(
    profile="intel-downstream",
    anchor="td-partitioning tdx-guest.c tdx_get_report0 (@1b3c1894)",
    steps={"no_leak": "§2.4 rows 1-6 (quote.md §2.6)", "errno_contract": "§2.4 Dispatch, rows 1-6",
           "no_silent_loss": "§2.4 rows 4-5, §7", "no_disclosure": "§2.4 rows 1-5, §7",
           "status_mapping": "§2.4 row 4", "operand_checks": "§4.3, §4.6, §2.4 Alignment",
           "serialisation": "§4.8; quote.md §2.6 (no lock on REPORT)"},
    ioctl=tdx_guest_ioctl,
    status_to_ret=v6_2.tdx_mcall_get_report0,
    reference_failing=lambda status: status != 0,
    operand_layout={"rcx": ("TDX_REPORT_LEN", 0), "rdx": ("TDX_REPORTDATA_LEN", 0)},
)
