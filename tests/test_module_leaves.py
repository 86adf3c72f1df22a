"""The TDX module leaves, row by row of the reference's check tables, on both backends.

TDG.MR.REPORT (ref §4.3), TDG.MR.RTMR.EXTEND (ref §4.6), TDG.MR.VERIFYREPORT (ref §4.7), the TDCALL
dispatch (ref §4.1), the TDREPORT layout, hashes and MAC (ref §4.4, §4.5), and the host-buffer API
of docs/CONTRACT.md. Every table row names the reference row it exercises; error rows also check that
nothing was written.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest

from tdxmodel import abi, errors
from tdxmodel.config import ModuleConfig

PAGE = abi.TDX_PAGE_SIZE
SHARED = abi.TDX_GPA_SHARED_BIT
MEMORY_PAGES = 64

# Guest layout used by every test (pages 16.. as the kernel model would own them).
OUT = 16 * PAGE      # private: TDREPORT output
RD = 17 * PAGE       # private: REPORTDATA
SHR = 18 * PAGE      # shared page (reach it through GPA | SHARED)
PEND = 19 * PAGE     # pending private page
UNM = 20 * PAGE      # unmapped
EXT = 21 * PAGE      # private: RTMR extend data
VER = 22 * PAGE      # private: a REPORTMACSTRUCT for VERIFYREPORT
BEYOND = MEMORY_PAGES * PAGE  # first GPA past guest memory
LAYOUT_START, LAYOUT_END = 16 * PAGE, 24 * PAGE

OI = abi.TDX_OPERAND_INVALID
OI_RAX = OI | abi.TDX_OPERAND_ID_RAX
OI_RCX = OI | abi.TDX_OPERAND_ID_RCX
OI_RDX = OI | abi.TDX_OPERAND_ID_RDX
OI_R8 = OI | abi.TDX_OPERAND_ID_R8
BUSY_RTMR = abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR
SUCCESS = abi.TDX_SUCCESS
BIT48 = 1 << 48
BIT63 = 1 << 63

REPORTDATA = bytes(range(0x40, 0x80))
EXTEND_DATA = hashlib.sha384(b"extend me").digest()
SENTINEL = 0xEE
PLATFORM_CPUSVN = ModuleConfig().cpusvn  # every test module keeps the default CPUSVN
VE_ENABLED = {"attributes": 0}  # SEPT_VE_DISABLE clear: a pending private page gives #VE


def ept(gpa):
    return ("ept", gpa)


def ve(gpa):
    return ("ve", gpa)


def outcome(fn, *args):
    """Run a leaf: its status, or ("ept"|"ve", gpa) for the TD exit it raised."""
    try:
        return fn(*args)
    except errors.VirtualizationException as e:
        return ve(e.gpa)
    except errors.EptViolation as e:
        return ept(e.gpa)


@pytest.fixture
def guest(make_module):
    """guest(**config) -> Module with the layout above mapped and filled."""

    def factory(**config):
        m = make_module(memory_pages=MEMORY_PAGES, **config)
        for gpa in (OUT, RD, EXT, VER):
            m.set_page_state(gpa, 1, "private")
        m.set_page_state(SHR, 1, "shared")
        m.set_page_state(PEND, 1, "pending")
        m.write_memory(LAYOUT_START, bytes([SENTINEL]) * (LAYOUT_END - LAYOUT_START))
        m.write_memory(RD, REPORTDATA)
        m.write_memory(SHR + 64, REPORTDATA[::-1])
        m.write_memory(EXT, EXTEND_DATA)
        return m

    return factory


def rtmrs(m):
    return [m.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]


def assert_report_well_formed(m, report, reportdata):
    """Every field of a TDREPORT (ref §4.4) against the module's state, hashes and MAC (ref §4.5)."""
    assert len(report) == abi.TDX_REPORT_LEN
    assert report[4:16] == bytes(12)
    assert report[abi.TDR_OFF_CPUSVN:abi.TDR_OFF_CPUSVN + 16] == PLATFORM_CPUSVN
    tcb = report[abi.TDR_OFF_TEE_TCB_INFO:abi.TDR_OFF_TEE_TCB_INFO + abi.TDX_TEE_TCB_INFO_LEN]
    assert tcb == m.tee_tcb_info()
    assert report[abi.TDR_OFF_TEE_TCB_INFO_HASH:][:48] == hashlib.sha384(tcb).digest()
    assert report[abi.TDR_OFF_TDINFO:] == m.tdinfo()
    assert report[abi.TDR_OFF_TEE_INFO_HASH:][:48] == hashlib.sha384(report[512:1024]).digest()
    assert report[abi.TDR_OFF_REPORTDATA:abi.TDR_OFF_REPORTDATA + 64] == reportdata
    assert report[192:224] == bytes(32)
    assert report[abi.TDR_OFF_TCB_RESERVED:abi.TDR_OFF_TDINFO] == bytes(17)
    mac = hmac.new(m.mac_key, report[:abi.TDX_MAC_COVERED_LEN], hashlib.sha256).digest()
    assert report[abi.TDR_OFF_MAC:abi.TDR_OFF_MAC + 32] == mac


