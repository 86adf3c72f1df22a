"""The emulated platform's PKI: certificates and CRLs as Intel's PCS issues them (host layer).

Per emulated platform: a root CA ("Intel SGX Root CA"), a PCK Platform CA, a PCK leaf carrying the SGX
extension (quote.md §5.6) and a TCB signing certificate, all P-256/ECDSA-SHA256, plus the QE's
attestation key. The common names are Intel's (verifiers look for them, quote.md §6); the
organisation is ``quote_abi.EMULATED_ORGANIZATION``, so no certificate can pass for Intel's. Every
certificate carries AKI, SKI, KeyUsage, BasicConstraints and a CRL distribution point (Intel's QVL
requires all five, quote.md §6). Built with ``cryptography``; the only hand-made DER is the SGX
extension's value (``sgx_extension_der``).
"""

from __future__ import annotations

import datetime as _dt
import secrets
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tdxmodel import quote_abi as qa

#: CRL distribution points. They point at ``tdxmodel pccs`` on its default address (the root's CRL
#: as DER; the PCK CRL on Intel's PCS v4 path with ``ca=platform&encoding=der``).
DEFAULT_PCCS_URL = "http://127.0.0.1:8081"
ROOT_CRL_DP = DEFAULT_PCCS_URL + "/tdxmodel/IntelSGXRootCA.der"
PCK_CRL_DP = DEFAULT_PCCS_URL + qa.PCS_PCK_CRL_PATH + "?ca=platform&encoding=der"
#: Validity of every certificate: from the day Intel's real root starts (2018-05-21, testdata
#: README) so collateral windows in the past can be tested, to before 2050 so the dates stay UTCTime
#: as Intel's do.
NOT_BEFORE = _dt.datetime(2018, 5, 21, tzinfo=_dt.timezone.utc)
NOT_AFTER = _dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=_dt.timezone.utc)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("not a P-256 private key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def name(cn: str) -> x509.Name:
    """Intel's DN shape (quote.md §5.6) with the emulator's organisation."""
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, qa.EMULATED_ORGANIZATION),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ])


# ------------------------------------------------------------------ the SGX extension (DER by hand)
def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    else:
        body = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(body)]) + body
    return bytes([tag]) + length + value


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")  # a leading 0 keeps it positive
    return _tlv(0x02, body)


def _entry(oid: str, value_tlv: bytes) -> bytes:
    return _tlv(0x30, _oid(oid) + value_tlv)


def sgx_extension_der(*, ppid: bytes, components: Sequence[int], pcesvn: int, cpusvn: bytes,
                      pceid: bytes, fmspc: bytes, sgx_type: int) -> bytes:
    """The value of extension 1.2.840.113741.1.13.1 (quote.md §5.6): a SEQUENCE of {OID, value}."""
    if len(ppid) != qa.PPID_LEN or len(pceid) != qa.PCEID_LEN or len(fmspc) != qa.FMSPC_LEN:
        raise ValueError("PPID is 16 bytes, PCE-ID 2, FMSPC 6")
    if len(components) != qa.TCB_COMPONENTS or len(cpusvn) != 16:
        raise ValueError("16 TCB components and a 16-byte CPUSVN")
    tcb = b"".join(_entry(f"{qa.OID_TCB}.{i + 1}", _int(c)) for i, c in enumerate(components))
    tcb += _entry(qa.OID_PCESVN, _int(pcesvn)) + _entry(qa.OID_CPUSVN, _tlv(0x04, bytes(cpusvn)))
    body = (_entry(qa.OID_PPID, _tlv(0x04, bytes(ppid))) + _entry(qa.OID_TCB, _tlv(0x30, tcb))
            + _entry(qa.OID_PCEID, _tlv(0x04, bytes(pceid))) + _entry(qa.OID_FMSPC, _tlv(0x04, bytes(fmspc)))
            + _entry(qa.OID_SGX_TYPE, _tlv(0x0A, bytes([sgx_type]))))
    return _tlv(0x30, body)


# ------------------------------------------------------------------ certificates and CRLs
def _serial() -> int:
    return secrets.randbits(127) | 1  # positive, non-zero, fits in 16 bytes


