"""DCAP TD quotes v4 and v5: parsing, collateral, and verification (layer 3).

* ``parse_quote(data) -> Quote``: any DCAP TD quote v4 or v5 (body type 2 or 3), real ones included.
  The quote's length comes from ``signature_data_len`` (quote.md §5.2), never from the buffer's, so
  trailing bytes after the quote are allowed and reported (quote.md §5.4 "Trailing bytes").
* ``Collateral``: what a verifier needs besides the quote and the root, in dcap-qvl's
  ``QuoteCollateralV3`` shape (quote.md §6): PEM issuer chains, DER CRLs, the exact signed bytes of
  TCB Info and QE identity and their r||s signatures. ``Collateral.load(path)`` reads a dcap-qvl
  collateral JSON file or a directory exported by ``tdxmodel collateral export``.
* ``verify(quote, collateral, root, now) -> VerifyResult``: every step of quote.md §5.5, as a pipeline
  of named steps (``STEPS``), in dcap-qvl's order where the reference leaves the order open. The
  result carries the TCB status, the advisory IDs, the failing step (None on success) and a
  one-line reason. Verification failures are results, not exceptions; input that is not a quote or
  collateral at all raises ``QuoteFormatError`` / ``CollateralError`` (``ValueError``).

X.509, CRLs and ECDSA go through the ``cryptography`` package; the only hand-made DER is the value
of the PCK SGX extension (quote.md §5.6), parsed here by a small reader.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import pathlib
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tdxmodel import quote_abi as qa

BytesLike = Union[bytes, bytearray, memoryview]
TimeLike = Union[int, float, str, _dt.datetime, None]


class QuoteFormatError(ValueError):
    """The bytes are not a DCAP TD quote this parser can read; the message says where."""


class CollateralError(ValueError):
    """The collateral cannot be read (not the same as collateral that fails verification)."""


# =============================================================================== parsing
def _u16(b: bytes, off: int) -> int:
    return struct.unpack_from("<H", b, off)[0]


def _u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def split_pem_chain(pem: Union[bytes, str]) -> List[bytes]:
    """split_pem_chain(pem) -> list of PEM certificate blocks, in order (NULs and text between ignored)."""
    data = pem.encode() if isinstance(pem, str) else bytes(pem)
    return [m.group(0) + b"\n" for m in _PEM_CERT.finditer(data)]


@dataclass(frozen=True)
class Quote:
    """A parsed quote. ``raw`` is exactly the quote (``quote_len`` bytes); byte fields are bytes."""

    raw: bytes
    version: int
    att_key_type: int
    tee_type: int
    header_reserved: bytes
    qe_vendor_id: bytes
    user_data: bytes
    body_type: int                 # v4: 2 (a TDX 1.0 body); v5: the type field
    body_size: int
    body_offset: int
    body: bytes
    fields: Dict[str, bytes]       # the body fields of quote.md §5.2, by name
    signature_data_len: int
    signature_data_offset: int
    signature: bytes
    attestation_key: bytes
    cert_type: int
    cert_size: int
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    inner_cert_type: int
    inner_cert_data: bytes
    trailing_len: int              # bytes after the quote in the buffer it was parsed from

    @property
    def quote_len(self) -> int:
        return len(self.raw)

    @property
    def signed_region(self) -> bytes:
        """Everything before signature_data_len (quote.md §5.3): [0, 632) v4, [0, 54 + size) v5."""
        return self.raw[: self.signature_data_offset - 4]

    @property
    def pck_chain(self) -> List[bytes]:
        """The inner type-5 PEM chain, leaf first (empty for another inner type)."""
        if self.inner_cert_type != qa.CERT_TYPE_PCK_CERT_CHAIN:
            return []
        return split_pem_chain(self.inner_cert_data)

    def qe_report_field(self, name: str) -> bytes:
        spans = {"cpusvn": (qa.QER_OFF_CPUSVN, 16), "miscselect": (qa.QER_OFF_MISCSELECT, 4),
                 "attributes": (qa.QER_OFF_ATTRIBUTES, 16), "mrenclave": (qa.QER_OFF_MRENCLAVE, 32),
                 "mrsigner": (qa.QER_OFF_MRSIGNER, 32), "isvprodid": (qa.QER_OFF_ISVPRODID, 2),
                 "isvsvn": (qa.QER_OFF_ISVSVN, 2), "reportdata": (qa.QER_OFF_REPORTDATA, 64)}
        off, size = spans[name]
        return self.qe_report[off:off + size]

    @property
    def reportdata(self) -> bytes:
        return self.fields["reportdata"]

    @property
    def td_attributes(self) -> int:
        return int.from_bytes(self.fields["td_attributes"], "little")

    def tcb_svn_for_level(self) -> bytes:
        """The TEE_TCB_SVN TCB levels are matched against: TEE_TCB_SVN2 for a type-3 body, as dcap-qvl
        0.7.0 does (quote.md §5.5 step 9), else TEE_TCB_SVN."""
        if self.body_type == qa.BODY_TYPE_TD15:
            return self.fields["tee_tcb_svn2"]
        return self.fields["tee_tcb_svn"]

    def to_json(self) -> Dict[str, Any]:
        """Every decoded field (bytes as hex), the PCK chain's subjects, and ``raw`` (the quote)."""
        qe = {name: self.qe_report_field(name).hex() for name in
              ("cpusvn", "miscselect", "attributes", "mrenclave", "mrsigner", "reportdata")}
        qe["isvprodid"] = _u16(self.qe_report, qa.QER_OFF_ISVPRODID)
        qe["isvsvn"] = _u16(self.qe_report, qa.QER_OFF_ISVSVN)
        chain = []
        for pem in self.pck_chain:
            try:
                chain.append(x509.load_pem_x509_certificate(pem).subject.rfc4514_string())
            except ValueError:
                chain.append(None)
        return {
            "version": self.version, "att_key_type": self.att_key_type, "tee_type": self.tee_type,
            "header_reserved": self.header_reserved.hex(), "qe_vendor_id": self.qe_vendor_id.hex(),
            "user_data": self.user_data.hex(), "body_type": self.body_type, "body_size": self.body_size,
            "body_offset": self.body_offset,
            "body": {k: v.hex() for k, v in self.fields.items()},
            "signature_data_len": self.signature_data_len, "quote_len": self.quote_len,
            "trailing_bytes": self.trailing_len,
            "signature": self.signature.hex(), "attestation_key": self.attestation_key.hex(),
            "cert_type": self.cert_type, "cert_size": self.cert_size, "qe_report": qe,
            "qe_report_signature": self.qe_report_signature.hex(), "qe_auth_data": self.qe_auth_data.hex(),
            "inner_cert_type": self.inner_cert_type, "inner_cert_size": len(self.inner_cert_data),
            "pck_chain": chain, "raw": self.raw.hex(),
        }