# ---------------------------------------------------------------------------------------------
# TDG.MR.REPORT (ref §4.3): rows in check order; (id, rcx, rdx, r8, expected, config)
# ---------------------------------------------------------------------------------------------
REPORT_ROWS = [
    ("row1: RCX misaligned beats every other check", OUT + 64, RD + 8, 1, OI_RCX, {}),
    ("row1: RCX misaligned beats R8", OUT + 512, RD, 1 << 32, OI_RCX, {}),
    ("row1: RCX misaligned beats the RDX walk", OUT + 64, UNM, 0, OI_RCX, {}),
    ("row2: RDX misaligned beats R8", OUT, RD + 32, 1, OI_RDX, {}),
    ("row2: RDX misaligned beats invalid RCX", OUT | BIT48, RD + 1, 0, OI_RDX, {}),
    ("row3: RDX bit 48 (invalid, GPAW 48)", OUT, RD | BIT48, 1, OI_RDX, {}),
    ("row3: RDX bit 63", OUT, RD | BIT63, 0, OI_RDX, {}),
    ("row3b: RDX unmapped exits before the R8 check", OUT, UNM, 1, ept(UNM), {}),
    ("row3b: RDX beyond guest memory", OUT, BEYOND, 0, ept(BEYOND), {}),
    ("row3b: RDX private alias of a shared page", OUT, SHR, 0, ept(SHR), {}),
    ("row3b: RDX shared alias of a private page", OUT, RD | SHARED, 0, ept(RD | SHARED), {}),
    ("row3b: RDX pending, SEPT_VE_DISABLE set", OUT, PEND, 0, ept(PEND), {}),
    ("row3b: RDX pending, #VE", OUT, PEND, 1, ve(PEND), VE_ENABLED),
    ("row3b: RDX pending through the shared alias", OUT, PEND | SHARED, 0, ept(PEND | SHARED), VE_ENABLED),
    ("row4: R8 = 1", OUT, RD, 1, OI_R8, {}),
    ("row4: R8 = 2**32 (full 64-bit compare)", OUT, RD, 1 << 32, OI_R8, {}),
    ("row4: R8 = 2**63", OUT, RD, BIT63, OI_R8, {}),
    ("row4: R8 beats invalid RCX", OUT | BIT48, RD, 1 << 40, OI_R8, {}),
    ("row8: RCX bit 48, found after the lock", OUT | BIT48, RD, 0, OI_RCX, {}),
    ("row8: RCX bit 63", BIT63, RD, 0, OI_RCX, {}),
    ("row8: RCX unmapped", UNM, RD, 0, ept(UNM), {}),
    ("row8: RCX beyond guest memory", BEYOND, RD, 0, ept(BEYOND), {}),
    ("row8: RCX shared alias of a private page", OUT | SHARED, RD, 0, ept(OUT | SHARED), {}),
    ("row8: RCX pending, #VE", PEND, RD, 0, ve(PEND), VE_ENABLED),
    ("row8: RCX pending, SEPT_VE_DISABLE set", PEND, RD, 0, ept(PEND), {}),
    ("row9: private RCX and RDX", OUT, RD, 0, SUCCESS, {}),
    ("row9: shared RCX", SHR | SHARED, RD, 0, SUCCESS, {}),
    ("row9: shared RDX", OUT, (SHR + 64) | SHARED, 0, SUCCESS, {}),
    ("row9: both in the same shared page", (SHR + 1024) | SHARED, (SHR + 64) | SHARED, 0, SUCCESS, {}),
]