def make_cert(*, cn: str, public_key: ec.EllipticCurvePublicKey, issuer: Optional[x509.Certificate],
              issuer_key: ec.EllipticCurvePrivateKey, ca: bool, path_length: Optional[int],
              crl_dp: str, not_before: _dt.datetime, serial: Optional[int] = None,
              extra: Iterable[x509.ExtensionType] = ()) -> x509.Certificate:
    """One certificate with the five extensions every Intel SGX certificate has (quote.md §6)."""
    subject = name(cn)
    issuer_name = issuer.subject if issuer is not None else subject
    issuer_pub = issuer.public_key() if issuer is not None else public_key
    ku = dict(digital_signature=not ca, content_commitment=not ca, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
              encipher_only=False, decipher_only=False)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(public_key)
         .serial_number(serial or _serial()).not_valid_before(not_before).not_valid_after(NOT_AFTER)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
         .add_extension(x509.KeyUsage(**ku), critical=True)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
         .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
             full_name=[x509.UniformResourceIdentifier(crl_dp)], relative_name=None, reasons=None,
             crl_issuer=None)]), critical=False))
    for ext in extra:
        b = b.add_extension(ext, critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_crl(*, issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, number: int,
             last_update: _dt.datetime, next_update: _dt.datetime,
             revoked_serials: Sequence[int] = ()) -> bytes:
    """A DER CRL with the CRL Number and AKI extensions verifiers require (quote.md §5.5 step 1)."""
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
         .last_update(last_update).next_update(next_update)
         .add_extension(x509.CRLNumber(number), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False))
    for serial in revoked_serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(last_update).build())
    return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@dataclass
class Pki:
    """The platform's keys and certificates, loaded once."""

    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    pck_ca_key: ec.EllipticCurvePrivateKey
    pck_ca_cert: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck_cert: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb_cert: x509.Certificate
    attestation_key: ec.EllipticCurvePrivateKey

    #: (file stem, attribute) of every key and certificate, as stored in the state directory.
    KEYS = (("root_ca", "root_key"), ("pck_platform_ca", "pck_ca_key"), ("pck", "pck_key"),
            ("tcb_signing", "tcb_key"), ("attestation", "attestation_key"))
    CERTS = (("root_ca", "root_cert"), ("pck_platform_ca", "pck_ca_cert"), ("pck", "pck_cert"),
             ("tcb_signing", "tcb_cert"))

    def pck_chain_pem(self) -> bytes:
        """The inner type-5 certification data: leaf || PCK Platform CA || root (quote.md §5.4)."""
        return cert_pem(self.pck_cert) + cert_pem(self.pck_ca_cert) + cert_pem(self.root_cert)

    def tcb_chain_pem(self) -> str:
        return (cert_pem(self.tcb_cert) + cert_pem(self.root_cert)).decode()

    def pck_crl_chain_pem(self) -> str:
        return (cert_pem(self.pck_ca_cert) + cert_pem(self.root_cert)).decode()

    def root_der(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.DER)


def issue_pck(pki_root_ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, pck_ca_cert: x509.Certificate,
              pck_public: ec.EllipticCurvePublicKey, not_before: _dt.datetime, ext_der: bytes) -> x509.Certificate:
    del pki_root_ca
    return make_cert(cn=qa.CN_PCK_CERT, public_key=pck_public, issuer=pck_ca_cert, issuer_key=ca_key,
                     ca=False, path_length=None, crl_dp=PCK_CRL_DP, not_before=not_before,
                     extra=[x509.UnrecognizedExtension(x509.ObjectIdentifier(qa.SGX_EXTENSION_OID), ext_der)])


def new_pki(not_before: _dt.datetime, pck_ext_der: bytes) -> Pki:
    """A fresh PKI: new keys, the root, the PCK Platform CA, the PCK leaf and the TCB signing cert."""
    root_key, ca_key, pck_key, tcb_key, att_key = (new_key() for _ in range(5))
    root = make_cert(cn=qa.CN_ROOT_CA, public_key=root_key.public_key(), issuer=None, issuer_key=root_key,
                     ca=True, path_length=1, crl_dp=ROOT_CRL_DP, not_before=not_before)
    ca = make_cert(cn=qa.CN_PCK_PLATFORM_CA, public_key=ca_key.public_key(), issuer=root, issuer_key=root_key,
                   ca=True, path_length=0, crl_dp=ROOT_CRL_DP, not_before=not_before)
    pck = issue_pck(root, ca_key, ca, pck_key.public_key(), not_before, pck_ext_der)
    tcb = make_cert(cn=qa.CN_TCB_SIGNING, public_key=tcb_key.public_key(), issuer=root, issuer_key=root_key,
                    ca=False, path_length=None, crl_dp=ROOT_CRL_DP, not_before=not_before)
    return Pki(root_key, root, ca_key, ca, pck_key, pck, tcb_key, tcb, att_key)


def chain_list(pem: bytes) -> List[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)
