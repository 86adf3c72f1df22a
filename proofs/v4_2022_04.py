"""The v4 attestation patch of 22 Apr 2022 (ref §2.2): ``arch/x86/coco/tdx/attest.c``
``tdx_attest_ioctl`` / ``tdx_get_tdreport`` and the ``tdx_mcall_tdreport`` wrapper in ``tdx.c``.

One caller buffer: REPORTDATA is read from bytes 0..63 and the TDREPORT written over bytes 0..1023.
The encoding follows the reference's step table row by row, including the two defects reviewers
named (ref §2.2 "Review"): the default case returns 0, and the ``put_user`` result is ignored.
"""

from __future__ import annotations

import z3

from proofs import abi as zabi
from proofs.abi import CMD_BITS
from proofs.module_leaves import report_statuses
from proofs.spec import DriverSpec
from proofs.symbolic import Injection, Kind, Path, in_range
from tdxmodel import profiles as _profiles

A = zabi._abi
#: The generation's facts (request layout, command, errno map): tdxmodel.profiles.
P = _profiles.get("v4-2022-04")
REQ = P.report
STATUS_WORD_LEN = P.status_writeback.size   # put_user of a `long` (ref §2.2 row 4)


def tdx_mcall_tdreport(status: z3.BitVecRef) -> z3.BitVecRef:
    """tdx_mcall_tdreport wrapper result (ref §2.2): 0, or the status ANDed with 0xFFFFFFFF00000000
    (the pointers are never NULL on this path, so its -EINVAL cannot happen here)."""
    w = status.size()
    return z3.If(status != 0, status & zabi.bv("LINUX_V4_STATUS_MASK", w), z3.BitVecVal(0, w))


def status_to_ret(status: z3.BitVecRef) -> z3.BitVecRef:
    """What tdx_get_tdreport returns for a TDCALL status: -EIO for any nonzero wrapper result."""
    w = status.size()
    return z3.If(tdx_mcall_tdreport(status) != 0, zabi.neg_errno("EIO", w), z3.BitVecVal(0, w))


def tdx_get_tdreport(p: Path) -> None:
    """tdx_get_tdreport(argp): ref §2.2 rows 1-6."""
    w = p.inj.reg_bits
    reportdata = p.alloc("reportdata", A.TDX_REPORTDATA_LEN, point="reportdata:kmalloc",
                         capability="failslab", zeroed=False)                            # 1 kmalloc(64)
    p.return_if(z3.Not(reportdata.ok), zabi.neg_errno("ENOMEM", w))
    tdreport = p.alloc("tdreport", A.TDX_PAGE_SIZE, point="tdreport:get_zeroed_page",
                       capability="fail_page_alloc", zeroed=True)                        # 2 zeroed page
    p.goto_if(z3.Not(tdreport.ok), zabi.neg_errno("ENOMEM", w))
    not_copied = p.copy_from_user(reportdata, 0, REQ.field("reportdata").offset, A.TDX_REPORTDATA_LEN,
                                  point="reportdata:copy_from_user")                     # 3
    p.goto_if(not_copied != 0, zabi.neg_errno("EFAULT", w))
    status = p.tdcall_mr_report(tdreport, 0, reportdata, 0, report_statuses(w))           # 4
    ret = tdx_mcall_tdreport(status)
    p.assign_ret(ret)
    with p.when(ret != 0):
        # The uapi promised the error code back: put_user(ret, (long __user *)argp). Its result is
        # assigned and then overwritten by -EIO (ref §2.2 row 4; review: "the put_user result is ignored").
        p.put_user_status(P.status_writeback.offset, STATUS_WORD_LEN, point="status:put_user")
        p.assign_ret(zabi.neg_errno("EIO", w))
    p.goto_if(ret != 0)
    not_copied = p.copy_to_user(REQ.field("tdreport").offset, tdreport, 0, A.TDX_REPORT_LEN,
                                point="tdreport:copy_to_user")                           # 5
    with p.when(not_copied != 0):
        p.assign_ret(zabi.neg_errno("EFAULT", w))
    p.label()                                                                            # out:
    p.kfree(tdreport)                                                                    # 6 free_pages
    p.kfree(reportdata)
    p.finish()


def tdx_attest_ioctl(inj: Injection) -> Path:
    """tdx_attest_ioctl(file, cmd, arg): GET_TDREPORT, else only a "not supported" log and ret 0
    (ref §2.2 "Dispatch")."""
    p = Path(inj, "v4-2022-04 tdx_attest_ioctl")
    p.return_if(inj.cmd != z3.BitVecVal(REQ.value, CMD_BITS), z3.BitVecVal(0, inj.reg_bits))
    tdx_get_tdreport(p)
    return p


def _status_write(p: Path, i: z3.BitVecRef, after) -> z3.BoolRef:
    # ref §2.2 row 4: on a failing TDCALL, user bytes 0..7 get the wrapper result.
    return z3.And(in_range(i, 0, STATUS_WORD_LEN), after.is_kind(Kind.TDCALL_STATUS))


DRIVER = DriverSpec(
    profile="v4-2022-04",
    anchor="attest.c tdx_get_tdreport (v4 patch, 22 Apr 2022)",
    steps={"no_leak": "§2.2 rows 1-6", "errno_contract": "§2.2 Dispatch, rows 1-6",
           "no_silent_loss": "§2.2 row 4-5, §7", "no_disclosure": "§2.2 rows 1-5, §7",
           "status_mapping": "§2.2 row 4", "operand_checks": "§4.3, §4.6, §2.2 row 4",
           "serialisation": "§2.2 Review, §4.8"},
    ioctl=tdx_attest_ioctl,
    status_to_ret=status_to_ret,
    # ref §2.2 row 4: "nonzero result" of the wrapper, i.e. of status & 0xFFFFFFFF00000000.
    reference_failing=lambda status: (status & zabi.bv("TDX_STATUS_CLASS_MASK", status.size())) != 0,
    documented_failure_write=_status_write,
    operand_layout={"rcx": ("TDX_PAGE_SIZE", 0), "rdx": ("TDX_REPORTDATA_LEN", 0)},
)