@pytest.mark.parametrize("rcx,rdx,r8,expected,config", [r[1:] for r in REPORT_ROWS],
                         ids=[r[0] for r in REPORT_ROWS])
def test_mr_report_rows(guest, rcx, rdx, r8, expected, config):
    m = guest(**config)
    before = m.read_memory(LAYOUT_START, LAYOUT_END - LAYOUT_START)
    assert outcome(m.mr_report, rcx, rdx, r8) == expected
    after = m.read_memory(LAYOUT_START, LAYOUT_END - LAYOUT_START)
    if expected != SUCCESS:
        assert after == before, "a failing MR.REPORT wrote guest memory (ref §4.3: it never does)"
        return
    out = rcx & ~SHARED
    reportdata = m.read_memory(rdx & ~SHARED, 64)
    report = m.read_memory(out, abi.TDX_REPORT_LEN)
    assert_report_well_formed(m, report, reportdata)
    lo, hi = out - LAYOUT_START, out - LAYOUT_START + abi.TDX_REPORT_LEN
    assert after[:lo] == before[:lo] and after[hi:] == before[hi:], "wrote outside the 1024 bytes"


def test_mr_report_equals_host_buffer_form(guest):
    """The GPA leaf and Module.report differ only in the address checks."""
    m = guest()
    assert m.mr_report(OUT, RD) == SUCCESS
    assert m.read_memory(OUT, 1024) == m.report(REPORTDATA)


# ---------------------------------------------------------------------------------------------
# TDCALL dispatch (ref §4.1): (id, version, rax, rcx, rdx, expected)
# ---------------------------------------------------------------------------------------------
TDCALL_ROWS = [
    ("1.5 leaf 4", "1.5", 4, OUT, RD, SUCCESS),
    ("1.5 leaf 2", "1.5", 2, EXT, 0, SUCCESS),
    ("1.5 leaf 22 reaches VERIFYREPORT", "1.5", 22, VER, 0, abi.TDX_INVALID_REPORTMACSTRUCT),
    ("1.5 leaf 4 version 1", "1.5", 4 | 1 << 16, OUT, RD, OI_RAX),
    ("1.5 leaf 4 version 255", "1.5", 4 | 0xFF << 16, OUT, RD, OI_RAX),
    ("1.5 reserved bit 24", "1.5", 4 | 1 << 24, OUT, RD, OI_RAX),
    ("1.5 reserved bit 63", "1.5", 4 | BIT63, OUT, RD, OI_RAX),
    ("1.5 leaf 0 is TDG.VP.VMCALL: the TDCALL itself succeeds", "1.5", 0, OUT, RD, SUCCESS),
    ("1.5 unknown leaf 3", "1.5", 3, OUT, RD, OI_RAX),
    ("1.5 unknown leaf 0xFFFF", "1.5", 0xFFFF, OUT, RD, OI_RAX),
    ("1.0 leaf 4", "1.0", 4, OUT, RD, SUCCESS),
    ("1.0 leaf 2", "1.0", 2, EXT, 0, SUCCESS),
    ("1.0 has no leaf 22", "1.0", 22, VER, 0, OI_RAX),
    ("1.0 decodes all 64 bits: 4 | 1<<16", "1.0", 4 | 1 << 16, OUT, RD, OI_RAX),
    ("1.0 decodes all 64 bits: 4 | 1<<32", "1.0", 4 | 1 << 32, OUT, RD, OI_RAX),
]


@pytest.mark.parametrize("version,rax,rcx,rdx,expected", [r[1:] for r in TDCALL_ROWS],
                         ids=[r[0] for r in TDCALL_ROWS])
def test_tdcall_dispatch(guest, version, rax, rcx, rdx, expected):
    m = guest(version=version)
    before = (m.read_memory(LAYOUT_START, LAYOUT_END - LAYOUT_START), rtmrs(m))
    assert m.tdcall(rax, rcx, rdx, 0) == expected
    if expected == OI_RAX:
        assert (m.read_memory(LAYOUT_START, LAYOUT_END - LAYOUT_START), rtmrs(m)) == before


