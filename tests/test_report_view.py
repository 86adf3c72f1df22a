"""The TDREPORT view, its numpy dtype and report verification (tdxmodel.report), on every backend."""

import hashlib
import json

import numpy as np
import pytest

from tdxmodel import abi
from tdxmodel.config import ModuleConfig
from tdxmodel.report import (TDREPORT_DTYPE, TdReport, array_to_reports, reports_to_array, verify)

RESERVED_UNCOVERED = range(abi.TDR_OFF_TCB_RESERVED, abi.TDR_OFF_TDINFO)  # 495..511 (ref §4.4)


def expected_part(byte_index):
    """Which part a change at ``byte_index`` must be blamed on (ref §4.5): the MAC covers 0..223 and
    is itself 224..255; TEE_TCB_INFO_HASH covers 256..494; TEE_INFO_HASH 512..1023."""
    if byte_index < abi.TDX_REPORTMACSTRUCT_LEN:
        return "MAC"
    if byte_index < abi.TDR_OFF_TEE_TCB_INFO + abi.TDX_TEE_TCB_INFO_LEN:
        return "TEE_TCB_INFO_HASH"
    if byte_index < abi.TDR_OFF_TDINFO:
        return None
    return "TEE_INFO_HASH"


def flipped(raw, byte_index, bit):
    b = bytearray(raw)
    b[byte_index] ^= 1 << bit
    return bytes(b)


# ------------------------------------------------------------------ dtype
def test_dtype_field_offsets_and_sizes_equal_the_abi_table():
    assert TDREPORT_DTYPE.itemsize == abi.TDX_REPORT_LEN
    assert list(TDREPORT_DTYPE.names) == [name for name, *_ in abi.TDREPORT_FIELDS]
    for name, off, size, _ in abi.TDREPORT_FIELDS:
        field_dtype, field_off = TDREPORT_DTYPE.fields[name][:2]
        assert (field_off, field_dtype.itemsize) == (off, size), name


def test_dtype_round_trips_an_array_of_reports_byte_exact(make_module):
    m = make_module(rtmr=(b"\x11" * 48, b"\x22" * 48, b"\x33" * 48, b"\x44" * 48))
    reports = [m.report(bytes([i]) * 64) for i in range(5)]
    arr = reports_to_array(reports)
    assert arr.shape == (5,) and arr.dtype == TDREPORT_DTYPE
    assert array_to_reports(arr) == reports
    assert arr.tobytes() == b"".join(reports)
    # Fields read through the dtype agree with the view.
    view = TdReport.from_bytes(reports[3])
    assert bytes(arr["reportdata"][3]) == view.reportdata == b"\x03" * 64
    assert bytes(arr["rtmr2"][3]) == view.rtmr[2] == b"\x33" * 48
    assert int(arr["attributes"][3]) == view.attributes
    assert int(arr["xfam"][3]) == 0xE7
    assert int(arr["tcb_valid"][0]) == abi.TDX_TCB_VALID_1_5
    assert arr["report_type"]["type"][0] == abi.TDX_REPORTTYPE_TYPE


def test_reports_to_array_takes_a_report_batch(make_module):
    m = make_module()
    reportdata = np.arange(3 * 64, dtype=np.uint64).astype(np.uint8).reshape(3, 64)
    out, statuses = m.report_batch(reportdata)
    assert not statuses.any()
    arr = reports_to_array(out)
    assert array_to_reports(arr) == [bytes(row) for row in out]
    assert np.array_equal(np.stack([np.asarray(r) for r in arr["reportdata"]]), reportdata)


def test_array_helpers_reject_bad_input():
    with pytest.raises(ValueError, match=r"reports\[1\].*1024.*1023"):
        reports_to_array([bytes(1024), bytes(1023)])
    with pytest.raises(TypeError, match="iterable of reports"):
        reports_to_array(bytes(1024))
    with pytest.raises(ValueError, match="shape"):
        reports_to_array(np.zeros((2, 1000), dtype=np.uint8))
    with pytest.raises(TypeError, match="TDREPORT_DTYPE"):
        array_to_reports(np.zeros((2, 1024), dtype=np.uint8))


