"""The emulated PKI and collateral against a real verifier: every emulated quote, v4 and v5, verifies in
dcap-qvl (``verify_with_root_ca``) with the TCB status configured, and the negative cases fail in both
dcap-qvl and our verifier: a flipped body byte, another platform's root, expired collateral, a revoked
PCK certificate. Also the persisted PKI (modes, re-issue) and the tcb / collateral / quote commands."""

import datetime as dt
import json
import os
import stat
import time

import dcap_qvl
import pytest
from cryptography import x509

from tdxmodel import quote as Q
from tdxmodel import quote_abi as qa
from tdxmodel.cli import main
from tdxmodel.host.collateral import LEVELS, Platform, PlatformError
from tdxmodel.state import StateStore


@pytest.fixture
def platform(tmp_path, backend):
    return Platform(StateStore(tmp_path / "state", backend=backend))


@pytest.fixture
def quote_of(make_module):
    """quote_of(platform, reportdata=b"") -> quote bytes from a make_module model of its TD."""
    def make(platform, reportdata=b""):
        platform.pki()
        module = make_module(**platform.store.load().to_dict())
        return platform.quoting_enclave(module=module).produce(module.report(reportdata))
    return make


def dcap(raw, collateral, root_der, now=None):
    """(status, advisory ids) from dcap-qvl, or ("error", message)."""
    coll = dcap_qvl.QuoteCollateralV3.from_json(collateral.to_dcap_qvl_json())
    try:
        r = dcap_qvl.verify_with_root_ca(raw, coll, root_der, int(now if now is not None else time.time()))
    except Exception as e:  # dcap-qvl raises ValueError/RuntimeError with its message
        return "error", str(e)
    return r.status, list(r.advisory_ids)


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("status", qa.TCB_STATUSES)
def test_dcap_qvl_returns_the_configured_status(platform, quote_of, version, status):
    platform.set_tcb(status=status, quote_version=version)
    raw = quote_of(platform, b"nonce")
    assert Q.parse_quote(raw).version == version
    coll, root = platform.collateral(), platform.pki()
    ours = Q.verify(raw, coll, root.root_cert)
    theirs = dcap(raw, coll, root.root_der())
    advisories = LEVELS[qa.TCB_STATUSES.index(status)]["advisory_ids"]
    assert ours.status == status and ours.advisory_ids == advisories
    if status == "Revoked":  # dcap-qvl refuses a Revoked TCB; so do we, at the tcb_level step
        assert theirs[0] == "error" and "Revoked" in theirs[1]
        assert ours.failed_step == "tcb_level"
    else:
        assert theirs == (status, advisories) and ours.ok


@pytest.mark.parametrize("version", [4, 5])
def test_negative_cases_fail_in_both(tmp_path, backend, platform, quote_of, version):
    platform.set_tcb(quote_version=version)
    raw = quote_of(platform, b"nonce")
    coll, pki = platform.collateral(), platform.pki()
    assert dcap(raw, coll, pki.root_der()) == ("UpToDate", [])

    # a flipped body byte (REPORTDATA)
    body = Q.parse_quote(raw).body_offset
    flipped = bytearray(raw)
    flipped[body + 520] ^= 0x01
    assert dcap(bytes(flipped), coll, pki.root_der())[0] == "error"
    assert Q.verify(bytes(flipped), coll, pki.root_cert).failed_step == "quote_signature"

    # another platform's root
    other = Platform(StateStore(tmp_path / "other", backend=backend))
    assert dcap(raw, coll, other.pki().root_der())[0] == "error"
    assert Q.verify(raw, coll, other.pki().root_cert).failed_step == "pck_chain"

    # expired collateral: now past nextUpdate
    later = time.time() + 90 * 86400
    assert dcap(raw, coll, pki.root_der(), later)[0] == "error"
    assert not Q.verify(raw, coll, pki.root_cert, later).ok

    # a revoked PCK certificate
    platform.set_tcb(revoked=True)
    revoked = platform.collateral()
    assert dcap(raw, revoked, pki.root_der())[0] == "error"
    r = Q.verify(raw, revoked, pki.root_cert)
    assert r.failed_step == "pck_chain" and "revoked" in r.reason