# ---------------------------------------------------------------------------------------------
# TDG.MR.RTMR.EXTEND (ref §4.6): (id, rcx, rdx, expected, config)
# ---------------------------------------------------------------------------------------------
EXTEND_ROWS = [
    ("row1: RCX misaligned beats the index", EXT + 16, 7, OI_RCX, {}),
    ("row1: RCX misaligned beats the shared bit", (SHR + 8) | SHARED, 0, OI_RCX, {}),
    ("row2: RCX shared (page mapped shared)", SHR | SHARED, 0, OI_RCX, {}),
    ("row2: RCX shared beats the index", SHR | SHARED, 1 << 40, OI_RCX, {}),
    ("row2: RCX bit 48", EXT | BIT48, 0, OI_RCX, {}),
    ("row2: RCX bit 62", 1 << 62, 0, OI_RCX, {}),
    ("row2 walk: unmapped exits before the index check", UNM, 4, ept(UNM), {}),
    ("row2 walk: private alias of a shared page", SHR, 0, ept(SHR), {}),
    ("row2 walk: beyond guest memory", BEYOND, 0, ept(BEYOND), {}),
    ("row2 walk: pending, #VE", PEND, 0, ve(PEND), VE_ENABLED),
    ("row2 walk: pending, SEPT_VE_DISABLE set", PEND, 0, ept(PEND), {}),
    ("row3: index 4", EXT, 4, OI_RDX, {}),
    ("row3: index 2**32 (full 64-bit compare)", EXT, 1 << 32, OI_RDX, {}),
    ("row3: index 2**64-1", EXT, (1 << 64) - 1, OI_RDX, {}),
    ("row5: index 0", EXT, 0, SUCCESS, {}),
    ("row5: index 3", EXT, 3, SUCCESS, {}),
]


@pytest.mark.parametrize("rcx,rdx,expected,config", [r[1:] for r in EXTEND_ROWS],
                         ids=[r[0] for r in EXTEND_ROWS])
def test_mr_rtmr_extend_rows(guest, rcx, rdx, expected, config):
    m = guest(**config)
    before = rtmrs(m)
    tdinfo_before = m.tdinfo()
    assert outcome(m.mr_rtmr_extend, rcx, rdx) == expected
    if expected != SUCCESS:
        assert rtmrs(m) == before and m.tdinfo() == tdinfo_before
        return
    after = rtmrs(m)
    assert after[rdx] == hashlib.sha384(before[rdx] + EXTEND_DATA).digest()
    assert [r for i, r in enumerate(after) if i != rdx] == [r for i, r in enumerate(before) if i != rdx]


def test_extend_chain_matches_hashlib(make_module):
    """RTMR[i] = SHA-384(RTMR[i] || data) (ref §4.5), from 48 zero bytes, through later reports."""
    m = make_module()
    expected = [bytes(48)] * 4
    for k in range(12):
        index = (k * 7) % 4
        data = hashlib.sha384(b"event %d" % k).digest()
        m.extend(index, data)
        expected[index] = hashlib.sha384(expected[index] + data).digest()
        assert rtmrs(m) == expected
    report = m.report(b"after the chain")
    for i in range(4):
        off = abi.TDR_OFF_RTMR0 + 48 * i
        assert report[off:off + 48] == expected[i]
    assert_report_well_formed(m, report, b"after the chain".ljust(64, b"\0"))
    assert m.verify(report) == SUCCESS


def test_extend_through_the_gpa_leaf_equals_host_form(guest, make_module):
    a = guest()
    b = make_module(memory_pages=MEMORY_PAGES)
    assert a.mr_rtmr_extend(EXT, 2) == SUCCESS
    b.extend(2, EXTEND_DATA)
    assert a.tdinfo() == b.tdinfo()