# ------------------------------------------------------------------ the view
def test_view_decodes_every_named_field_of_a_module_report(make_module):
    cfg = dict(mrconfigid=b"\xc1" * 48, mrowner=b"\x0a" * 48, mrownerconfig=b"\x0b" * 48,
               xfam=0x2E7, attributes=(1 << 28) | 1, seam_attributes=0, tee_tcb_svn2=b"\x07" * 16,
               rtmr=(b"\x01" * 48, b"\x02" * 48, b"\x03" * 48, b"\x04" * 48))
    m = make_module(**cfg)
    ref = ModuleConfig(seed=1, **cfg)
    raw = m.report(b"nonce")
    r = TdReport.from_bytes(raw)
    assert (r.type, r.subtype, r.version) == (0x81, 0, 0)
    assert r.report_type == {"type": 0x81, "subtype": 0, "version": 0}
    assert r.cpusvn == ref.cpusvn
    assert r.reportdata == b"nonce" + bytes(59)
    assert r.tcb_valid == abi.TDX_TCB_VALID_1_5
    assert (r.tee_tcb_svn, r.mrseam, r.mrsignerseam) == (ref.tee_tcb_svn, ref.mrseam, ref.mrsignerseam)
    assert (r.seam_attributes, r.tee_tcb_svn2) == (0, b"\x07" * 16)
    assert (r.attributes, r.xfam) == ((1 << 28) | 1, 0x2E7)
    assert (r.mrtd, r.mrconfigid, r.mrowner, r.mrownerconfig) == (ref.mrtd, b"\xc1" * 48, b"\x0a" * 48, b"\x0b" * 48)
    assert r.rtmr == cfg["rtmr"]
    assert r.servtd_hash == bytes(48)
    assert r.tee_tcb_info_hash == hashlib.sha384(raw[256:495]).digest()
    assert r.tee_info_hash == hashlib.sha384(raw[512:1024]).digest()
    assert r.to_bytes() == raw
    assert r.check_hashes() == {"TEE_TCB_INFO_HASH": True, "TEE_INFO_HASH": True}


def test_report_version_is_1_with_a_bound_service_td(make_module):
    r = TdReport.from_bytes(make_module(servtd_hash=b"\x5e" * 48).report())
    assert r.version == 1 and r.servtd_hash == b"\x5e" * 48


def test_tdx_1_0_report_has_no_svn2(make_module):
    r = TdReport.from_bytes(make_module(version="1.0", tee_tcb_svn2=b"\x09" * 16).report())
    assert r.tcb_valid == abi.TDX_TCB_VALID_1_0
    assert r.tee_tcb_svn2 == bytes(16)


def test_view_is_read_only_and_compares_by_bytes():
    raw = bytes(range(256)) * 4
    r = TdReport.from_bytes(bytearray(raw))
    with pytest.raises(AttributeError):
        r.mrtd = bytes(48)
    assert r == TdReport.from_bytes(memoryview(raw)) and hash(r) == hash(TdReport.from_bytes(raw))
    assert r != TdReport.from_bytes(bytes(1024))
    assert r.field("reserved_495") == raw[495:512]
    with pytest.raises(ValueError, match="no TDREPORT field"):
        r.field("mrsomething")


@pytest.mark.parametrize("size", [0, 1023, 1025, 1088])
def test_from_bytes_names_a_wrong_length(size):
    with pytest.raises(ValueError, match=f"1024 bytes.*got {size}"):
        TdReport.from_bytes(bytes(size))


def test_from_bytes_rejects_non_bytes():
    with pytest.raises(TypeError, match="bytes-like"):
        TdReport.from_bytes("81" * 1024)