def test_pinned_window_expires_and_unpinning_reissues(platform, quote_of):
    raw = quote_of(platform)
    now = dt.datetime.now(dt.timezone.utc)
    coll = platform.set_validity(now - dt.timedelta(days=40), now - dt.timedelta(days=10))
    assert platform.collateral().tcb_info == coll.tcb_info  # pinned: not re-issued although expired
    r = Q.verify(raw, coll, platform.pki().root_cert)
    assert not r.ok and "expired" in r.reason
    assert dcap(raw, coll, platform.pki().root_der())[0] == "error"
    assert Q.verify(raw, coll, platform.pki().root_cert, now - dt.timedelta(days=20)).ok  # inside the window
    fresh = platform.set_validity()
    assert Q.verify(raw, fresh, platform.pki().root_cert).ok
    with pytest.raises(PlatformError):
        platform.set_validity(now, now - dt.timedelta(days=1))


def test_expired_collateral_is_reissued_with_the_same_keys(platform, quote_of):
    raw = quote_of(platform)
    root = platform.pki().root_der()
    now = dt.datetime.now(dt.timezone.utc)
    stale = platform.set_validity(now - dt.timedelta(days=40), now - dt.timedelta(days=10))
    # drop the pin but keep the expired collateral on disk: the next ask re-issues it
    meta = platform.meta()
    meta["window"] = None
    platform._put_meta(meta)
    fresh = Platform(platform.store).collateral()
    assert fresh.tcb_info != stale.tcb_info
    assert Platform(platform.store).pki().root_der() == root
    assert dcap(raw, fresh, root) == ("UpToDate", [])


def test_certificates_look_like_intels_and_name_the_emulator(platform):
    p = platform.pki()
    for cert, cn, ca in ((p.root_cert, "Intel SGX Root CA", True), (p.pck_ca_cert, "Intel SGX PCK Platform CA", True),
                         (p.pck_cert, "Intel SGX PCK Certificate", False), (p.tcb_cert, "Intel SGX TCB Signing", False)):
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == cn
        assert cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == \
            "tdxmodel EMULATED - not Intel"
        for ext in (x509.AuthorityKeyIdentifier, x509.SubjectKeyIdentifier, x509.KeyUsage, x509.BasicConstraints,
                    x509.CRLDistributionPoints):
            cert.extensions.get_extension_for_class(ext)
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is ca
    ext = Q.parse_pck_extension(p.pck_cert)
    meta = platform.meta()
    assert ext.fmspc.hex().upper() == meta["fmspc"] and ext.pceid == bytes(2) and ext.sgx_type == 1
    assert list(ext.components) == LEVELS[0]["sgx"] and ext.cpusvn == bytes(LEVELS[0]["sgx"])
    assert ext.pcesvn == LEVELS[0]["pcesvn"]
    # dcap-qvl reads the same extension
    got = dcap_qvl.parse_pck_extension_from_pem(Q.pem(p.pck_cert))
    assert bytes(got.fmspc).hex().upper() == meta["fmspc"]
    coll = platform.collateral()
    for der in (coll.root_ca_crl, coll.pck_crl):
        crl = x509.load_der_x509_crl(der)
        crl.extensions.get_extension_for_class(x509.CRLNumber)
        crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)