# ---------------------------------------------------------------------------------------------
# TDREPORT content (ref §4.3, §4.4, §4.5)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version,servtd,expected_version", [
    ("1.0", False, 0),
    ("1.0", True, 0),   # 1.0 has no service TDs: VERSION is always 0
    ("1.5", False, 0),
    ("1.5", True, 1),   # a bound service TD makes VERSION 1 (ref §4.3)
])
def test_reporttype(make_module, version, servtd, expected_version):
    fields = {"servtd_hash": hashlib.sha384(b"servtd").digest()} if servtd else {}
    m = make_module(version=version, **fields)
    report = m.report()
    assert report[0:4] == bytes([abi.TDX_REPORTTYPE_TYPE, abi.TDX_REPORTTYPE_SUBTYPE, expected_version, 0])


@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_report_fields_hashes_and_mac(make_module, version):
    m = make_module(version=version, mrconfigid=hashlib.sha384(b"cfg").digest())
    report = m.report(REPORTDATA)
    assert_report_well_formed(m, report, REPORTDATA)
    assert report[abi.TDR_OFF_MRCONFIGID:abi.TDR_OFF_MRCONFIGID + 48] == hashlib.sha384(b"cfg").digest()


def test_reportdata_is_zero_padded(make_module):
    m = make_module()
    assert m.report(b"ab")[128:192] == b"ab" + bytes(62)
    assert m.report()[128:192] == bytes(64)


def test_mac_depends_on_the_platform_key(make_module):
    a, b = make_module(seed=1), make_module(seed=2)
    ra, rb = a.report(b"x"), b.report(b"x")
    assert ra[:224] == rb[:224] and ra[224:256] != rb[224:256]
    assert a.mac_key != b.mac_key and len(a.mac_key) == abi.TDX_MAC_KEY_LEN


def test_hardware_report_hash_relations_hold_for_our_reports(make_module, hw_report_bytes):
    """Our reports satisfy the same two hash relations a real TDREPORT does (ref §4.5)."""
    for report in (hw_report_bytes, make_module().report()):
        assert report[32:80] == hashlib.sha384(report[256:256 + abi.TDX_TEE_TCB_INFO_LEN]).digest()
        assert report[80:128] == hashlib.sha384(report[512:1024]).digest()


# ---------------------------------------------------------------------------------------------
# TDG.MR.VERIFYREPORT (ref §4.7)
# ---------------------------------------------------------------------------------------------
VERIFY_ADDRESS_ROWS = [
    ("1.0 has no leaf 22", "1.0", VER, OI_RAX, {}),
    ("1.0 answers RAX before any RCX check", "1.0", VER + 8, OI_RAX, {}),
    ("RCX misaligned (128)", "1.5", VER + 128, OI_RCX, {}),
    ("RCX shared", "1.5", SHR | SHARED, OI_RCX, {}),
    ("RCX bit 48", "1.5", VER | BIT48, OI_RCX, {}),
    ("RCX unmapped", "1.5", UNM, ept(UNM), {}),
    ("RCX private alias of a shared page", "1.5", SHR, ept(SHR), {}),
    ("RCX pending, #VE", "1.5", PEND, ve(PEND), VE_ENABLED),
    ("RCX pending, SEPT_VE_DISABLE set", "1.5", PEND, ept(PEND), {}),
    ("a valid REPORTMACSTRUCT", "1.5", VER, SUCCESS, {}),
    ("the second 256 bytes of a report", "1.5", VER + 256, abi.TDX_INVALID_REPORTMACSTRUCT, {}),
]


@pytest.mark.parametrize("version,rcx,expected,config", [r[1:] for r in VERIFY_ADDRESS_ROWS],
                         ids=[r[0] for r in VERIFY_ADDRESS_ROWS])
def test_mr_verifyreport_rows(guest, version, rcx, expected, config):
    m = guest(version=version, **config)
    m.write_memory(VER, m.report(b"verify me"))
    assert outcome(m.mr_verifyreport, rcx) == expected


def remac(m, report):
    covered = report[:abi.TDX_MAC_COVERED_LEN]
    return covered + hmac.new(m.mac_key, covered, hashlib.sha256).digest() + report[256:]


def with_byte(report, offset, value):
    b = bytearray(report)
    b[offset] = value
    return bytes(b)


