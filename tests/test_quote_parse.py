"""Parsing DCAP TD quotes: the four real quotes in shared/testdata parse field by field with the facts
shared/testdata/README.md lists (read in place, never copied), using signature_data_len, not the
file size; bad input gives QuoteFormatError, never a crash."""

import hashlib
import struct

import pytest
from cryptography import x509

from tdxmodel import quote as Q
from tdxmodel import quote_abi as qa
from tests.conftest import SHARED

TESTDATA = SHARED / "testdata"
# file -> (version, body type, signature_data_len, quote length, file length, chain size, QE ISVSVN,
#          TEE_TCB_SVN prefix) from shared/testdata/README.md
REAL = {
    "tdx_prod_quote_SPR_E4.dat": (4, 2, 4299, 4935, 4974, 3677, 4, "03000400"),
    "quote_v5_sample.dat": (5, 3, 4300, 5006, 5006, 3678, 7, "0b010400"),
    "cos-113-tdx-quote.dat": (4, 2, 4299, 4935, 8000, 3677, 6, "04010700"),
    "dcap-qvl-sample-tdx-quote.bin": (4, 2, 4300, 4936, 5006, 3678, 6, "06010300"),
}


def real(name):
    path = TESTDATA / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: the shared test data must sit beside the checkout")
    return path.read_bytes()


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_quotes_parse_field_by_field(name):
    version, body_type, sig_len, quote_len, file_len, chain_len, isvsvn, svn = REAL[name]
    data = real(name)
    assert len(data) == file_len
    q = Q.parse_quote(data)
    assert (q.version, q.body_type, q.signature_data_len, q.quote_len) == (version, body_type, sig_len, quote_len)
    assert q.trailing_len == file_len - quote_len
    assert q.att_key_type == 2 and q.tee_type == 0x81 and q.header_reserved == bytes(4)
    assert q.qe_vendor_id.hex().upper() == "939A7233F79C4CA9940A0DB3957F0607"
    assert q.cert_type == 6 and q.inner_cert_type == 5 and len(q.qe_auth_data) == 32
    assert len(q.inner_cert_data) == chain_len
    assert q.qe_report_field("mrsigner").hex().upper() == (
        "DC9E2A7C6F948F17474E34A7FC43ED030F7C1563F1BABDDF6340C82E0E54A8C5")
    assert struct.unpack("<HH", q.qe_report[256:260]) == (2, isvsvn)
    assert q.fields["tee_tcb_svn"].hex().startswith(svn) and not any(q.fields["tee_tcb_svn"][4:])
    assert q.fields["mrsignerseam"] == bytes(48) and q.fields["seam_attributes"] == bytes(8)
    # QE REPORTDATA = SHA-256(attestation key || auth data) || 32 zero bytes
    rd = q.qe_report_field("reportdata")
    assert rd[:32] == hashlib.sha256(q.attestation_key + q.qe_auth_data).digest() and rd[32:] == bytes(32)
    chain = [x509.load_pem_x509_certificate(p) for p in q.pck_chain]
    cns = [c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value for c in chain]
    assert cns == ["Intel SGX PCK Certificate", "Intel SGX PCK Platform CA", "Intel SGX Root CA"]
    # offsets of quote.md §5: the signed region ends where signature_data_len sits
    sig_len_off = 632 if version == 4 else 702
    assert struct.unpack_from("<I", data, sig_len_off)[0] == sig_len
    assert len(q.signed_region) == sig_len_off


def test_v5_sample_body_fields_at_their_offsets():
    data = real("quote_v5_sample.dat")
    q = Q.parse_quote(data)
    assert struct.unpack_from("<HI", data, 48) == (3, 648)
    assert q.fields["tee_tcb_svn2"] == data[638:654] and data[638:641].hex() == "0d0104"
    assert q.fields["tee_tcb_svn"] == data[54:70] and q.fields["mrservicetd"] == bytes(48) == data[654:702]
    assert q.tcb_svn_for_level() == q.fields["tee_tcb_svn2"]


def test_spr_e4_user_data_and_attributes():
    q = Q.parse_quote(real("tdx_prod_quote_SPR_E4.dat"))
    assert q.td_attributes == 0x40000000  # SEPT_VE_DISABLE clear (README)
    assert q.user_data[16:] == bytes(4) and any(q.user_data[:16])
    assert Q.parse_quote(real("cos-113-tdx-quote.dat")).user_data == bytes(20)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_quote_signatures_and_qe_report_check_out(name):
    """The quote signature with the embedded key and the QE report signature with the PCK leaf's key
    verify in our verifier's steps (whatever the collateral)."""
    q = Q.parse_quote(real(name))
    assert Q.check_signatures(q) == {"quote_signature": True, "qe_report_signature": True, "qe_report_data": True}
    flipped = bytearray(q.raw)
    flipped[q.body_offset + 520] ^= 1  # one REPORTDATA bit
    assert Q.check_signatures(bytes(flipped))["quote_signature"] is False


@pytest.mark.parametrize("cut, what", [(10, "header"), (600, "signature_data_len"), (900, "signature data")])
def test_truncated_quotes_raise_quote_format_error(cut, what):
    with pytest.raises(Q.QuoteFormatError, match=what):
        Q.parse_quote(real("dcap-qvl-sample-tdx-quote.bin")[:cut])


def test_bad_version_and_body_type_are_named():
    data = bytearray(real("quote_v5_sample.dat"))
    data[0] = 3
    with pytest.raises(Q.QuoteFormatError, match="version 3"):
        Q.parse_quote(bytes(data))
    data[0] = 5
    data[48] = 1
    with pytest.raises(Q.QuoteFormatError, match="body type 1"):
        Q.parse_quote(bytes(data))
    with pytest.raises(TypeError):
        Q.parse_quote("not bytes")


def test_signature_data_len_beyond_the_buffer_is_an_error():
    data = bytearray(real("tdx_prod_quote_SPR_E4.dat"))
    struct.pack_into("<I", data, 632, 10 ** 6)
    with pytest.raises(Q.QuoteFormatError, match="signature_data_len"):
        Q.parse_quote(bytes(data))


def test_json_has_every_field_and_the_raw_quote_only():
    data = real("cos-113-tdx-quote.dat")
    j = Q.parse_quote(data).to_json()
    assert bytes.fromhex(j["raw"]) == data[:4935]
    assert set(j["body"]) == {n for n, _, _ in qa.BODY_FIELDS}
    assert j["trailing_bytes"] == 3065 and "CN=Intel SGX Root CA" in j["pck_chain"][2]