def test_private_keys_are_0600_and_symlinks_are_not_followed(platform, tmp_path):
    platform.pki()
    d = platform.directory
    keys = sorted(d.glob("*.key"))
    assert len(keys) == 5
    for k in keys:
        assert stat.S_IMODE(os.lstat(k).st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    # a planted symlink in place of the collateral is replaced, and its target left alone
    target = tmp_path / "victim"
    target.write_text("keep")
    os.unlink(d / "collateral.json")
    os.symlink(target, d / "collateral.json")
    platform.set_validity()
    assert target.read_text() == "keep" and not os.path.islink(d / "collateral.json")
    # a symlink planted as a key is refused on reading
    os.unlink(d / "pck.key")
    os.symlink(target, d / "pck.key")
    with pytest.raises(ValueError, match="pck.key"):
        Platform(platform.store).pki()


def test_tcb_level_moves_pck_and_tee_tcb_svn(platform):
    platform.set_tcb(level=4)
    cfg = platform.store.load()
    assert cfg.tee_tcb_svn == bytes(LEVELS[4]["tdx"]) == cfg.tee_tcb_svn2
    assert list(Q.parse_pck_extension(Platform(platform.store).pki().pck_cert).components) == LEVELS[4]["sgx"]
    pos = platform.position()
    assert (pos["level"], pos["status"], pos["pck_revoked"]) == (4, "OutOfDate", False)
    for bad in (dict(level=7), dict(status="Fine"), dict(level=1, status="UpToDate"), dict(quote_version=3)):
        with pytest.raises(PlatformError):
            platform.set_tcb(**bad)


# ------------------------------------------------------------------ commands
@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, backend):
    monkeypatch.setenv("TDXMODEL_BACKEND", backend.BACKEND_NAME)
    monkeypatch.setenv("TDXMODEL_STATE", str(tmp_path / "cli-state"))
    monkeypatch.delenv("TDXMODEL_CONFIG", raising=False)

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_quote_command_makes_a_quote_that_verifies(cli, tmp_path):
    out_file = tmp_path / "q.bin"
    code, out, _ = cli("quote", "--reportdata", "c0ffee", "--out", out_file, "--json")
    assert code == 0
    j = json.loads(out)
    raw = out_file.read_bytes()
    assert bytes.fromhex(j["raw"]) == raw and j["body"]["reportdata"].startswith("c0ffee")
    assert cli("quote", "verify", out_file) == (0, "UpToDate\n", "")
    code, out, _ = cli("quote", "verify", out_file, "--json")
    assert json.loads(out)["failed_step"] is None
    assert cli("quote", "--reportdata", "zz")[0] == 2


def test_tcb_command_sets_the_status_quotes_verify_with(cli, tmp_path):
    code, out, _ = cli("tcb", "--status", "OutOfDate")
    assert code == 0 and "level 4 (OutOfDate)" in out
    cli("quote", "--out", tmp_path / "q.bin")
    code, out, _ = cli("quote", "verify", tmp_path / "q.bin")
    assert code == 0 and out.startswith("OutOfDate (INTEL-SA-00106, INTEL-SA-00115)")
    code, out, _ = cli("tcb", "--json")
    assert json.loads(out)["status"] == "OutOfDate"
    code, _, _ = cli("tcb", "--revoke-pck")
    code, _, err = cli("quote", "verify", tmp_path / "q.bin")
    assert code == 1 and ": pck_chain: " in err and "revoked" in err
    assert cli("tcb", "--level", "x")[0] == 2
    assert cli("tcb", "--status", "Good")[0] == 2
    with pytest.raises(SystemExit) as e:  # argparse: --level and --status exclude each other
        cli("tcb", "--level", "1", "--status", "UpToDate")
    assert e.value.code == 2


def test_collateral_export_both_formats(cli, tmp_path, backend):
    cli("quote", "--out", tmp_path / "q.bin")
    raw = (tmp_path / "q.bin").read_bytes()
    assert cli("collateral", "export", tmp_path / "files")[0] == 0
    names = {p.name for p in (tmp_path / "files").iterdir()}
    assert names == set(Q.FILES.values())
    code, out, _ = cli("quote", "verify", tmp_path / "q.bin", "--collateral", tmp_path / "files",
                       "--root", tmp_path / "files" / "root_ca.pem")
    assert (code, out) == (0, "UpToDate\n")
    assert cli("collateral", "export", tmp_path / "qvl", "--format", "dcap-qvl")[0] == 0
    coll = Q.Collateral.load(tmp_path / "qvl" / "collateral.json")
    assert dcap(raw, coll, (tmp_path / "qvl" / "root_ca.der").read_bytes()) == ("UpToDate", [])
    code, out, _ = cli("quote", "verify", tmp_path / "q.bin", "--collateral", tmp_path / "qvl" / "collateral.json",
                       "--root", tmp_path / "qvl" / "root_ca.der")
    assert (code, out) == (0, "UpToDate\n")
    # another platform's root: exit 1, naming the step
    other = Platform(StateStore(tmp_path / "other", backend=backend))
    (tmp_path / "other.pem").write_bytes(Q.pem(other.pki().root_cert))
    code, _, err = cli("quote", "verify", tmp_path / "q.bin", "--root", tmp_path / "other.pem")
    assert code == 1 and ": pck_chain: " in err


