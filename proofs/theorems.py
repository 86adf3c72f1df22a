"""The seven theorems, stated once and instantiated per driver generation.

Each ``theorem_<name>(spec)`` returns an ``Obligation`` whose claim is the statement in its docstring,
over the driver's encoded ioctl (``spec.ioctl``), with every environment decision (allocation
failures, user-copy faults at any byte, TDCALL status, signals, schedules) left free. A free byte
offset ``i`` / ``j`` stands for "every byte", which keeps the checks quantifier-free.

Unless stated otherwise, the TDCALL status on a driver path ranges over what TDG.MR.REPORT can
return (``module_leaves.report_statuses``), which theorem ``operand_checks`` proves of the leaf.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import z3

from proofs import abi as zabi
from proofs.abi import CMD_BITS
from proofs.engine import Obligation
from proofs.interleave import serialisation_claim
from proofs.module_leaves import operand_checks_claim, tdg_mr_report
from proofs.spec import DriverSpec
from proofs.symbolic import NON_DISCLOSING, Injection, Kind, Path, in_range
from tdxmodel import profiles as _profiles

A = zabi._abi
THEOREMS: Tuple[str, ...] = ("no_leak", "errno_contract", "no_silent_loss", "no_disclosure",
                             "status_mapping", "operand_checks", "serialisation")


def reaches_driver(spec: DriverSpec, cmd: z3.BitVecRef) -> z3.BoolRef:
    """The command is not one do_vfs_ioctl answers itself on the device node (ref §1 "Commands the VFS
    handles first"; profiles.VfsCommand): only those reach the driver this encoding mirrors."""
    return z3.And([cmd != z3.BitVecVal(v.cmd, CMD_BITS) for v in spec.p.vfs_commands])


def _ioctl(spec: DriverSpec) -> Tuple[Injection, Path]:
    """The encoded driver ioctl, for the commands that reach it (``reaches_driver``)."""
    inj = Injection()
    p = spec.ioctl(inj)
    p.assumptions.append(reaches_driver(spec, inj.cmd))
    return inj, p


def _vars(inj: Injection, p: Path, **extra: z3.ExprRef) -> Dict[str, z3.ExprRef]:
    out = inj.variables()
    out["ret"] = p.ret
    out.update(extra)
    return out


def _documented_returns(spec: DriverSpec, width: int) -> List[z3.BitVecRef]:
    return [z3.BitVecVal(0, width)] + [zabi.neg_errno(e, width) for e in spec.documented_errnos]


def theorem_no_leak(spec: DriverSpec) -> Obligation:
    """No leak: on every path of the ioctl, every buffer it allocated is freed exactly once and every
    lock it took is released; 6.16's report buffer and tsm-mr's attribute group are the documented
    exception: module init (tdx_mr_init) keeps each exactly when init succeeds and frees each it
    allocated when init fails."""
    inj, p = _ioctl(spec)
    claim = [z3.Not(p.leaked()), z3.Not(p.locks_unbalanced())]
    assumptions = list(p.assumptions)
    variables = _vars(inj, p)
    if spec.init is not None:
        init_inj = Injection(prefix="init.")
        init = spec.init(init_inj)
        for buf in init.path.buffers:
            kept = z3.And(buf.allocated, z3.Not(buf.freed))
            claim += [kept == (init.ret == 0), z3.Not(buf.double_freed)]
        assumptions += init.path.assumptions
        variables.update(init_inj.variables())
        variables["init.ret"] = init.ret
    return Obligation(z3.And(claim), assumptions, variables)


def theorem_errno_contract(spec: DriverSpec) -> Obligation:
    """Errno contract: the ioctl returns 0 or a -errno of the version's documented set; it returns 0
    if and only if the whole TDREPORT of this call reached the caller's buffer (every byte j of it at
    its documented offset); and a command the generation does not know, and the VFS does not answer
    before the driver (ref §1), gives -ENOTTY."""
    inj, p = _ioctl(spec)
    w = inj.reg_bits
    j = z3.BitVec("j", inj.off_bits)
    base = spec.tdreport_user_off
    whole_copied = z3.Or([z3.And(wr.guard, wr.count == wr.length) for wr in p.user_writes
                          if wr.what.endswith(":copy_to_user") and wr.length == A.TDX_REPORT_LEN]
                         + [z3.BoolVal(False)])
    claim = z3.And(
        z3.Or([p.ret == v for v in _documented_returns(spec, w)]),
        z3.Implies(z3.And(p.ret == 0, z3.ULT(j, A.TDX_REPORT_LEN)), p.user_after(base + j) == p.report(j)),
        z3.Implies(whole_copied, p.ret == 0),
        z3.Implies(z3.And([inj.cmd != z3.BitVecVal(c.value, CMD_BITS) for c in spec.p.commands]),
                   p.ret == zabi.neg_errno("ENOTTY", w)))
    after = p.user_after(base + j)
    return Obligation(claim, p.assumptions,
                      _vars(inj, p, j=j, user_kind_at_j=after.kind, user_index_at_j=after.index))


def theorem_no_silent_loss(spec: DriverSpec) -> Obligation:
    """No silent loss: when the ioctl fails, every byte i of the caller's memory is unchanged, except
    the documented writes (a prefix of this call's TDREPORT at its offset after a faulting copy-out,
    ref §7; v4's status word, ref §2.2 row 4); and whenever a write to the caller's memory faults,
    the ioctl reports it with -EFAULT."""
    inj, p = _ioctl(spec)
    w = inj.reg_bits
    i = z3.BitVec("i", inj.off_bits)
    after = p.user_after(i)
    base = spec.tdreport_user_off
    report_prefix = z3.And(in_range(i, base, A.TDX_REPORT_LEN), after == p.report(i - base))
    allowed = z3.Or(after.is_kind(Kind.ORIGINAL), report_prefix, spec.documented_failure_write(p, i, after))
    claim = z3.And(z3.Implies(p.ret != 0, allowed),
                   z3.Implies(p.user_write_failed, p.ret == zabi.neg_errno("EFAULT", w)))
    return Obligation(claim, p.assumptions,
                      _vars(inj, p, i=i, user_kind_at_i=after.kind, user_index_at_i=after.index,
                            user_write_failed=p.user_write_failed))


def theorem_no_disclosure(spec: DriverSpec) -> Obligation:
    """No disclosure: every byte i the ioctl writes to the caller's memory comes from the module's
    TDREPORT of this call, from the caller's own input, or (v4) from the status word; never from
    uninitialised or zero-filled kernel memory or an earlier report - under every fault, partial
    copies (ref §7) included."""
    inj, p = _ioctl(spec)
    i = z3.BitVec("i", inj.off_bits)
    after = p.user_after(i)
    claim = z3.Or([after.is_kind(Kind.ORIGINAL)] + [after.is_kind(k) for k in NON_DISCLOSING])
    return Obligation(claim, p.assumptions, _vars(inj, p, i=i, user_kind_at_i=after.kind,
                                                  user_index_at_i=after.index))


def reference_mapping(spec: DriverSpec, status: z3.BitVecRef) -> z3.BitVecRef:
    """The reference's status table for the version, as a term (ref §2.2 row 4, §2.4 row 4, §2.5)."""
    w = status.size()
    ret = -z3.BitVecVal(spec.reference_default, w)
    for cls, err in reversed(spec.reference_table):
        ret = z3.If(zabi.status_class(status) == z3.BitVecVal(cls, w), -z3.BitVecVal(err, w), ret)
    return z3.If(spec.reference_failing(status), ret, z3.BitVecVal(0, w))


def emulator_mapping(driver: str, status: z3.BitVecRef) -> z3.BitVecRef:
    """The generation's errno map (tdxmodel.profiles, read by tdxmodel.errors, the emulator's one
    translator) as a term."""
    w = status.size()
    prof = _profiles.get(driver)
    ret = -z3.BitVecVal(prof.errno_default, w)
    for cls, err in prof.errno_map:
        ret = z3.If(zabi.status_class(status) == cls, -z3.BitVecVal(err, w), ret)
    return z3.If(status == 0, z3.BitVecVal(0, w), ret)


def theorem_status_mapping(spec: DriverSpec, width: int = zabi.REG_BITS) -> Obligation:
    """Status mapping: for every 64-bit TDCALL status, the driver's mapping code yields a value of the
    documented set (total), equal to the reference's table for the version; and the emulator's
    translator (the profile's errno map) agrees with it for every status the module can
    produce (SUCCESS, or a nonzero class in bits 63:32, ref §4.1)."""
    status = z3.BitVec("status", width)
    code = spec.status_to_ret(status)
    in_module_domain = z3.Or(status == 0, zabi.status_class(status) != 0)
    claim = z3.And(code == reference_mapping(spec, status),
                   z3.Or([code == v for v in _documented_returns(spec, width)]),
                   z3.Implies(in_module_domain, code == emulator_mapping(spec.name, status)))
    return Obligation(claim, (), {"status": status, "ret": code,
                                  "reference_ret": reference_mapping(spec, status),
                                  "emulator_ret": emulator_mapping(spec.name, status)})


def theorem_operand_checks(spec: DriverSpec, width: int = zabi.REG_BITS) -> Obligation:
    """Operand checks (ref §4.3, §4.6): module_leaves.operand_checks_claim for all 64-bit operands;
    and the driver's own TDG.MR.REPORT operands - buffers naturally aligned by the allocator
    (ref §2.4 Analysis), private and inside guest memory, R8 = 0 - never get OPERAND_INVALID."""
    module_claim, variables = operand_checks_claim(width)
    pas = {}
    facts = []
    for operand, (align_name, offset) in spec.operand_layout.items():
        pa = z3.BitVec(f"pa({operand} buffer)", width)
        facts += [z3.URem(pa, zabi.bv(align_name, width)) == 0,
                  z3.ULT(pa + offset + A.TDX_REPORT_LEN, zabi.bv("TDX_GPA_SHARED_BIT", width)),
                  z3.ULT(pa, pa + offset + A.TDX_REPORT_LEN)]
        pas[operand] = pa + offset
        variables[f"pa({operand} buffer)"] = pa
    lock_free = z3.Bool("driver_rtmr_lock_free")
    leaf = tdg_mr_report(pas["rcx"], pas["rdx"], z3.BitVecVal(0, width), rdx_ept_ok=z3.BoolVal(True),
                         rcx_ept_ok=z3.BoolVal(True), rtmr_lock_free=lock_free)
    variables["driver_report_status"] = leaf.status
    driver_claim = z3.Implies(z3.And(facts),
                              zabi.status_class(leaf.status) != zabi.bv("LINUX_TDCALL_INVALID_OPERAND", width))
    return Obligation(z3.And(module_claim, driver_claim), (), variables)


def theorem_serialisation(spec: DriverSpec) -> Obligation:
    """Serialisation (ref §2.5 mr_lock, §4.8): over every interleaving of a driver-issued REPORT with
    an RTMR EXTEND (6.16: issued by the driver under mr_lock; earlier versions: a concurrent extender,
    there being no lock), the REPORT never meets OPERAND_BUSY|RTMR (so never returns the errno BUSY
    maps to)."""
    claim, both_done, variables = serialisation_claim(spec.has_mr_lock, spec.status_to_ret)
    return Obligation(claim, (both_done,), variables)


BUILDERS: Dict[str, Callable[[DriverSpec], Obligation]] = {
    "no_leak": theorem_no_leak,
    "errno_contract": theorem_errno_contract,
    "no_silent_loss": theorem_no_silent_loss,
    "no_disclosure": theorem_no_disclosure,
    "status_mapping": theorem_status_mapping,
    "operand_checks": theorem_operand_checks,
    "serialisation": theorem_serialisation,
}