def parse_quote(data: BytesLike) -> Quote:
    """parse_quote(data) -> Quote. Raises QuoteFormatError naming the offset that does not fit."""
    if isinstance(data, Quote):
        return data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"quote must be bytes, not {type(data).__name__}")
    b = bytes(data)

    def need(end: int, what: str) -> None:
        if len(b) < end:
            raise QuoteFormatError(f"truncated quote: {what} needs bytes up to {end}, the data has {len(b)}")

    need(qa.HEADER_LEN, "the header")
    version = _u16(b, qa.HDR_OFF_VERSION)
    if version == qa.QUOTE_VERSION_4:
        body_type, body_off, body_size = qa.BODY_TYPE_TD10, qa.V4_BODY_OFF, qa.TD10_BODY_LEN
    elif version == qa.QUOTE_VERSION_5:
        need(qa.V5_BODY_OFF, "the v5 body type and size")
        body_type, body_size = _u16(b, qa.V5_BODY_TYPE_OFF), _u32(b, qa.V5_BODY_SIZE_OFF)
        if body_type not in (qa.BODY_TYPE_TD10, qa.BODY_TYPE_TD15):
            raise QuoteFormatError(f"v5 body type {body_type} at offset {qa.V5_BODY_TYPE_OFF} is not a TD "
                                   f"report (2 or 3)")
        if body_size != qa.BODY_SIZES[body_type]:
            raise QuoteFormatError(f"v5 body size {body_size} at offset {qa.V5_BODY_SIZE_OFF} is not "
                                   f"{qa.BODY_SIZES[body_type]} for body type {body_type}")
        body_off = qa.V5_BODY_OFF
    else:
        raise QuoteFormatError(f"quote version {version} at offset 0 is not 4 or 5")
    sig_len_off = body_off + body_size
    need(sig_len_off + 4, "signature_data_len")
    sig_len = _u32(b, sig_len_off)
    sd = sig_len_off + 4
    end = sd + sig_len
    need(end, f"signature data of signature_data_len {sig_len} (offset {sig_len_off})")
    if sig_len < qa.SD_OFF_QE_AUTH_DATA:
        raise QuoteFormatError(f"signature_data_len {sig_len} is too small for the ECDSA signature data")
    body = b[body_off:sig_len_off]
    fields = {name: body[off:off + size] for name, off, size in qa.BODY_FIELDS}
    if body_type == qa.BODY_TYPE_TD15:
        fields.update({name: body[off:off + size] for name, off, size in qa.BODY_FIELDS_TD15})
    cert_type = _u16(b, sd + qa.SD_OFF_CERT_TYPE)
    cert_size = _u32(b, sd + qa.SD_OFF_CERT_SIZE)
    cert_end = sd + qa.SD_OFF_QE_REPORT + cert_size
    if cert_end > end:
        raise QuoteFormatError(f"certification data size {cert_size} (offset {sd + qa.SD_OFF_CERT_SIZE}) "
                               f"runs past the end of the signature data at {end}")
    if cert_type != qa.CERT_TYPE_QE_REPORT:
        # Only type 6 (QE report certification data) is defined for v4/v5 (quote.md §5.4).
        raise QuoteFormatError(f"outer certification data type {cert_type} at offset "
                               f"{sd + qa.SD_OFF_CERT_TYPE} is not 6 (QE report)")
    if cert_size < qa.SD_OFF_QE_AUTH_DATA - qa.SD_OFF_QE_REPORT:
        raise QuoteFormatError(f"certification data size {cert_size} is too small for a QE report")
    auth_size = _u16(b, sd + qa.SD_OFF_QE_AUTH_SIZE)
    auth_end = sd + qa.SD_OFF_QE_AUTH_DATA + auth_size
    if auth_end + 6 > cert_end:
        raise QuoteFormatError(f"QE auth data size {auth_size} (offset {sd + qa.SD_OFF_QE_AUTH_SIZE}) leaves "
                               f"no room for the inner certification data")
    inner_type = _u16(b, auth_end)
    inner_size = _u32(b, auth_end + 2)
    if auth_end + 6 + inner_size > cert_end:
        raise QuoteFormatError(f"inner certification data size {inner_size} (offset {auth_end + 2}) runs past "
                               f"the outer certification data")
    return Quote(
        raw=b[:end], version=version, att_key_type=_u16(b, qa.HDR_OFF_ATT_KEY_TYPE),
        tee_type=_u32(b, qa.HDR_OFF_TEE_TYPE),
        header_reserved=b[qa.HDR_OFF_RESERVED:qa.HDR_OFF_RESERVED + qa.HDR_RESERVED_LEN],
        qe_vendor_id=b[qa.HDR_OFF_VENDOR_ID:qa.HDR_OFF_VENDOR_ID + qa.HDR_VENDOR_ID_LEN],
        user_data=b[qa.HDR_OFF_USER_DATA:qa.HDR_OFF_USER_DATA + qa.HDR_USER_DATA_LEN],
        body_type=body_type, body_size=body_size, body_offset=body_off, body=body, fields=fields,
        signature_data_len=sig_len, signature_data_offset=sd,
        signature=b[sd + qa.SD_OFF_SIGNATURE:sd + qa.SD_OFF_SIGNATURE + qa.SIG_LEN],
        attestation_key=b[sd + qa.SD_OFF_ATT_KEY:sd + qa.SD_OFF_ATT_KEY + qa.ATT_KEY_LEN],
        cert_type=cert_type, cert_size=cert_size,
        qe_report=b[sd + qa.SD_OFF_QE_REPORT:sd + qa.SD_OFF_QE_REPORT + qa.QE_REPORT_LEN],
        qe_report_signature=b[sd + qa.SD_OFF_QE_REPORT_SIG:sd + qa.SD_OFF_QE_REPORT_SIG + qa.SIG_LEN],
        qe_auth_data=b[sd + qa.SD_OFF_QE_AUTH_DATA:auth_end],
        inner_cert_type=inner_type, inner_cert_data=b[auth_end + 6:auth_end + 6 + inner_size],
        trailing_len=len(b) - end,
    )


# =============================================================================== PCK extension
def _der_read(b: bytes, off: int) -> Tuple[int, bytes, int]:
    """One DER TLV at ``off``: (tag, value, next offset). Definite lengths only (DER)."""
    if off + 2 > len(b):
        raise ValueError("truncated DER")
    tag, length = b[off], b[off + 1]
    off += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or off + n > len(b):
            raise ValueError("bad DER length")
        length = int.from_bytes(b[off:off + n], "big")
        off += n
    if off + length > len(b):
        raise ValueError("truncated DER value")
    return tag, b[off:off + length], off + length