def test_bench_quote_json_keys(capsys, monkeypatch):
    """``tdxmodel bench --quote --json``: the issue's keys, measured (positive rates), one object."""
    assert main(["bench", "--quote", "--json", "--seconds", "0.05", "--callers", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("quote_per_s", "ecdsa_sign_floor_per_s", "verify_per_s", "dcap_qvl_verify_per_s"):
        assert out[key] > 0, key
    assert set(out["quote_scaling"]) == {"1", "2"} and out["batch_quote_per_s"] > 0
    assert set(out["quote_scaling_parallelism"]) == {"1", "2"}
    assert all(v > 0 for v in out["quote_scaling_parallelism"].values())
    assert all(v > 0 for v in out["cpu_rates"].values()) and set(out["cpu_rates"]) == {
        "ecdsa_sign_floor_per_cpu_s", "quote_per_cpu_s", "whole_path_quote_per_cpu_s", "quote_vs_floor",
        "whole_path_vs_floor"}
    assert out["whole_path_quote_per_s"] > 0 and out["whole_path_driver"] == "v6.16"
    assert set(out["ratios"]) == {"quote_vs_floor", "quote_2_callers_vs_floor", "whole_path_vs_floor",
                                  "verify_vs_dcap_qvl"}


def test_single_bit_flips_agree_with_dcap_qvl(platform, quote_of):
    """Every one of 300 seeded single-bit flips over the whole quote: our verifier and dcap-qvl agree,
    except inside the embedded root certificate, which dcap-qvl ignores and we, like Intel's QVL,
    require to be the trusted root: there we may reject more, and never accept what dcap-qvl rejects."""
    import random
    import warnings

    raw = quote_of(platform, b"flip")
    coll, pki = platform.collateral(), platform.pki()
    qvl_coll = dcap_qvl.QuoteCollateralV3.from_json(coll.to_dcap_qvl_json())
    root_block = Q.parse_quote(raw).pck_chain[2].rstrip(b"\n")
    root_start = raw.index(root_block)
    root_end = root_start + len(root_block)
    rng, now = random.Random(11), int(time.time())
    for _ in range(300):
        off, bit = rng.randrange(len(raw)), rng.randrange(8)
        b = bytearray(raw)
        b[off] ^= 1 << bit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cryptography warns on some corrupted serial numbers
            try:
                ours = Q.verify(bytes(b), coll, pki.root_cert).ok
            except Q.QuoteFormatError:
                ours = False
        try:
            dcap_qvl.verify_with_root_ca(bytes(b), qvl_coll, pki.root_der(), now)
            theirs = True
        except Exception:
            theirs = False
        if root_start <= off < root_end:
            # rejected unless the flip leaves the DER alone (a base64 character's unused bits)
            assert not ours or theirs, (off, bit)
        else:
            assert ours == theirs, (off, bit, ours, theirs)


def test_collateral_issue_pins_a_window_that_expires(cli, tmp_path):
    cli("quote", "--out", tmp_path / "q.bin")
    code, out, _ = cli("collateral", "issue", "--issue-date", "2024-01-01T00:00:00Z", "--next-update", "1706745600")
    assert code == 0 and "2024-01-01T00:00:00Z .. 2024-02-01T00:00:00Z (pinned)" in out
    code, _, err = cli("quote", "verify", tmp_path / "q.bin")
    assert code == 1 and "expired" in err
    assert cli("quote", "verify", tmp_path / "q.bin", "--at", "2024-01-15T00:00:00Z")[:2] == (0, "UpToDate\n")
    code, out, _ = cli("collateral", "issue", "--unpin")
    assert code == 0 and "renewed on expiry" in out
    assert cli("quote", "verify", tmp_path / "q.bin")[0] == 0
    assert cli("collateral", "issue", "--issue-date", "soon")[0] == 2
    assert cli("collateral", "issue", "--issue-date", "2024-02-01T00:00:00Z", "--next-update",
               "2024-01-01T00:00:00Z")[0] == 2
