"""A TDREPORT from real TDX hardware (shared/testdata/dcap-tdreport-hw.bin, read in place, never
copied here): it decodes field by field with the facts its README lists, its two hashes hold, and
verification on an emulated platform fails on the MAC, saying it belongs to another platform."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

from tdxmodel import abi
from tdxmodel.cli import main
from tdxmodel.report import TdReport, array_to_reports, reports_to_array, verify

ROOT = pathlib.Path(__file__).resolve().parents[1]


def check_readme_facts(r: TdReport) -> None:
    """The facts shared/testdata/README.md states about this report."""
    raw = r.to_bytes()
    assert raw[0:4] == bytes([0x81, 0, 0, 0])
    assert (r.type, r.subtype, r.version) == (0x81, 0, 0)
    assert raw[192:224] == bytes(32)
    assert r.tcb_valid == abi.TDX_TCB_VALID_1_0 == 0x1FF
    assert r.mrsignerseam == bytes(48) and r.seam_attributes == 0
    assert r.servtd_hash == bytes(48) and raw[960:1024] == bytes(64)


def test_hw_report_parses_field_by_field(hw_report_bytes):
    r = TdReport.from_bytes(hw_report_bytes)
    assert r.to_bytes() == hw_report_bytes
    check_readme_facts(r)
    # Each named field is the bytes at its reference offset (ref §4.4).
    assert r.cpusvn == hw_report_bytes[16:32]
    assert r.reportdata == hw_report_bytes[128:192]
    assert r.mac == hw_report_bytes[224:256]
    assert r.mrseam == hw_report_bytes[280:328]
    assert r.mrtd == hw_report_bytes[528:576]
    assert r.rtmr == tuple(hw_report_bytes[720 + 48 * i:768 + 48 * i] for i in range(4))
    assert r.xfam == int.from_bytes(hw_report_bytes[520:528], "little")
    assert r.attributes == int.from_bytes(hw_report_bytes[512:520], "little")


def test_hw_report_hashes_hold_over_239_and_512_bytes(hw_report_bytes):
    r = TdReport.from_bytes(hw_report_bytes)
    assert r.check_hashes() == {"TEE_TCB_INFO_HASH": True, "TEE_INFO_HASH": True}
    # The 239-byte coverage is what makes it hold (shared/testdata/README.md): 238 or 256 would not.
    for wrong_len in (238, 240, 256):
        assert hashlib.sha384(hw_report_bytes[256:256 + wrong_len]).digest() != r.tee_tcb_info_hash


def test_hw_report_through_the_dtype(hw_report_bytes):
    arr = reports_to_array([hw_report_bytes])
    assert array_to_reports(arr) == [hw_report_bytes]
    assert int(arr["tcb_valid"][0]) == 0x1FF
    assert bytes(arr["mrtd"][0]) == TdReport.from_bytes(hw_report_bytes).mrtd


def test_hw_report_mac_belongs_to_another_platform(hw_report_bytes, make_module):
    for version in ("1.5", "1.0"):
        ok, part, reason = verify(hw_report_bytes, make_module(version=version))
        assert (ok, part) == (False, "MAC"), version
        assert "another platform" in reason


def hw_file(tmp_path, hw_report_bytes):
    """The report as a file the CLI can read (in tmp_path, outside the repo)."""
    path = tmp_path / "hw-tdreport.bin"
    path.write_bytes(hw_report_bytes)
    return path


def test_tdxmodel_show_on_the_hw_report(hw_report_bytes, tmp_path, capsys):
    path = hw_file(tmp_path, hw_report_bytes)
    assert main(["show", str(path), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    check_readme_facts(TdReport.from_bytes(bytes.fromhex(j["raw"])))
    assert j["report_type"] == {"type": 0x81, "subtype": 0, "version": 0}
    assert j["tcb_valid"] == 0x1FF and j["seam_attributes"] == 0
    assert j["mrsignerseam"] == "00" * 48 and j["servtd_hash"] == "00" * 48
    assert j["mrtd"] == hw_report_bytes[528:576].hex()
    assert main(["show", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.count("(matches)") == 2 and "MISMATCH" not in text
    assert "tcb_valid          0x1ff" in text


def test_tdxmodel_verify_on_the_hw_report_exits_1_naming_the_mac(hw_report_bytes, tmp_path):
    path = hw_file(tmp_path, hw_report_bytes)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TDXMODEL_STATE=str(tmp_path / "state"))
    env.pop("TDXMODEL_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "tdxmodel", "verify", str(path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert ": MAC: " in proc.stderr and "another platform" in proc.stderr