def _verify_cases(m):
    good = m.report(REPORTDATA)
    cpusvn0 = good[abi.TDR_OFF_CPUSVN]
    cpusvn1 = good[abi.TDR_OFF_CPUSVN + 1]
    assert cpusvn0 > 0 and cpusvn1 > 0, "the default CPUSVN lets the test lower a component"
    return [
        ("good", good, SUCCESS),
        ("MAC byte flipped", with_byte(good, abi.TDR_OFF_MAC, good[abi.TDR_OFF_MAC] ^ 1),
         abi.TDX_INVALID_REPORTMACSTRUCT),
        ("REPORTDATA changed", with_byte(good, 130, good[130] ^ 0x80), abi.TDX_INVALID_REPORTMACSTRUCT),
        ("newer CPUSVN, re-MACed", remac(m, with_byte(good, abi.TDR_OFF_CPUSVN, cpusvn0 + 1)),
         abi.TDX_INVALID_CPUSVN),
        ("newer last CPUSVN byte, re-MACed", remac(m, with_byte(good, abi.TDR_OFF_CPUSVN + 15, 1)),
         abi.TDX_INVALID_CPUSVN),
        ("older CPUSVN, re-MACed", remac(m, with_byte(good, abi.TDR_OFF_CPUSVN + 1, cpusvn1 - 1)), SUCCESS),
        ("older and newer components: newer wins",
         remac(m, with_byte(with_byte(good, abi.TDR_OFF_CPUSVN, cpusvn0 - 1), abi.TDR_OFF_CPUSVN + 1,
                            cpusvn1 + 1)), abi.TDX_INVALID_CPUSVN),
        ("newer CPUSVN without a new MAC: MAC checked first",
         with_byte(good, abi.TDR_OFF_CPUSVN, cpusvn0 + 1), abi.TDX_INVALID_REPORTMACSTRUCT),
        ("bytes past the 256-B struct are not checked", with_byte(good, 600, good[600] ^ 0xFF), SUCCESS),
    ]


def test_verify_host_form(make_module):
    m = make_module()
    for name, report, expected in _verify_cases(m):
        assert m.verify(report) == expected, name


def test_verify_gpa_form(guest):
    m = guest()
    for name, report, expected in _verify_cases(m):
        m.write_memory(VER, report[:256])
        assert m.mr_verifyreport(VER) == expected, name


def test_verify_rejects_another_platforms_report(make_module):
    a, b = make_module(seed=1), make_module(seed=2)
    assert b.verify(a.report()) == abi.TDX_INVALID_REPORTMACSTRUCT


def test_verify_on_1_0_is_an_unknown_leaf(make_module):
    m = make_module(version="1.0")
    assert m.verify(m.report()) == OI_RAX


# ---------------------------------------------------------------------------------------------
# Host-buffer API: statuses raise through tdxmodel.errors; bad arguments raise ValueError/TypeError
# ---------------------------------------------------------------------------------------------
def test_report_subtype_raises_operand_invalid_r8(make_module):
    m = make_module()
    for subtype in (1, 1 << 32, (1 << 64) - 1):
        with pytest.raises(errors.OperandInvalid) as info:
            m.report(b"", subtype)
        assert info.value.status == OI_R8 and info.value.operand_id == abi.TDX_OPERAND_ID_R8


def test_extend_bad_index_raises_operand_invalid_rdx(make_module):
    m = make_module()
    for index in (4, 1 << 32, (1 << 64) - 1):
        with pytest.raises(errors.OperandInvalid) as info:
            m.extend(index, EXTEND_DATA)
        assert info.value.status == OI_RDX and info.value.operand_id == abi.TDX_OPERAND_ID_RDX
    assert rtmrs(m) == [bytes(48)] * 4


