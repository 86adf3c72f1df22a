"""v6.16+ (ref §2.5): ``tdx-guest.c`` ``tdx_do_report`` under ``mr_lock`` with the report buffer
allocated once by ``tdx_mr_init``, and ``tdx.c`` ``tdx_mcall_get_report0`` returning -ENXIO/-EBUSY/-EIO.

The encoding follows the reference's step tables row by row (ioctl rows 1-5, init steps 1.1-1.3).
"""

from __future__ import annotations

import z3

from proofs import abi as zabi
from proofs.abi import CMD_BITS
from proofs.module_leaves import report_statuses
from proofs.spec import DriverSpec, InitPath
from proofs.symbolic import Injection, KBuf, Kind, Path, Prov
from tdxmodel import profiles as _profiles

A = zabi._abi
#: The generation's facts (request layout, command, errno map): tdxmodel.profiles.
P = _profiles.get("v6.16")
REQ = P.report
REPORTDATA_IN_BUF = A.TDR_OFF_REPORTDATA      # REPORTDATA is copied to tdx_report_buf + 128 (ref §2.5)


def tdx_mcall_get_report0(status: z3.BitVecRef) -> z3.BitVecRef:
    """tdx_mcall_get_report0 / tdx_mcall_extend_rtmr mapping since 9026983cd740 (ref §2.5 table)."""
    w = status.size()
    cls = zabi.status_class(status)
    return z3.If(status == 0, z3.BitVecVal(0, w),
                 z3.If(cls == zabi.bv("LINUX_TDCALL_INVALID_OPERAND", w), zabi.neg_errno("ENXIO", w),
                       z3.If(cls == zabi.bv("LINUX_TDCALL_OPERAND_BUSY", w), zabi.neg_errno("EBUSY", w),
                             zabi.neg_errno("EIO", w))))


def report_buf_after_init() -> KBuf:
    """tdx_report_buf as the ioctl finds it: allocated at init and holding the init-time report."""
    return KBuf("tdx_report_buf", A.TDX_REPORT_LEN, ok=z3.BoolVal(True), allocated=z3.BoolVal(False),
                content=lambda j: Prov.of(Kind.STALE_REPORT, j), resident=True)


def tdx_do_report(p: Path, report_buf: KBuf) -> None:
    """tdx_do_report(argp): ref §2.5 ioctl rows 1-5."""
    w = p.inj.reg_bits
    p.return_if(p.mutex_lock_interruptible("mr_lock"), zabi.neg_errno("EINTR", w))           # 1
    not_copied = p.copy_from_user(report_buf, REPORTDATA_IN_BUF, REQ.field("reportdata").offset,
                                  A.TDX_REPORTDATA_LEN, point="reportdata:copy_from_user")    # 2
    p.goto_if(not_copied != 0, zabi.neg_errno("EFAULT", w))
    status = p.tdcall_mr_report(report_buf, 0, report_buf, REPORTDATA_IN_BUF, report_statuses(w))  # 3
    ret = tdx_mcall_get_report0(status)
    p.assign_ret(ret)
    p.goto_if(ret != 0)                                                                      # + WARN_ONCE
    not_copied = p.copy_to_user(REQ.field("tdreport").offset, report_buf, 0, A.TDX_REPORT_LEN,
                                point="tdreport:copy_to_user")                               # 4
    with p.when(not_copied != 0):
        p.assign_ret(zabi.neg_errno("EFAULT", w))
    p.label()                                                                                # out:
    p.mutex_unlock("mr_lock")                                                                # 5
    p.finish()


def tdx_guest_ioctl(inj: Injection) -> Path:
    """tdx_guest_ioctl(file, cmd, arg): GET_REPORT0 or -ENOTTY (ref §2.4 "Dispatch", unchanged in 6.16)."""
    p = Path(inj, "v6.16 tdx_guest_ioctl")
    report_buf = report_buf_after_init()
    p.buffers.append(report_buf)
    p.return_if(inj.cmd != z3.BitVecVal(REQ.value, CMD_BITS), zabi.neg_errno("ENOTTY", inj.reg_bits))
    tdx_do_report(p, report_buf)
    return p


def tdx_mr_init(inj: Injection) -> InitPath:
    """tdx_mr_init (ref §2.5 "Init order" step 1): allocate the 1024-B zeroed buffer, then one REPORT
    with zero REPORTDATA, then tsm_mr_create_attribute_group's two kzallocs, both made before either
    is checked (tsm-mr.c @2fbe8203); a failure frees what was allocated and aborts module load."""
    p = Path(inj, "v6.16 tdx_mr_init")
    w = inj.reg_bits
    buf = p.alloc("tdx_report_buf", A.TDX_REPORT_LEN, point="report_buf:kzalloc", capability="failslab",
                  zeroed=True, resident=True)
    p.return_if(z3.Not(buf.ok), zabi.neg_errno("ENOMEM", w))
    status = p.tdcall_mr_report(buf, 0, buf, REPORTDATA_IN_BUF, report_statuses(w))
    ret = tdx_mcall_get_report0(status)
    with p.when(ret != 0):
        p.kfree(buf)
    p.return_if(ret != 0, ret)
    attrs = p.alloc("tsm_mr attrs", A.TSM_MR_ATTRS_SIZE, point="tsm_mr_attrs:kzalloc",
                    capability="failslab", zeroed=True, resident=True)                     # 1.3
    ctx = p.alloc("tsm_mr ctx", A.TSM_MR_CTX_SIZE, point="tsm_mr_ctx:kzalloc", capability="failslab",
                  zeroed=True, resident=True)
    failed = z3.Or(z3.Not(attrs.ok), z3.Not(ctx.ok))
    with p.when(failed):       # __free(kfree) of both (kfree(NULL) is a no-op), then tdx_mr_init's unwind
        p.kfree(attrs)
        p.kfree(ctx)
        p.kfree(buf)
    p.return_if(failed, zabi.neg_errno("ENOMEM", w))
    p.finish()
    return InitPath(p.ret, p)


DRIVER = DriverSpec(
    profile="v6.16",
    anchor="tdx-guest.c tdx_do_report (v6.16+, 9026983cd740)",
    steps={"no_leak": "§2.5 rows 1-5, Init", "errno_contract": "§2.5 rows 1-5",
           "no_silent_loss": "§2.5 rows 2-4, §7", "no_disclosure": "§2.5 rows 2-4, §7",
           "status_mapping": "§2.5 table", "operand_checks": "§4.3, §4.6, §2.5 row 3",
           "serialisation": "§2.5 mr_lock, §4.8"},
    ioctl=tdx_guest_ioctl,
    status_to_ret=tdx_mcall_get_report0,
    reference_failing=lambda status: status != 0,
    init=tdx_mr_init,
    operand_layout={"rcx": ("TDX_REPORT_LEN", 0), "rdx": ("TDX_REPORT_LEN", REPORTDATA_IN_BUF)},
)
