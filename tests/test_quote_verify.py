"""The verifier against Intel's real quote, collateral and root (shared/testdata, quote.md §6), and the
``tdxmodel quote show`` / ``quote verify`` commands on real files."""

import json

import pytest

from tdxmodel import quote as Q
from tdxmodel.cli import main
from tests.conftest import SHARED

TESTDATA = SHARED / "testdata"
QUOTE = TESTDATA / "dcap-qvl-sample-tdx-quote.bin"
COLLATERAL = TESTDATA / "dcap-qvl-sample-tdx-collateral.json"
INSIDE = "2025-07-01T00:00:00Z"  # Unix 1751328000 (testdata/README.md)


@pytest.fixture(scope="module")
def intel():
    coll = Q.Collateral.load(COLLATERAL)
    root = Q.root_from_chain(coll.tcb_info_issuer_chain)  # Intel's real "Intel SGX Root CA"
    return QUOTE.read_bytes(), coll, root


@pytest.fixture
def intel_root_pem(tmp_path, intel):
    path = tmp_path / "intel-root.pem"
    path.write_bytes(Q.pem(intel[2]))
    return path


def test_intel_sample_verifies_up_to_date_with_intels_root(intel):
    raw, coll, root = intel
    assert root.subject.rfc4514_string() == "C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX Root CA"
    for now in (INSIDE, 1751328000, "2025-06-19T10:32:27Z", "2025-07-19T10:00:34Z"):
        r = Q.verify(raw, coll, root, now)
        assert (r.status, r.advisory_ids, r.failed_step) == ("UpToDate", [], None), (now, r.reason)
        assert r.steps_passed == list(Q.STEP_NAMES)
    assert Q.verify(raw[:4936], coll, root, INSIDE).ok  # without the 70 trailing zero bytes too


@pytest.mark.parametrize("now, step, words", [
    ("2025-06-19T10:32:26Z", "qe_identity", "issue date 2025-06-19T10:32:27Z is in the future"),
    ("2025-07-19T10:00:35Z", "pck_chain", "PCK CRL expired"),
    ("2025-07-20T00:00:00Z", "pck_chain", "expired"),
    ("2024-01-01T00:00:00Z", "pck_chain", "not valid before"),
])
def test_intel_sample_is_rejected_outside_the_window(intel, now, step, words):
    raw, coll, root = intel
    r = Q.verify(raw, coll, root, now)
    assert not r.ok and r.failed_step == step and words in r.reason and r.status is None


@pytest.mark.parametrize("mutate, step", [
    (lambda b: b.__setitem__(48 + 520, b[48 + 520] ^ 1), "quote_signature"),     # REPORTDATA bit
    (lambda b: b.__setitem__(12, b[12] ^ 1), "quote_format"),                    # vendor id
    (lambda b: b.__setitem__(48 + 64, 1), "tdx_module"),                         # MRSIGNERSEAM
    (lambda b: b.__setitem__(636 + 134 + 320, b[636 + 134 + 320] ^ 1), "qe_report_signature"),
])
def test_altered_intel_quote_fails_at_the_step_that_covers_the_bytes(intel, mutate, step):
    raw, coll, root = intel
    b = bytearray(raw)
    mutate(b)
    r = Q.verify(bytes(b), coll, root, INSIDE)
    assert r.failed_step == step, r.reason


def test_altered_collateral_fails(intel):
    raw, coll, root = intel
    bad = Q.Collateral(**{**coll.__dict__, "tcb_info": coll.tcb_info.replace('"UpToDate"', '"OutOfDate"', 1)})
    r = Q.verify(raw, bad, root, INSIDE)
    assert r.failed_step == "tcb_info" and "signature does not verify" in r.reason


def test_collateral_errors_are_value_errors(tmp_path):
    (tmp_path / "c.json").write_text("{")
    with pytest.raises(Q.CollateralError, match="not JSON"):
        Q.Collateral.load(tmp_path / "c.json")
    (tmp_path / "c.json").write_text('{"pck_crl": "zz"}')
    with pytest.raises(Q.CollateralError, match="lacks"):
        Q.Collateral.load(tmp_path / "c.json")
    with pytest.raises(Q.CollateralError, match="no such file"):
        Q.Collateral.load(tmp_path / "absent.json")
    with pytest.raises(ValueError):
        Q.parse_time("yesterday")


# ------------------------------------------------------------------ the CLI on real files
@pytest.fixture
def cli(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TDXMODEL_STATE", str(tmp_path / "state"))

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_quote_show_decodes_real_quotes(cli):
    for name, version in (("quote_v5_sample.dat", 5), ("tdx_prod_quote_SPR_E4.dat", 4)):
        code, out, _ = cli("quote", "show", TESTDATA / name, "--json")
        assert code == 0
        j = json.loads(out)
        assert j["version"] == version and j["qe_vendor_id"] == "939a7233f79c4ca9940a0db3957f0607"
        code, out, _ = cli("quote", "show", TESTDATA / name)
        assert code == 0 and f"version " in out and "signature_data_len" in out


def test_quote_show_bad_input_exits_2(cli, tmp_path):
    (tmp_path / "short").write_bytes(b"\x04\x00" + bytes(100))
    code, out, err = cli("quote", "show", tmp_path / "short")
    assert code == 2 and err.startswith("tdxmodel: ") and "truncated" in err and len(err.splitlines()) == 1
    code, _, err = cli("quote", "show", tmp_path / "absent")
    assert code == 2 and "no such file" in err


def test_quote_verify_intel_sample_with_its_collateral_and_root(cli, intel_root_pem):
    code, out, err = cli("quote", "verify", QUOTE, "--collateral", COLLATERAL, "--root", intel_root_pem,
                         "--at", INSIDE)
    assert (code, out.strip(), err) == (0, "UpToDate", "")
    code, out, _ = cli("quote", "verify", QUOTE, "--collateral", COLLATERAL, "--root", intel_root_pem,
                       "--at", "1751328000", "--json")
    j = json.loads(out)
    assert code == 0 and (j["status"], j["advisory_ids"], j["failed_step"]) == ("UpToDate", [], None)
    assert "reason" in j


def test_quote_verify_outside_the_window_exits_1_naming_the_step(cli, intel_root_pem):
    code, out, err = cli("quote", "verify", QUOTE, "--collateral", COLLATERAL, "--root", intel_root_pem,
                         "--at", "2025-06-19T10:32:26Z")
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"tdxmodel: {QUOTE}: qe_identity: ")
    code, out, err = cli("quote", "verify", QUOTE, "--collateral", COLLATERAL, "--root", intel_root_pem,
                         "--at", "2026-01-01T00:00:00Z", "--json")
    j = json.loads(out)
    assert code == 1 and j["failed_step"] == "pck_chain" and j["status"] is None


def test_quote_verify_bad_input_exits_2(cli, intel_root_pem, tmp_path):
    base = ("quote", "verify", QUOTE, "--collateral", COLLATERAL, "--root", intel_root_pem)
    assert cli(*base, "--at", "noon")[0] == 2
    (tmp_path / "bad.pem").write_text("not a cert")
    code, _, err = cli("quote", "verify", QUOTE, "--collateral", COLLATERAL, "--root", tmp_path / "bad.pem")
    assert code == 2 and "not a PEM or DER" in err
    code, _, err = cli("quote", "verify", QUOTE, "--collateral", tmp_path / "nope.json", "--root", intel_root_pem)
    assert code == 2 and "no such file" in err
