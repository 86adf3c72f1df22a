"""Wrong and fixed variants of the encodings: (name, theorem, spec or obligation builder, anchor).

Each ``Mutant`` names the theorem it must break and where the defect comes from; ``FIXED`` lists
variants that repair a real defect and must therefore prove the theorems the original fails.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, List

import z3

from proofs import abi as zabi
from proofs import module_leaves, v4_2022_04, v6_2, v6_16
from proofs.abi import CMD_BITS
from proofs.engine import Obligation
from proofs.module_leaves import _Checks, _gpa_invalid, _misaligned, _with_operand, report_statuses
from proofs.spec import DriverSpec
from proofs.symbolic import Injection, Path
from proofs.theorems import BUILDERS

A = zabi._abi
REQ_RD, REQ_TDR = A.TDX_REPORT_REQ_OFF_REPORTDATA, A.TDX_REPORT_REQ_OFF_TDREPORT


@dataclass(frozen=True)
class Mutant:
    name: str
    theorem: str
    anchor: str
    obligation: Callable[[], Obligation]


def _v62_variant(name: str, body: Callable[[Path], None]) -> DriverSpec:
    def ioctl(inj: Injection) -> Path:
        p = Path(inj, name)
        p.return_if(inj.cmd != zabi.bv("TDX_CMD_GET_REPORT0", CMD_BITS), zabi.neg_errno("ENOTTY", inj.reg_bits))
        body(p)
        return p
    return dataclasses.replace(v6_2.DRIVER, ioctl=ioctl)


def _v62_body(*, free_on_copy_fault: bool = True, check_copy_in: bool = True,
              copy_before_status: bool = False, check_copy_out: bool = True,
              status_to_user: bool = False) -> Callable[[Path], None]:
    def body(p: Path) -> None:
        w = p.inj.reg_bits
        reportdata = p.alloc("reportdata", A.TDX_REPORTDATA_LEN, point="reportdata:kmalloc",
                             capability="failslab", zeroed=False)
        p.return_if(z3.Not(reportdata.ok), zabi.neg_errno("ENOMEM", w))
        tdreport = p.alloc("tdreport", A.TDX_REPORT_LEN, point="tdreport:kzalloc",
                           capability="failslab", zeroed=True)
        p.goto_if(z3.Not(tdreport.ok), zabi.neg_errno("ENOMEM", w))
        not_copied = p.copy_from_user(reportdata, 0, REQ_RD, A.TDX_REPORTDATA_LEN,
                                      point="reportdata:copy_from_user")
        if check_copy_in:
            p.goto_if(not_copied != 0, zabi.neg_errno("EFAULT", w))
        status = p.tdcall_mr_report(tdreport, 0, reportdata, 0, report_statuses(w))
        ret = v6_2.tdx_mcall_get_report0(status)
        if copy_before_status:   # cf. v4 3/3 GetQuote: "copied back before the status is checked" (ref §2.2)
            p.copy_to_user(REQ_TDR, tdreport, 0, A.TDX_REPORT_LEN, point="tdreport:copy_to_user")
        p.assign_ret(ret)
        if status_to_user:       # v4's uapi promise carried over: the status back at arg+0
            with p.when(ret != 0):
                p.put_user_status(0, v4_2022_04.STATUS_WORD_LEN, point="status:put_user")
        p.goto_if(ret != 0)
        if not copy_before_status and not check_copy_out:
            p.copy_to_user(REQ_TDR, tdreport, 0, A.TDX_REPORT_LEN, point="tdreport:copy_to_user")   # result dropped
        elif not copy_before_status:
            not_copied = p.copy_to_user(REQ_TDR, tdreport, 0, A.TDX_REPORT_LEN, point="tdreport:copy_to_user")
            if free_on_copy_fault:
                with p.when(not_copied != 0):
                    p.assign_ret(zabi.neg_errno("EFAULT", w))
            else:
                p.return_if(not_copied != 0, zabi.neg_errno("EFAULT", w))   # early return skips out:
        p.label()
        p.kfree(tdreport)
        p.kfree(reportdata)
        p.finish()
    return body


def _report_r8_before_rdx(rcx, rdx, r8, *, rdx_ept_ok, rcx_ept_ok, rtmr_lock_free):
    """TDG.MR.REPORT with rows 2-4 in the wrong order (R8 checked before RDX)."""
    w = rcx.size()
    c = _Checks(w)
    c.fail_if(_misaligned(rcx, "TDX_REPORT_ALIGN"), _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_RCX", w))
    c.fail_if(r8 != 0, _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_R8", w))
    c.fail_if(_misaligned(rdx, "TDX_REPORTDATA_ALIGN"), _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_RDX", w))
    c.fail_if(_gpa_invalid(rdx), _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_RDX", w))
    c.exit_if(z3.Not(rdx_ept_ok))
    c.fail_if(z3.Not(rtmr_lock_free), _with_operand("TDX_OPERAND_BUSY", "TDX_OPERAND_ID_RTMR", w))
    c.fail_if(_gpa_invalid(rcx), _with_operand("TDX_OPERAND_INVALID", "TDX_OPERAND_ID_RCX", w))
    c.exit_if(z3.Not(rcx_ept_ok))
    return c.result("9")


def _operand_obligation(report_leaf) -> Obligation:
    claim, variables = module_leaves.operand_checks_claim(report_leaf=report_leaf)
    return Obligation(claim, (), variables)


MUTANTS: List[Mutant] = [
    Mutant("v6.2 early return on a copy-out fault", "no_leak",
           "a cleanup path skipped (ref §2.4 row 5: 'both freed')",
           lambda: BUILDERS["no_leak"](_v62_variant("leaky", _v62_body(free_on_copy_fault=False)))),
    Mutant("v6.2 copy_from_user result ignored", "no_disclosure",
           "ref §7: copy_from_user zero-fills what it did not copy; ignoring it sends kernel bytes out",
           lambda: BUILDERS["no_disclosure"](_v62_variant("unchecked", _v62_body(check_copy_in=False)))),
    Mutant("v6.2 copies out before checking the status", "no_disclosure",
           "ref §2.2 v4 3/3 GetQuote: 'the buffer is copied back before the status is checked'",
           lambda: BUILDERS["no_disclosure"](_v62_variant("early copy", _v62_body(copy_before_status=True)))),
    Mutant("v6.2 copy_to_user result ignored", "errno_contract",
           "ref §2.4 row 5: a faulting copy-out is -EFAULT; returning 0 claims a TDREPORT that did not arrive",
           lambda: BUILDERS["errno_contract"](_v62_variant("unchecked out", _v62_body(check_copy_out=False)))),
    Mutant("v6.2 copy_to_user result ignored", "no_silent_loss",
           "ref §7: a partial copy-out leaves a prefix; unreported, the caller trusts a torn TDREPORT",
           lambda: BUILDERS["no_silent_loss"](_v62_variant("unchecked out", _v62_body(check_copy_out=False)))),
    Mutant("v6.2 writing the status back (v4's uapi promise)", "no_silent_loss",
           "ref §2.4 row 4: 'user untouched'; v4 wrote bytes 0..7 (ref §2.2 row 4), 6.2 documents no such write",
           lambda: BUILDERS["no_silent_loss"](_v62_variant("status out", _v62_body(status_to_user=True)))),
    Mutant("v6.16 with the v6.15 errno table (no OPERAND_BUSY row)", "status_mapping",
           "style.md lesson 11: 'an errno table without OPERAND_BUSY'; ref §2.5 table",
           lambda: BUILDERS["status_mapping"](dataclasses.replace(v6_16.DRIVER,
                                                                  status_to_ret=v6_2.tdx_mcall_get_report0))),
    Mutant("v6.16 without mr_lock (as 6.15)", "serialisation",
           "ref §2.5 'mr_lock serialises every REPORT and EXTEND'; ref §4.8 'Linux <=6.15'",
           lambda: BUILDERS["serialisation"](dataclasses.replace(v6_16.DRIVER, override={"has_mr_lock": False}))),
    Mutant("TDG.MR.REPORT checking R8 before RDX", "operand_checks",
           "ref §4.3 check order rows 1-4",
           lambda: _operand_obligation(_report_r8_before_rdx)),
]


# --------------------------------------------------------------------------- v4, as reviewers asked
def _v4_fixed_ioctl(inj: Injection) -> Path:
    """v4 with the two review fixes (ref §2.2 Review): the default case fails with -ENOTTY, and a
    faulting put_user is reported as -EFAULT."""
    p = Path(inj, "v4 fixed")
    w = inj.reg_bits
    p.return_if(inj.cmd != zabi.bv("TDX_CMD_GET_TDREPORT", CMD_BITS), zabi.neg_errno("ENOTTY", w))
    reportdata = p.alloc("reportdata", A.TDX_REPORTDATA_LEN, point="reportdata:kmalloc",
                         capability="failslab", zeroed=False)
    p.return_if(z3.Not(reportdata.ok), zabi.neg_errno("ENOMEM", w))
    tdreport = p.alloc("tdreport", A.TDX_PAGE_SIZE, point="tdreport:get_zeroed_page",
                       capability="fail_page_alloc", zeroed=True)
    p.goto_if(z3.Not(tdreport.ok), zabi.neg_errno("ENOMEM", w))
    not_copied = p.copy_from_user(reportdata, 0, 0, A.TDX_REPORTDATA_LEN,
                                  point="reportdata:copy_from_user")
    p.goto_if(not_copied != 0, zabi.neg_errno("EFAULT", w))
    status = p.tdcall_mr_report(tdreport, 0, reportdata, 0, report_statuses(w))
    ret = v4_2022_04.tdx_mcall_tdreport(status)
    p.assign_ret(ret)
    with p.when(ret != 0):
        faulted = p.put_user_status(0, v4_2022_04.STATUS_WORD_LEN, point="status:put_user")
        p.assign_ret(z3.If(faulted, zabi.neg_errno("EFAULT", w), zabi.neg_errno("EIO", w)))
    p.goto_if(ret != 0)
    not_copied = p.copy_to_user(0, tdreport, 0, A.TDX_REPORT_LEN, point="tdreport:copy_to_user")
    with p.when(not_copied != 0):
        p.assign_ret(zabi.neg_errno("EFAULT", w))
    p.label()
    p.kfree(tdreport)
    p.kfree(reportdata)
    p.finish()
    return p


V4_FIXED = dataclasses.replace(v4_2022_04.DRIVER, ioctl=_v4_fixed_ioctl,
                               override={"documented_errnos": v4_2022_04.DRIVER.documented_errnos + ("ENOTTY",)})
#: (variant, theorems it must prove)
FIXED = [(V4_FIXED, ("no_leak", "errno_contract", "no_silent_loss", "no_disclosure"))]