def test_to_json_has_hex_fields_ints_and_the_raw_report(make_module):
    raw = make_module(rtmr=(b"\x01" * 48,) * 4).report(b"\xab" * 64)
    j = TdReport.from_bytes(raw).to_json()
    assert json.loads(json.dumps(j)) == j
    assert set(j) == {"report_type", "cpusvn", "tee_tcb_info_hash", "tee_info_hash", "reportdata", "mac",
                      "tcb_valid", "tee_tcb_svn", "mrseam", "mrsignerseam", "seam_attributes", "tee_tcb_svn2",
                      "attributes", "xfam", "mrtd", "mrconfigid", "mrowner", "mrownerconfig", "rtmr",
                      "servtd_hash", "raw"}
    assert j["report_type"] == {"type": 0x81, "subtype": 0, "version": 0}
    assert j["reportdata"] == "ab" * 64
    assert j["rtmr"] == ["01" * 48] * 4
    assert isinstance(j["xfam"], int) and isinstance(j["tcb_valid"], int)
    assert bytes.fromhex(j["raw"]) == raw
    assert bytes.fromhex(j["mac"]) == raw[224:256]


# ------------------------------------------------------------------ verify
def test_a_fresh_report_is_genuine(make_module):
    m = make_module()
    ok, part, reason = verify(m.report(b"x"), m)
    assert (ok, part) == (True, None)
    assert "TDG.MR.VERIFYREPORT" in reason


def test_every_single_bit_flip_is_caught_and_blamed_on_the_right_part(make_module):
    """All 1007 * 8 covered flips (bytes 0..494 and 512..1023), through the API."""
    m = make_module(rtmr=(b"\x01" * 48, b"\x02" * 48, b"\x03" * 48, b"\x04" * 48))
    raw = m.report(bytes(range(64)))
    wrong = []
    for i in range(abi.TDX_REPORT_LEN):
        part = expected_part(i)
        if part is None:
            continue
        for bit in range(8):
            ok, got, reason = verify(flipped(raw, i, bit), m)
            if ok or got != part or not reason.startswith(part + ":"):
                wrong.append((i, bit, ok, got, reason))
    assert not wrong, f"{len(wrong)} flips misjudged, first: {wrong[:3]}"


def test_flips_in_the_17_uncovered_reserved_bytes_still_verify(make_module):
    """Bytes 495..511 are covered by no hash and no MAC (ref §4.4-§4.5), as on hardware."""
    m = make_module()
    raw = m.report()
    for i in RESERVED_UNCOVERED:
        for bit in range(8):
            assert verify(flipped(raw, i, bit), m)[:2] == (True, None), (i, bit)


def test_tdx_1_0_checks_the_mac_itself_and_says_so(make_module):
    m = make_module(version="1.0")
    raw = m.report(b"one-oh")
    ok, part, reason = verify(raw, m)
    assert (ok, part) == (True, None) and "TDX 1.0" in reason
    for i in (0, 100, 223, 224, 255):
        ok, part, reason = verify(flipped(raw, i, 3), m)
        assert (ok, part) == (False, "MAC") and "TDX 1.0" in reason
    assert verify(flipped(raw, 300, 0), m)[1] == "TEE_TCB_INFO_HASH"
    assert verify(flipped(raw, 900, 7), m)[1] == "TEE_INFO_HASH"


def test_a_report_from_another_platform_fails_on_the_mac(make_module):
    here, there = make_module(seed=1), make_module(seed=2)
    ok, part, reason = verify(there.report(), here)
    assert (ok, part) == (False, "MAC")
    assert "another platform" in reason


def test_a_newer_cpusvn_is_a_mac_failure_naming_cpusvn(make_module):
    """Same key, but the report claims a CPUSVN newer than this platform's: VERIFYREPORT answers
    TDX_INVALID_CPUSVN (ref §4.7), and the MAC is the part that fails."""
    here = make_module(seed=7, cpusvn=bytes([1, 2] + [0] * 14))
    newer = make_module(seed=7, cpusvn=bytes([9, 9] + [0] * 14))
    ok, part, reason = verify(newer.report(), here)
    assert (ok, part) == (False, "MAC")
    assert "TDX_INVALID_CPUSVN" in reason and "another platform" in reason


def test_verify_rejects_a_wrong_length(make_module):
    with pytest.raises(ValueError, match="report_bytes.*got 256"):
        verify(bytes(256), make_module())
