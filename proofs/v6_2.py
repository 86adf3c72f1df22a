"""Upstream v6.2-v6.15 ``TDX_CMD_GET_REPORT0`` (ref §2.4): ``drivers/virt/coco/tdx-guest/tdx-guest.c``
``tdx_guest_ioctl`` / ``tdx_get_report0`` and ``arch/x86/coco/tdx/tdx.c`` ``tdx_mcall_get_report0``.

The encoding below follows the reference's step table row by row (the numbers are its rows). It is
written fresh from the reference's description, not from the GPL source.
"""

from __future__ import annotations

import z3

from proofs import abi as zabi
from proofs.abi import CMD_BITS
from proofs.module_leaves import report_statuses
from proofs.spec import DriverSpec
from proofs.symbolic import Injection, Path
from tdxmodel import profiles as _profiles

A = zabi._abi
#: The generation's facts (request layout, command, errno map): tdxmodel.profiles.
P = _profiles.get("v6.2")
REQ = P.report
REQ_OFF_REPORTDATA = REQ.field("reportdata").offset
REQ_OFF_TDREPORT = REQ.field("tdreport").offset


def tdx_mcall_get_report0(status: z3.BitVecRef) -> z3.BitVecRef:
    """tdx_mcall_get_report0 status mapping (ref §2.4 row 4): the class is compared after ``>> 32``."""
    w = status.size()
    return z3.If(status == 0, z3.BitVecVal(0, w),
                 z3.If(zabi.status_class(status) == zabi.bv("LINUX_TDCALL_INVALID_OPERAND", w),
                       zabi.neg_errno("EINVAL", w), zabi.neg_errno("EIO", w)))


def tdx_get_report0(p: Path) -> None:
    """tdx_get_report0(argp): ref §2.4 rows 1-6."""
    w = p.inj.reg_bits
    reportdata = p.alloc("reportdata", A.TDX_REPORTDATA_LEN, point="reportdata:kmalloc",
                         capability="failslab", zeroed=False)                            # 1 kmalloc(64)
    p.return_if(z3.Not(reportdata.ok), zabi.neg_errno("ENOMEM", w))
    tdreport = p.alloc("tdreport", A.TDX_REPORT_LEN, point="tdreport:kzalloc",
                       capability="failslab", zeroed=True)                               # 2 kzalloc(1024)
    p.goto_if(z3.Not(tdreport.ok), zabi.neg_errno("ENOMEM", w))
    not_copied = p.copy_from_user(reportdata, 0, REQ_OFF_REPORTDATA, A.TDX_REPORTDATA_LEN,
                                  point="reportdata:copy_from_user")                     # 3
    p.goto_if(not_copied != 0, zabi.neg_errno("EFAULT", w))
    status = p.tdcall_mr_report(tdreport, 0, reportdata, 0, report_statuses(w))           # 4
    ret = tdx_mcall_get_report0(status)
    p.assign_ret(ret)
    p.goto_if(ret != 0)
    not_copied = p.copy_to_user(REQ_OFF_TDREPORT, tdreport, 0, A.TDX_REPORT_LEN,
                                point="tdreport:copy_to_user")                           # 5
    with p.when(not_copied != 0):
        p.assign_ret(zabi.neg_errno("EFAULT", w))
    p.label()                                                                            # out:
    p.kfree(tdreport)                                                                    # 6
    p.kfree(reportdata)
    p.finish()


def tdx_guest_ioctl(inj: Injection) -> Path:
    """tdx_guest_ioctl(file, cmd, arg): GET_REPORT0 or -ENOTTY (ref §2.4 "Dispatch")."""
    p = Path(inj, "v6.2 tdx_guest_ioctl")
    p.return_if(inj.cmd != z3.BitVecVal(REQ.value, CMD_BITS), zabi.neg_errno("ENOTTY", inj.reg_bits))
    tdx_get_report0(p)
    return p


DRIVER = DriverSpec(
    profile="v6.2",
    anchor="tdx-guest.c tdx_get_report0 (v6.2-v6.15)",
    steps={"no_leak": "§2.4 rows 1-6", "errno_contract": "§2.4 Dispatch, rows 1-6",
           "no_silent_loss": "§2.4 rows 4-5, §7", "no_disclosure": "§2.4 rows 1-5, §7",
           "status_mapping": "§2.4 row 4", "operand_checks": "§4.3, §4.6, §2.4 Alignment",
           "serialisation": "§2.4 (no lock), §4.8"},
    ioctl=tdx_guest_ioctl,
    status_to_ret=tdx_mcall_get_report0,
    reference_failing=lambda status: status != 0,
    operand_layout={"rcx": ("TDX_REPORT_LEN", 0), "rdx": ("TDX_REPORTDATA_LEN", 0)},
)