def _der_oid(value: bytes) -> str:
    first = value[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    n = 0
    for byte in value[1:]:
        n = (n << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(n)
            n = 0
    return ".".join(map(str, parts))


def _der_items(seq_value: bytes) -> List[Tuple[int, bytes]]:
    out, off = [], 0
    while off < len(seq_value):
        tag, value, off = _der_read(seq_value, off)
        out.append((tag, value))
    return out


@dataclass(frozen=True)
class PckExtension:
    """The PCK certificate's SGX extension (quote.md §5.6)."""

    ppid: bytes
    components: Tuple[int, ...]   # .2.1 .. .2.16
    pcesvn: int
    cpusvn: bytes
    pceid: bytes
    fmspc: bytes
    sgx_type: int


def parse_pck_extension(cert: x509.Certificate) -> PckExtension:
    """The SGX extension of a PCK certificate; ValueError if it is missing or malformed."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(qa.SGX_EXTENSION_OID))
    except x509.ExtensionNotFound:
        raise ValueError(f"no SGX extension ({qa.SGX_EXTENSION_OID})") from None
    raw = ext.value.value  # UnrecognizedExtension: the DER of the extension value
    tag, seq, _ = _der_read(raw, 0)
    if tag != 0x30:
        raise ValueError("SGX extension is not a SEQUENCE")
    found: Dict[str, Tuple[int, bytes]] = {}
    for t, item in _der_items(seq):
        pair = _der_items(item)
        if t != 0x30 or len(pair) != 2 or pair[0][0] != 0x06:
            raise ValueError("SGX extension entry is not {OID, value}")
        found[_der_oid(pair[0][1])] = pair[1]
    for oid in (qa.OID_PPID, qa.OID_TCB, qa.OID_PCEID, qa.OID_FMSPC, qa.OID_SGX_TYPE):
        if oid not in found:
            raise ValueError(f"SGX extension lacks {oid}")
    tcb: Dict[str, Tuple[int, bytes]] = {}
    for t, item in _der_items(found[qa.OID_TCB][1]):
        pair = _der_items(item)
        if t != 0x30 or len(pair) != 2 or pair[0][0] != 0x06:
            raise ValueError("SGX TCB entry is not {OID, value}")
        tcb[_der_oid(pair[0][1])] = pair[1]
    comps = []
    for i in range(1, qa.TCB_COMPONENTS + 1):
        tv = tcb.get(f"{qa.OID_TCB}.{i}")
        if tv is None or tv[0] != 0x02:
            raise ValueError(f"SGX TCB lacks component {i}")
        comps.append(int.from_bytes(tv[1], "big"))
    pcesvn, cpusvn = tcb.get(qa.OID_PCESVN), tcb.get(qa.OID_CPUSVN)
    if pcesvn is None or cpusvn is None or len(cpusvn[1]) != 16:
        raise ValueError("SGX TCB lacks PCESVN or CPUSVN")
    return PckExtension(ppid=found[qa.OID_PPID][1], components=tuple(comps),
                        pcesvn=int.from_bytes(pcesvn[1], "big"), cpusvn=cpusvn[1],
                        pceid=found[qa.OID_PCEID][1], fmspc=found[qa.OID_FMSPC][1],
                        sgx_type=int.from_bytes(found[qa.OID_SGX_TYPE][1], "big"))


# =============================================================================== collateral
@dataclass
class Collateral:
    """Collateral in dcap-qvl's QuoteCollateralV3 shape (quote.md §6)."""

    pck_crl_issuer_chain: str
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: str
    tcb_info: str                 # the exact signed bytes of the tcbInfo object
    tcb_info_signature: bytes     # r||s
    qe_identity_issuer_chain: str
    qe_identity: str              # the exact signed bytes of the enclaveIdentity object
    qe_identity_signature: bytes

    def to_dcap_qvl_dict(self) -> Dict[str, str]:
        return {"pck_crl_issuer_chain": self.pck_crl_issuer_chain, "root_ca_crl": self.root_ca_crl.hex(),
                "pck_crl": self.pck_crl.hex(), "tcb_info_issuer_chain": self.tcb_info_issuer_chain,
                "tcb_info": self.tcb_info, "tcb_info_signature": self.tcb_info_signature.hex(),
                "qe_identity_issuer_chain": self.qe_identity_issuer_chain, "qe_identity": self.qe_identity,
                "qe_identity_signature": self.qe_identity_signature.hex()}

    def to_dcap_qvl_json(self) -> str:
        return json.dumps(self.to_dcap_qvl_dict())

    @classmethod
    def from_dcap_qvl_json(cls, text: Union[str, bytes]) -> "Collateral":
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise CollateralError(f"collateral is not JSON: {' '.join(str(e).split())}") from None
        if not isinstance(d, dict):
            raise CollateralError("collateral JSON is not an object")
        missing = [k for k in qa.DCAP_QVL_COLLATERAL_KEYS if not isinstance(d.get(k), str)]
        if missing:
            raise CollateralError(f"collateral JSON lacks {', '.join(missing)}")
        try:
            return cls(pck_crl_issuer_chain=d["pck_crl_issuer_chain"],
                       root_ca_crl=bytes.fromhex(d["root_ca_crl"]), pck_crl=bytes.fromhex(d["pck_crl"]),
                       tcb_info_issuer_chain=d["tcb_info_issuer_chain"], tcb_info=d["tcb_info"],
                       tcb_info_signature=bytes.fromhex(d["tcb_info_signature"]),
                       qe_identity_issuer_chain=d["qe_identity_issuer_chain"], qe_identity=d["qe_identity"],
                       qe_identity_signature=bytes.fromhex(d["qe_identity_signature"]))
        except ValueError:
            raise CollateralError("collateral JSON: a CRL or signature is not hex") from None

    @classmethod
    def from_pcs_bodies(cls, *, tcb_body: str, tcb_chain: str, qe_body: str, qe_chain: str,
                        pck_crl: bytes, pck_crl_chain: str, root_ca_crl: bytes) -> "Collateral":
        """From PCS/PCCS responses: the bodies ``{"tcbInfo": ..., "signature": ...}`` and
        ``{"enclaveIdentity": ..., "signature": ...}``; the signed bytes are cut out verbatim."""
        tcb, tcb_sig = _signed_member(tcb_body, "tcbInfo")
        qe, qe_sig = _signed_member(qe_body, "enclaveIdentity")
        return cls(pck_crl_issuer_chain=pck_crl_chain, root_ca_crl=root_ca_crl, pck_crl=pck_crl,
                   tcb_info_issuer_chain=tcb_chain, tcb_info=tcb, tcb_info_signature=tcb_sig,
                   qe_identity_issuer_chain=qe_chain, qe_identity=qe, qe_identity_signature=qe_sig)

    @classmethod
    def load(cls, path: Union[str, pathlib.Path]) -> "Collateral":
        """A dcap-qvl collateral JSON file, or a directory from ``tdxmodel collateral export``
        (either format: ``collateral.json``, or the files named in ``FILES``)."""
        p = pathlib.Path(path)
        try:
            if p.is_dir():
                if (p / "collateral.json").is_file():
                    return cls.from_dcap_qvl_json((p / "collateral.json").read_text())
                return cls.from_directory(p)
            return cls.from_dcap_qvl_json(p.read_text())
        except FileNotFoundError as e:
            raise CollateralError(f"{e.filename}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise CollateralError(f"{p}: cannot read collateral: {getattr(e, 'strerror', None) or e}") from None

    @classmethod
    def from_directory(cls, d: pathlib.Path) -> "Collateral":
        f = FILES
        return cls.from_pcs_bodies(
            tcb_body=(d / f["tcb_info"]).read_text(), tcb_chain=(d / f["tcb_info_issuer_chain"]).read_text(),
            qe_body=(d / f["qe_identity"]).read_text(), qe_chain=(d / f["qe_identity_issuer_chain"]).read_text(),
            pck_crl=(d / f["pck_crl"]).read_bytes(), pck_crl_chain=(d / f["pck_crl_issuer_chain"]).read_text(),
            root_ca_crl=(d / f["root_ca_crl"]).read_bytes())


#: File names of ``tdxmodel collateral export --format files`` (README "Quotes and verification").
FILES: Dict[str, str] = {
    "root_ca": "root_ca.pem",
    "root_ca_der": "root_ca.der",
    "root_ca_crl": "root_ca_crl.der",
    "pck_crl": "pck_crl.der",
    "pck_crl_issuer_chain": "pck_crl_issuer_chain.pem",
    "tcb_info": "tcb_info.json",
    "tcb_info_issuer_chain": "tcb_info_issuer_chain.pem",
    "qe_identity": "qe_identity.json",
    "qe_identity_issuer_chain": "qe_identity_issuer_chain.pem",
}


def _signed_member(body: str, key: str) -> Tuple[str, bytes]:
    """Cut the value of ``key`` out of a PCS body verbatim (the signature covers those exact bytes)."""
    try:
        doc = json.loads(body)
        sig = bytes.fromhex(doc["signature"])
        inner = doc[key]
    except (ValueError, KeyError, TypeError):
        raise CollateralError(f"not a signed PCS body with {key!r} and 'signature'") from None
    m = re.search(r'"%s"\s*:\s*' % re.escape(key), body)
    if m is None:
        raise CollateralError(f"no {key!r} member")
    decoder = json.JSONDecoder()
    _, end = decoder.raw_decode(body, m.end())
    raw = body[m.end():end]
    if json.loads(raw) != inner:
        raise CollateralError(f"cannot cut {key!r} out verbatim")
    return raw, sig


# =============================================================================== time
def parse_time(value: TimeLike) -> _dt.datetime:
    """ISO 8601 (``Z`` or an offset; naive means UTC), seconds since the epoch, a datetime, or None
    (now) -> an aware UTC datetime. ValueError for anything else."""
    if value is None:
        return _dt.datetime.now(_dt.timezone.utc)
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    text = str(value).strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return _dt.datetime.fromtimestamp(float(text), _dt.timezone.utc)
    try:
        t = _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or seconds since the epoch: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def format_time(t: _dt.datetime) -> str:
    """The PCS form: ``2025-06-19T10:16:03Z``."""
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# =============================================================================== verification
#: The pipeline (quote.md §5.5): (step name, what it checks).
STEPS: Tuple[Tuple[str, str], ...] = (
    ("quote_format", "header: version 4/5, ECDSA-P256 key type, TDX tee_type, Intel's QE vendor id; "
                     "certification data type 6 holding a type-5 PCK chain"),
    ("pck_chain", "PCK chain to the root: CNs, signatures, validity, root CA CRL and PCK CRL (signed, "
                  "in date, CRL Number and AKI), leaf not revoked"),
    ("tcb_info", "TCB Info signed by an SGX TCB Signing certificate under the root; id TDX, version >= 3, "
                 "issueDate <= now <= nextUpdate"),
    ("fmspc_pceid", "the PCK extension's FMSPC and PCE-ID equal TCB Info's"),
    ("tdx_module", "MRSIGNERSEAM and SEAMATTRIBUTES match tdxModule / tdxModuleIdentities"),
    ("qe_report_signature", "the QE report is signed by the PCK key"),
    ("qe_report_data", "QE REPORTDATA[0..32) = SHA-256(attestation key || QE auth data)"),
    ("qe_identity", "QE identity signed under the root, in date, id TD_QE version 2 (or 3); MRSIGNER, "
                    "ISVPRODID, MISCSELECT and ATTRIBUTES under their masks; ISVSVN gives the QE status"),
    ("quote_signature", "the quote's signature over the signed region with the attestation key"),
    ("tcb_level", "the first TCB level the PCK TCB and TEE_TCB_SVN reach gives the status (merged with "
                  "the QE and module statuses); Revoked fails"),
    ("td_attributes", "dcap-qvl's policy: no reserved TD attribute bits, DEBUG off, SEPT_VE_DISABLE on, "
                      "MRSERVICETD zero"),
)
STEP_NAMES: Tuple[str, ...] = tuple(name for name, _ in STEPS)


@dataclass
class VerifyResult:
    """status: the merged TCB status (None if verification stopped before the TCB level);
    failed_step: a name from STEP_NAMES or None; reason: one line."""

    status: Optional[str]
    advisory_ids: List[str]
    failed_step: Optional[str]
    reason: str
    steps_passed: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed_step is None

    def to_json(self) -> Dict[str, Any]:
        return {"status": self.status, "advisory_ids": list(self.advisory_ids),
                "failed_step": self.failed_step, "reason": self.reason, "steps_passed": list(self.steps_passed)}


class _StepFailed(Exception):
    pass


def _fail(msg: str) -> None:
    raise _StepFailed(msg)


def _load_cert(data: Union[bytes, str, x509.Certificate]) -> x509.Certificate:
    if isinstance(data, x509.Certificate):
        return data
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if b"-----BEGIN CERTIFICATE-----" in raw:
        return x509.load_pem_x509_certificate(split_pem_chain(raw)[0])
    return x509.load_der_x509_certificate(raw)


def load_root(root: Union[bytes, str, x509.Certificate, pathlib.Path]) -> x509.Certificate:
    """A root CA from DER or PEM bytes, a certificate, or a path to either; ValueError otherwise."""
    if isinstance(root, pathlib.Path):
        root = root.read_bytes()
    try:
        return _load_cert(root)
    except (ValueError, IndexError):
        raise ValueError("the root is not a PEM or DER X.509 certificate") from None


# Signature checks over identical bytes give identical answers, so they are memoised: the PCK chain,
# the collateral's chains, CRLs and signed JSON are the same from one quote to the next, and only the
# quote's own signature is new. Time-dependent checks (validity, dates, revocation) always run. Keys
# are the exact bytes, or ids of certificate objects the cache itself keeps alive.
_MEMO: Dict[Any, Any] = {}
_MEMO_MAX = 4096


def _memo(key: Any, compute: Callable[[], Any], *keep: Any) -> Any:
    hit = _MEMO.get(key)
    if hit is not None:
        return hit[0]
    value = compute()
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[key] = (value, keep)
    return value


def _parse_chain(pem: Union[str, bytes]) -> Any:
    blocks = split_pem_chain(pem)
    if not blocks:
        return "no certificates"
    try:
        return tuple(x509.load_pem_x509_certificate(b) for b in blocks)
    except ValueError as e:
        return f"a certificate does not parse ({' '.join(str(e).split())[:80]})"


def _chain(pem: Union[str, bytes], what: str) -> List[x509.Certificate]:
    got = _memo(("chain", pem), lambda: _parse_chain(pem))
    if isinstance(got, str):
        _fail(f"{what}: {got}")
    return list(got)


def _cn(cert: x509.Certificate) -> str:
    def compute() -> str:
        attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else ""
    return _memo(("cn", id(cert)), compute, cert)


def _fingerprint(cert: x509.Certificate) -> bytes:
    return _memo(("fp", id(cert)), lambda: cert.fingerprint(hashes.SHA256()), cert)


def _ecdsa_ok(key: Any, sig_rs: bytes, data: bytes) -> bool:
    if len(sig_rs) != 64 or not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    der = encode_dss_signature(int.from_bytes(sig_rs[:32], "big"), int.from_bytes(sig_rs[32:], "big"))
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    def compute() -> bool:
        try:
            cert.verify_directly_issued_by(issuer)
            return True
        except (ValueError, TypeError, InvalidSignature):
            return False
    return _memo(("issued", id(cert), id(issuer)), compute, cert, issuer)


def _signed_by(cert: x509.Certificate, sig_rs: bytes, data: bytes) -> bool:
    """ECDSA r||s over ``data`` with ``cert``'s key (memoised)."""
    return _memo(("signed", id(cert), bytes(sig_rs), bytes(data)),
                 lambda: _ecdsa_ok(cert.public_key(), sig_rs, data), cert)


class _Context:
    """What the steps share: parsed inputs and intermediate results."""

    def __init__(self, quote: Quote, coll: Collateral, root: x509.Certificate, now: _dt.datetime) -> None:
        self.quote, self.coll, self.root, self.now = quote, coll, root, now
        self.root_crl: Optional[x509.CertificateRevocationList] = None
        self.pck_crl: Optional[x509.CertificateRevocationList] = None
        self.pck_leaf: Optional[x509.Certificate] = None
        self.pck_ext: Optional[PckExtension] = None
        self.tcb_info: Dict[str, Any] = {}
        self.qe_identity: Dict[str, Any] = {}
        self.module_status: Optional[Tuple[str, List[str]]] = None
        self.qe_status: Optional[Tuple[str, List[str]]] = None
        self.status: Optional[str] = None
        self.advisory_ids: List[str] = []

    # ---------------------------------------------------------------- shared checks
    def check_validity(self, cert: x509.Certificate, what: str) -> None:
        if self.now < cert.not_valid_before_utc:
            _fail(f"{what} is not valid before {format_time(cert.not_valid_before_utc)}")
        if self.now > cert.not_valid_after_utc:
            _fail(f"{what} expired at {format_time(cert.not_valid_after_utc)}")

    def check_crl(self, der: bytes, issuer: x509.Certificate, what: str) -> x509.CertificateRevocationList:
        def compute() -> Any:
            try:
                crl = x509.load_der_x509_crl(der)
            except ValueError:
                return "is not a DER CRL"
            if crl.issuer != issuer.subject:
                return f"is issued by {crl.issuer.rfc4514_string()}, not {issuer.subject.rfc4514_string()}"
            if not crl.is_signature_valid(issuer.public_key()):
                return f"signature does not verify with {_cn(issuer)!r}'s key"
            for ext_cls, name in ((x509.CRLNumber, "CRL Number"), (x509.AuthorityKeyIdentifier, "AKI")):
                try:
                    crl.extensions.get_extension_for_class(ext_cls)
                except x509.ExtensionNotFound:
                    return f"lacks the {name} extension"
            return crl
        crl = _memo(("crl", bytes(der), id(issuer)), compute, issuer)
        if isinstance(crl, str):
            _fail(f"{what} {crl}" if not crl.startswith("signature") else f"{what}: {crl}")
        if self.now < crl.last_update_utc:
            _fail(f"{what} is not valid before {format_time(crl.last_update_utc)}")
        if crl.next_update_utc is not None and self.now >= crl.next_update_utc:
            _fail(f"{what} expired at {format_time(crl.next_update_utc)} (CRL nextUpdate)")
        return crl

    def check_not_revoked(self, cert: x509.Certificate, crl: x509.CertificateRevocationList, what: str) -> None:
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            _fail(f"{what} (serial {cert.serial_number:x}) is revoked by the CRL of {crl.issuer.rfc4514_string()}")

    def signing_chain(self, pem: str, what: str, leaf_cn_part: str) -> x509.Certificate:
        """A collateral issuer chain (leaf first) that ends at our root: returns the leaf."""
        certs = _chain(pem, what)
        leaf = certs[0]
        if leaf_cn_part not in _cn(leaf):
            _fail(f"{what}: leaf CN {_cn(leaf)!r} does not contain {leaf_cn_part!r}")
        path = [c for c in certs if _fingerprint(c) != _fingerprint(self.root)]
        issuer = self.root
        for cert in reversed(path):
            if not _issued_by(cert, issuer):
                _fail(f"{what}: {_cn(cert)!r} is not signed by {_cn(issuer)!r} (another root?)")
            self.check_validity(cert, f"{what}: {_cn(cert)!r}")
            crl = self.root_crl if issuer is self.root else self.pck_crl
            if crl is not None and crl.issuer == issuer.subject:
                self.check_not_revoked(cert, crl, f"{what}: {_cn(cert)!r}")
            issuer = cert
        return leaf

    def signed_json(self, text: str, sig: bytes, leaf: x509.Certificate, what: str) -> Dict[str, Any]:
        if not _signed_by(leaf, sig, text.encode()):
            _fail(f"{what}: signature does not verify with {_cn(leaf)!r}'s key")

        def load() -> Any:
            try:
                doc = json.loads(text)
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None
        doc = _memo(("json", text), load)
        if doc is None:
            _fail(f"{what} is not a JSON object")
        return doc  # shared with the memo: the steps only read it

    def check_dates(self, doc: Dict[str, Any], what: str) -> None:
        try:
            issue, nxt = parse_time(doc["issueDate"]), parse_time(doc["nextUpdate"])
        except (KeyError, ValueError, TypeError):
            _fail(f"{what}: issueDate / nextUpdate missing or malformed")
        if self.now < issue:
            _fail(f"{what} issue date {format_time(issue)} is in the future")
        if self.now > nxt:
            _fail(f"{what} expired at {format_time(nxt)} (nextUpdate)")


def _merge(a: Tuple[str, List[str]], b: Tuple[str, List[str]]) -> Tuple[str, List[str]]:
    """The worse status; advisory ids of both, first seen first (dcap-qvl's merge)."""
    sev = qa.TCB_STATUSES.index
    status = a[0] if sev(a[0]) >= sev(b[0]) else b[0]
    ids = list(dict.fromkeys(list(a[1]) + list(b[1])))
    return status, ids


def _status_of(level: Dict[str, Any], what: str) -> Tuple[str, List[str]]:
    status = level.get("tcbStatus")
    if status not in qa.TCB_STATUSES:
        _fail(f"{what}: unknown tcbStatus {status!r}")
    ids = level.get("advisoryIDs") or []
    return status, [str(i) for i in ids]


# ---------------------------------------------------------------------- the steps
def _step_quote_format(c: _Context) -> None:
    q = c.quote
    if q.att_key_type != qa.ATT_KEY_TYPE_ECDSA_P256:
        _fail(f"attestation key type {q.att_key_type} is not 2 (ECDSA-P256)")
    if q.tee_type != qa.TEE_TYPE_TDX:
        _fail(f"tee_type 0x{q.tee_type:x} is not 0x81 (TDX)")
    if q.qe_vendor_id != qa.INTEL_QE_VENDOR_ID:
        _fail(f"QE vendor id {q.qe_vendor_id.hex()} is not Intel's {qa.INTEL_QE_VENDOR_ID.hex()}")
    if q.inner_cert_type != qa.CERT_TYPE_PCK_CERT_CHAIN:
        _fail(f"inner certification data type {q.inner_cert_type} is not 5 (PCK chain)")


def _step_pck_chain(c: _Context) -> None:
    # The root CA CRL is issued by the root, the PCK CRL by the leaf's issuer (quote.md §5.5 step 1).
    c.check_validity(c.root, "root CA")
    c.root_crl = c.check_crl(c.coll.root_ca_crl, c.root, "root CA CRL")
    c.check_not_revoked(c.root, c.root_crl, "root CA")
    rest = _PEM_CERT.sub(b"", c.quote.inner_cert_data).strip(b" \t\r\n\0")
    if rest:
        _fail(f"the PCK chain in the quote holds {len(rest)} bytes that are not PEM certificates")
    certs = _chain(c.quote.inner_cert_data, "PCK chain in the quote")
    if len(certs) < 2:
        _fail(f"PCK chain in the quote has {len(certs)} certificate(s)")
    leaf, inter = certs[0], certs[1]
    if len(certs) > 2 and _fingerprint(certs[-1]) != _fingerprint(c.root):
        # Intel's QVL requires the chain's root to be the trusted root (STATUS_SGX_ROOT_CA_UNTRUSTED);
        # dcap-qvl ignores the embedded root. We follow QVL.
        _fail(f"the chain's root {certs[-1].subject.rfc4514_string()!r} is not the trusted root "
              f"(another platform's root, or altered)")
    if qa.CN_PART_LEAF not in _cn(leaf):
        _fail(f"PCK leaf CN {_cn(leaf)!r} does not contain {qa.CN_PART_LEAF!r}")
    if qa.CN_PART_INTERMEDIATE not in _cn(inter):
        _fail(f"PCK intermediate CN {_cn(inter)!r} does not contain {qa.CN_PART_INTERMEDIATE!r}")
    if qa.CN_PART_ROOT not in _cn(c.root):
        _fail(f"root CN {_cn(c.root)!r} does not contain {qa.CN_PART_ROOT!r}")
    if not _issued_by(inter, c.root):
        _fail(f"{_cn(inter)!r} is not signed by the trusted root {c.root.subject.rfc4514_string()!r} "
              "(a chain under another root)")
    if not _issued_by(leaf, inter):
        _fail(f"the PCK leaf is not signed by {_cn(inter)!r}")
    c.check_validity(inter, f"{_cn(inter)!r}")
    c.check_validity(leaf, "the PCK certificate")
    c.check_not_revoked(inter, c.root_crl, f"{_cn(inter)!r}")
    c.pck_crl = c.check_crl(c.coll.pck_crl, inter, "PCK CRL")
    c.check_not_revoked(leaf, c.pck_crl, "the PCK certificate")
    def ext() -> Any:
        try:
            return parse_pck_extension(leaf)
        except ValueError as e:
            return str(e)
    got = _memo(("pckext", id(leaf)), ext, leaf)
    if isinstance(got, str):
        _fail(f"PCK certificate: {got}")
    c.pck_ext = got
    c.pck_leaf = leaf


def _step_tcb_info(c: _Context) -> None:
    leaf = c.signing_chain(c.coll.tcb_info_issuer_chain, "TCB Info issuer chain", qa.CN_PART_TCB_SIGNING)
    doc = c.signed_json(c.coll.tcb_info, c.coll.tcb_info_signature, leaf, "TCB Info")
    if doc.get("id") != qa.TCB_INFO_ID_TDX:
        _fail(f"TCB Info id {doc.get('id')!r} is not 'TDX'")
    version = doc.get("version")
    if not isinstance(version, int) or version < qa.TCB_INFO_VERSION:
        _fail(f"TCB Info version {version!r} is below {qa.TCB_INFO_VERSION}")
    c.check_dates(doc, "TCB Info")
    if not isinstance(doc.get("tcbLevels"), list):
        _fail("TCB Info has no tcbLevels")
    c.tcb_info = doc


def _step_fmspc_pceid(c: _Context) -> None:
    assert c.pck_ext is not None
    fmspc, pceid = str(c.tcb_info.get("fmspc", "")), str(c.tcb_info.get("pceId", ""))
    if c.pck_ext.fmspc.hex().upper() != fmspc.upper():
        _fail(f"FMSPC {c.pck_ext.fmspc.hex().upper()} of the PCK certificate is not TCB Info's {fmspc}")
    if c.pck_ext.pceid.hex().upper() != pceid.upper():
        _fail(f"PCE-ID {c.pck_ext.pceid.hex().upper()} of the PCK certificate is not TCB Info's {pceid}")


def _hexfield(doc: Dict[str, Any], key: str, size: int, what: str) -> bytes:
    try:
        value = bytes.fromhex(str(doc[key]))
    except (KeyError, ValueError):
        _fail(f"{what}.{key} missing or not hex")
    if len(value) != size:
        _fail(f"{what}.{key} is {len(value)} bytes, not {size}")
    return value


def _step_tdx_module(c: _Context) -> None:
    q, info = c.quote, c.tcb_info
    svn = q.fields["tee_tcb_svn"]
    module_isvsvn, module_version = svn[0], svn[1]
    base = info.get("tdxModule")
    if not isinstance(base, dict):
        _fail("TCB Info has no tdxModule")
    ident, what = base, "tdxModule"
    levels = None
    identities = info.get("tdxModuleIdentities") or []
    if module_version > 0 and identities:
        wanted = f"TDX_{module_version:02X}"
        match = [i for i in identities if str(i.get("id", "")).upper() == wanted]
        if not match:
            _fail(f"no TDX module identity {wanted} in TCB Info (TEE_TCB_SVN[1] = {module_version})")
        ident, what, levels = match[0], f"tdxModuleIdentities[{wanted}]", match[0].get("tcbLevels") or []
    mrsigner = _hexfield(ident, "mrsigner", 48, what)
    attrs = _hexfield(ident, "attributes", 8, what)
    mask = _hexfield(ident, "attributesMask", 8, what)
    if q.fields["mrsignerseam"] != mrsigner:
        _fail(f"MRSIGNERSEAM {q.fields['mrsignerseam'].hex()[:16]}... is not {what}.mrsigner")
    seam = q.fields["seam_attributes"]
    for i in range(8):
        if seam[i] & mask[i] != attrs[i] & mask[i] or seam[i] & ~mask[i] & 0xFF:
            _fail(f"SEAMATTRIBUTES {seam.hex()} do not match {what}.attributes under its mask")
    if levels is not None:
        for level in levels:
            if module_isvsvn >= int(level.get("tcb", {}).get("isvsvn", 0)):
                c.module_status = _status_of(level, what)
                return
        _fail(f"TDX module ISVSVN {module_isvsvn} is below every level of {what}")


def _step_qe_report_signature(c: _Context) -> None:
    assert c.pck_leaf is not None
    if not _signed_by(c.pck_leaf, c.quote.qe_report_signature, c.quote.qe_report):
        _fail("the QE report signature does not verify with the PCK certificate's key")


def _step_qe_report_data(c: _Context) -> None:
    q = c.quote
    if len(q.qe_auth_data) != qa.QE_AUTH_DATA_LEN:
        _fail(f"QE auth data is {len(q.qe_auth_data)} bytes, not {qa.QE_AUTH_DATA_LEN}")
    want = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest()
    if q.qe_report_field("reportdata")[:32] != want:
        _fail("QE REPORTDATA[0..32) is not SHA-256(attestation key || QE auth data)")


def _step_qe_identity(c: _Context) -> None:
    leaf = c.signing_chain(c.coll.qe_identity_issuer_chain, "QE identity issuer chain", qa.CN_PART_TCB_SIGNING)
    doc = c.signed_json(c.coll.qe_identity, c.coll.qe_identity_signature, leaf, "QE identity")
    if doc.get("id") != qa.QE_IDENTITY_ID_TD_QE or doc.get("version") not in qa.QE_IDENTITY_VERSIONS_ACCEPTED:
        _fail(f"QE identity is {doc.get('id')!r} version {doc.get('version')!r}, not 'TD_QE' version 2")
    c.check_dates(doc, "QE identity")
    q = c.quote
    if q.qe_report_field("mrsigner") != _hexfield(doc, "mrsigner", 32, "QE identity"):
        _fail(f"QE MRSIGNER {q.qe_report_field('mrsigner').hex()} is not the QE identity's")
    attributes = q.qe_report_field("attributes")
    if attributes[0] & qa.SGX_ATTRIBUTES_DEBUG:
        _fail("the QE is a debug enclave")
    if _u16(q.qe_report, qa.QER_OFF_ISVPRODID) != doc.get("isvprodid"):
        _fail(f"QE ISVPRODID {_u16(q.qe_report, qa.QER_OFF_ISVPRODID)} is not {doc.get('isvprodid')!r}")
    misc = _u32(q.qe_report, qa.QER_OFF_MISCSELECT)
    want_misc = int.from_bytes(_hexfield(doc, "miscselect", 4, "QE identity"), "little")
    misc_mask = int.from_bytes(_hexfield(doc, "miscselectMask", 4, "QE identity"), "little")
    if misc & misc_mask != want_misc & misc_mask:
        _fail(f"QE MISCSELECT {misc:08x} does not match under the mask")
    want_attr = _hexfield(doc, "attributes", 16, "QE identity")
    attr_mask = _hexfield(doc, "attributesMask", 16, "QE identity")
    if any(a & m != w & m for a, m, w in zip(attributes, attr_mask, want_attr)):
        _fail(f"QE ATTRIBUTES {attributes.hex()} do not match under the mask")
    isvsvn = _u16(q.qe_report, qa.QER_OFF_ISVSVN)
    for level in doc.get("tcbLevels") or []:
        if isvsvn >= int(level.get("tcb", {}).get("isvsvn", 0)):
            c.qe_status = _status_of(level, "QE identity")
            return
    _fail(f"QE ISVSVN {isvsvn} is below every QE identity TCB level")


def _step_quote_signature(c: _Context) -> None:
    q = c.quote
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + q.attestation_key)
    except ValueError:
        _fail("the attestation key is not a P-256 point")
    if not _ecdsa_ok(key, q.signature, q.signed_region):
        _fail(f"the quote signature does not verify over bytes [0, {len(q.signed_region)}) with the "
              "attestation key")


def _step_tcb_level(c: _Context) -> None:
    assert c.pck_ext is not None
    ext, svn = c.pck_ext, c.quote.tcb_svn_for_level()
    for level in c.tcb_info["tcbLevels"]:
        tcb = level.get("tcb", {})
        try:
            sgx = [int(x["svn"]) for x in tcb["sgxtcbcomponents"]]
            tdx = [int(x["svn"]) for x in tcb["tdxtcbcomponents"]]
            pcesvn = int(tcb["pcesvn"])
        except (KeyError, TypeError, ValueError):
            _fail("a TCB level lacks sgxtcbcomponents, tdxtcbcomponents or pcesvn")
        if len(sgx) != qa.TCB_COMPONENTS or len(tdx) != qa.TCB_COMPONENTS:
            _fail("a TCB level does not have 16 SGX and 16 TDX components")
        if ext.pcesvn < pcesvn or any(a < b for a, b in zip(ext.components, sgx)):
            continue
        if any(a < b for a, b in zip(svn, tdx)):
            continue
        status = _status_of(level, "TCB level")
        if c.module_status is not None:
            status = _merge(status, c.module_status)
        assert c.qe_status is not None
        status = _merge(status, c.qe_status)
        c.status, c.advisory_ids = status
        if status[0] == qa.TCB_STATUS_REVOKED:
            _fail("the TCB status is Revoked")
        return
    _fail(f"no TCB level matches the PCK TCB and TEE_TCB_SVN {svn.hex()}")


def _step_td_attributes(c: _Context) -> None:
    q = c.quote
    attrs = q.td_attributes
    tud = attrs & 0xFF
    if tud & ~qa.TD_ATTRIBUTES_DEBUG:
        _fail(f"reserved TUD bits set in TD attributes 0x{attrs:016x}")
    if tud & qa.TD_ATTRIBUTES_DEBUG:
        _fail("the TD is a debug TD (TD attributes bit 0)")
    # SEC bits 8..31: bits 8..27 reserved, 28 SEPT_VE_DISABLE, 29 reserved, 30..31 PKS/KL; OTHER
    # bits 32..62 reserved, 63 PERFMON (dcap-qvl TDAttributes).
    if attrs & 0x0FFFFF00 or attrs & (1 << 29) or attrs & 0x7FFFFFFF00000000:
        _fail(f"reserved bits set in TD attributes 0x{attrs:016x}")
    if not attrs & qa.TD_ATTRIBUTES_SEPT_VE_DISABLE:
        _fail("SEPT_VE_DISABLE (TD attributes bit 28) is clear")
    if q.body_type == qa.BODY_TYPE_TD15 and any(q.fields["mrservicetd"]):
        _fail("MRSERVICETD is not zero (a service TD is bound)")


_PIPELINE: Tuple[Tuple[str, Callable[[_Context], None]], ...] = (
    ("quote_format", _step_quote_format), ("pck_chain", _step_pck_chain), ("tcb_info", _step_tcb_info),
    ("fmspc_pceid", _step_fmspc_pceid), ("tdx_module", _step_tdx_module),
    ("qe_report_signature", _step_qe_report_signature), ("qe_report_data", _step_qe_report_data),
    ("qe_identity", _step_qe_identity), ("quote_signature", _step_quote_signature),
    ("tcb_level", _step_tcb_level), ("td_attributes", _step_td_attributes),
)
assert tuple(n for n, _ in _PIPELINE) == STEP_NAMES


def verify(quote: Union[BytesLike, Quote], collateral: Collateral,
           root: Union[bytes, str, x509.Certificate], now: TimeLike = None) -> VerifyResult:
    """verify(quote, collateral, root, now=None) -> VerifyResult

    ``quote``: bytes (trailing bytes allowed) or a Quote; ``collateral``: a Collateral; ``root``: the
    trusted root CA (DER, PEM or a certificate); ``now``: the time to verify at (see parse_time).
    Raises QuoteFormatError if ``quote`` is not a quote, ValueError for an unusable root or time."""
    q = parse_quote(quote)
    if not isinstance(collateral, Collateral):
        raise TypeError(f"collateral must be a Collateral, not {type(collateral).__name__}")
    ctx = _Context(q, collateral, load_root(root), parse_time(now))
    passed: List[str] = []
    for name, step in _PIPELINE:
        try:
            step(ctx)
        except _StepFailed as e:
            return VerifyResult(ctx.status, list(ctx.advisory_ids), name, f"{name}: {e}", passed)
        except Exception as e:  # malformed certificates etc.: cryptography parses some fields lazily
            reason = " ".join(str(e).split())[:120] or type(e).__name__
            return VerifyResult(ctx.status, list(ctx.advisory_ids), name,
                                f"{name}: malformed input ({type(e).__name__}: {reason})", passed)
        passed.append(name)
    return VerifyResult(ctx.status, list(ctx.advisory_ids), None,
                        f"verified: TCB status {ctx.status}", passed)


def fetch_collateral(pccs_url: str, quote: Union[BytesLike, Quote], timeout: float = 10.0) -> Collateral:
    """Collateral for ``quote`` from a PCCS / PCS v4 service (quote.md §6): TDX TCB info by the PCK's
    FMSPC, TDX QE identity, the PCK CRL of the platform CA, the root CA CRL. CollateralError on failure."""
    import urllib.error
    import urllib.request

    q = parse_quote(quote)
    chain = q.pck_chain
    try:
        leaf = x509.load_pem_x509_certificate(chain[0])
        fmspc = parse_pck_extension(leaf).fmspc.hex().upper()
        ca = "processor" if "Processor" in _cn(x509.load_pem_x509_certificate(chain[1])) else "platform"
    except (IndexError, ValueError) as e:
        raise CollateralError(f"cannot read the quote's PCK certificate: {e}") from None
    base = pccs_url.rstrip("/")

    def get(path: str) -> Tuple[bytes, Any]:
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as resp:  # noqa: S310 (user's URL)
                return resp.read(), resp.headers
        except (urllib.error.URLError, OSError) as e:
            raise CollateralError(f"{base + path}: {getattr(e, 'reason', None) or e}") from None

    def header(headers: Any, name: str) -> str:
        import urllib.parse
        value = headers.get(name)
        if value is None:
            raise CollateralError(f"the response has no {name} header")
        return urllib.parse.unquote(value)

    tcb_body, tcb_h = get(f"{qa.PCS_TDX_TCB_PATH}?fmspc={fmspc}")
    qe_body, qe_h = get(qa.PCS_TDX_QE_IDENTITY_PATH)
    pck_crl, crl_h = get(f"{qa.PCS_PCK_CRL_PATH}?ca={ca}&encoding=der")
    root_crl_hex, _ = get(qa.PCS_ROOT_CA_CRL_PATH)
    try:
        root_crl = bytes.fromhex(root_crl_hex.decode())
    except (ValueError, UnicodeDecodeError):
        raise CollateralError("the root CA CRL is not hex") from None
    return Collateral.from_pcs_bodies(
        tcb_body=tcb_body.decode(), tcb_chain=header(tcb_h, qa.HDR_TCB_INFO_ISSUER_CHAIN),
        qe_body=qe_body.decode(), qe_chain=header(qe_h, qa.HDR_QE_IDENTITY_ISSUER_CHAIN),
        pck_crl=pck_crl, pck_crl_chain=header(crl_h, qa.HDR_PCK_CRL_ISSUER_CHAIN), root_ca_crl=root_crl)


def root_from_chain(pem: Union[str, bytes]) -> x509.Certificate:
    """The last certificate of a PEM chain (the root, for Intel's chains)."""
    blocks = split_pem_chain(pem)
    if not blocks:
        raise ValueError("no certificates in the chain")
    return x509.load_pem_x509_certificate(blocks[-1])


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def check_signatures(quote: Union[BytesLike, Quote]) -> Dict[str, bool]:
    """The three checks a quote carries the material for itself (quote.md §5.3, §5.4): the quote
    signature with its attestation key, the QE report signature with the embedded PCK leaf's key,
    and the QE REPORTDATA binding. No collateral, no chain: use verify() for a verdict."""
    q = parse_quote(quote)
    ctx = _Context(q, None, None, parse_time(None))  # type: ignore[arg-type]
    out: Dict[str, bool] = {}
    try:
        ctx.pck_leaf = x509.load_pem_x509_certificate(q.pck_chain[0])
    except (IndexError, ValueError):
        ctx.pck_leaf = None
    for name, step in (("quote_signature", _step_quote_signature), ("qe_report_signature", _step_qe_report_signature),
                       ("qe_report_data", _step_qe_report_data)):
        if name == "qe_report_signature" and ctx.pck_leaf is None:
            out[name] = False
            continue
        try:
            step(ctx)
            out[name] = True
        except _StepFailed:
            out[name] = False
    return out


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