@pytest.mark.parametrize("call,exc,word", [
    (lambda m: m.report(bytes(65)), ValueError, "reportdata"),
    (lambda m: m.report("text"), TypeError, "reportdata"),
    (lambda m: m.report(b"", -1), ValueError, "subtype"),
    (lambda m: m.report(b"", 1 << 64), ValueError, "subtype"),
    (lambda m: m.extend(0, bytes(47)), ValueError, "data"),
    (lambda m: m.extend(0, bytes(49)), ValueError, "data"),
    (lambda m: m.extend(0, "x" * 48), TypeError, "data"),
    (lambda m: m.extend(-1, bytes(48)), ValueError, "index"),
    (lambda m: m.extend("0", bytes(48)), TypeError, "index"),
    (lambda m: m.verify(bytes(255)), ValueError, "report"),
    (lambda m: m.verify(None), TypeError, "report"),
    (lambda m: m.tdcall(-1), ValueError, "rax"),
    (lambda m: m.tdcall(1 << 64), ValueError, "rax"),
    (lambda m: m.tdcall("4"), TypeError, "rax"),
    (lambda m: m.tdcall(4, 1.0), TypeError, "rcx"),
    (lambda m: m.mr_report(0, 0, -1), ValueError, "r8"),
    (lambda m: m.mr_rtmr_extend(0, 1 << 64), ValueError, "rdx"),
    (lambda m: m.mr_verifyreport(None), TypeError, "rcx"),
    (lambda m: m.rtmr(4), ValueError, "index"),
    (lambda m: m.set_rtmr(4, bytes(48)), ValueError, "index"),
    (lambda m: m.set_rtmr(0, bytes(47)), ValueError, "value"),
    (lambda m: m.set_page_state(BEYOND, 1, "private"), ValueError, "0x"),
    (lambda m: m.set_page_state(OUT, MEMORY_PAGES, "private"), ValueError, "0x"),
    (lambda m: m.set_page_state(OUT + 8, 1, "private"), ValueError, "aligned"),
    (lambda m: m.set_page_state(OUT, 1, "accepted"), ValueError, "state"),
    (lambda m: m.page_state(BEYOND), ValueError, "0x"),
    (lambda m: m.write_memory(BEYOND - 4, bytes(8)), ValueError, "0x"),
    (lambda m: m.write_memory(OUT, "text"), TypeError, "data"),
    (lambda m: m.read_memory(BEYOND, 1), ValueError, "0x"),
    (lambda m: m.read_memory(OUT, -1), ValueError, "n"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_arguments_raise_precise_errors(make_module, call, exc, word):
    m = make_module(memory_pages=MEMORY_PAGES)
    with pytest.raises(exc, match=word):
        call(m)


def test_module_constructor_arguments(backend):
    with pytest.raises(TypeError, match="config"):
        backend.Module({"version": "1.5"})
    with pytest.raises(ValueError, match="memory_pages"):
        backend.Module(ModuleConfig(seed=1), memory_pages=0)
    with pytest.raises(TypeError, match="memory_pages"):
        backend.Module(ModuleConfig(seed=1), memory_pages="8")


def test_module_properties(make_module):
    m = make_module(version="1.0", memory_pages=48, mac_key=bytes(range(32)))
    assert (m.version, m.memory_pages, m.mac_key) == ("1.0", 48, bytes(range(32)))
    assert make_module().version == "1.5"


# ---------------------------------------------------------------------------------------------
# Guest memory (host side)
# ---------------------------------------------------------------------------------------------
def test_page_states_and_host_view(make_module):
    m = make_module(memory_pages=MEMORY_PAGES)
    assert m.page_state(OUT) == "unmapped"
    m.set_page_state(OUT | SHARED, 2, "shared")  # the shared bit is ignored on the host side
    assert m.page_state(OUT) == m.page_state(OUT + PAGE + 123) == "shared"
    assert m.page_state(OUT + 2 * PAGE) == "unmapped"
    for state in ("private", "pending", "unmapped"):
        m.set_page_state(OUT, 1, state)
        assert m.page_state(OUT | SHARED) == state
    m.write_memory(OUT + 5, b"hello")
    assert m.read_memory(OUT | SHARED, 10) == bytes(5) + b"hello"
    assert m.read_memory(BEYOND - 3, 3) == bytes(3)
    assert m.read_memory(0, 0) == b""


def test_rtmr_state_and_set_rtmr_refreshes_every_cache(make_module):
    m = make_module()
    value = hashlib.sha384(b"synced").digest()
    m.set_rtmr(3, value)
    assert m.rtmr(3) == value
    assert m.tdinfo()[abi.TDR_OFF_RTMR0 - 512 + 3 * 48:][:48] == value
    report = m.report(b"r")
    assert report[abi.TDR_OFF_RTMR0 + 3 * 48:][:48] == value
    assert_report_well_formed(m, report, b"r".ljust(64, b"\0"))
    m.extend(3, EXTEND_DATA)  # extends continue from the synced value
    assert m.rtmr(3) == hashlib.sha384(value + EXTEND_DATA).digest()
    assert_report_well_formed(m, m.report(), bytes(64))


def test_initial_rtmrs_come_from_the_config(make_module):
    initial = tuple(hashlib.sha384(bytes([i])).digest() for i in range(4))
    m = make_module(rtmr=initial)
    assert tuple(rtmrs(m)) == initial
    m.extend(1, EXTEND_DATA)
    assert m.rtmr(1) == hashlib.sha384(initial[1] + EXTEND_DATA).digest()


# ---------------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------------
def test_report_batch_equals_single_reports(make_module):
    m = make_module()
    rd = np.frombuffer(hashlib.shake_256(b"batch").digest(5 * 64), dtype=np.uint8).reshape(5, 64).copy()
    reports, statuses = m.report_batch(rd)
    assert reports.dtype == np.uint8 and reports.shape == (5, 1024)
    assert statuses.dtype == np.uint64 and statuses.tolist() == [SUCCESS] * 5
    for i in range(5):
        assert reports[i].tobytes() == m.report(rd[i].tobytes())
    empty, empty_status = m.report_batch(np.zeros((0, 64), dtype=np.uint8))
    assert empty.shape == (0, 1024) and empty_status.shape == (0,)


@pytest.mark.parametrize("bad,exc", [
    (np.zeros((2, 64), dtype=np.int8), ValueError),
    (np.zeros((2, 63), dtype=np.uint8), ValueError),
    (np.zeros(64, dtype=np.uint8), ValueError),
    (np.zeros((2, 64, 1), dtype=np.uint8), ValueError),
    (bytes(128), TypeError),
])
def test_report_batch_rejects_bad_input(make_module, bad, exc):
    with pytest.raises(exc, match="reportdata"):
        make_module().report_batch(bad)


def test_counters_count_leaf_invocations(guest):
    m = guest()
    m.report()
    with pytest.raises(errors.OperandInvalid):
        m.report(b"", 1)
    m.mr_report(OUT, RD)
    m.mr_report(OUT + 1, RD)
    m.extend(0, EXTEND_DATA)
    m.mr_rtmr_extend(EXT, 9)
    m.verify(m.report())
    c = m.counters()
    assert (c["reports"], c["extends"], c["verifies"]) == (5, 2, 1)
    assert c["rtmr_shared_acquired"] == c["rtmr_shared_released"] == 3
    assert c["rtmr_exclusive_acquired"] == c["rtmr_exclusive_released"] == 1
    assert c["rtmr_busy"] == 0


def test_report_batch_rejects_non_contiguous_input(make_module):
    import numpy as np
    m = make_module()
    strided = np.zeros((4, 128), dtype=np.uint8)[:, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        m.report_batch(strided)


def test_set_rtmr_waiting_is_not_counted_busy(make_module):
    import threading
    m = make_module()
    assert m.rtmr_lock_try(False) == 0
    t = threading.Thread(target=m.set_rtmr, args=(1, b"\x07" * 48))
    t.start()
    t.join(0.05)
    assert t.is_alive()  # waits while a shared holder exists
    m.rtmr_unlock(False)
    t.join(5)
    assert not t.is_alive() and m.rtmr(1) == b"\x07" * 48
    assert m.counters()["rtmr_busy"] == 0


def test_report_batch_rows_that_meet_busy_are_zero(make_module):
    """With the RTMR lock held exclusive every row answers BUSY|RTMR and reads as 1024 zero bytes,
    whatever the output memory held before (the core fills its output without pre-zeroing it)."""
    import numpy as np
    m = make_module()
    m.report_batch(np.full((64, 64), 0xAB, dtype=np.uint8))  # leave report-like bytes in the heap
    assert m.rtmr_lock_try(True) == 0
    try:
        reports, statuses = m.report_batch(np.full((64, 64), 0xCD, dtype=np.uint8))
    finally:
        m.rtmr_unlock(True)
    assert (statuses == (abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR)).all()
    assert not reports.any()
