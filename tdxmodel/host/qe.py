"""The quoting enclave (TDQE) model: TDREPORT bytes in, DCAP TD quote bytes out (host layer).

``QuotingEnclave.produce(tdreport) -> bytes`` does what Intel's TDQE does (quote.md §5.1-§5.4), in its
order:

1. the version choice of ``determine_quote_version`` (quote.md §5.2): REPORTTYPE.VERSION 0 needs the
   TDINFO reserved[112] zero, VALID[0] 0xFF, VALID[1] 0x01, VALID[2] in {0, 3}, the rest of VALID
   zero; VALID 0x301FF with TEE_TCB_SVN2 != TEE_TCB_SVN gives v5 (body type 3), else v4. VERSION 1
   needs TDINFO reserved[64] zero and gives v5 with MRSERVICETD = SERVTD_HASH (TEE_TCB_SVN2 copied if
   VALID[2] = 3; with VALID[2] = 0 the TDQE copies SVN2 *into* TEE_TCB_SVN, reproduced as the
   reference reads it). Anything else: ``TDQE_REPORT_FORMAT_NOT_SUPPORTED``;
2. the MAC, checked with this platform's key as TDG.MR.VERIFYREPORT does (``TDQE_ERROR_INVALID_REPORT``);
3. TEE_TCB_INFO_HASH, then TEE_INFO_HASH re-computed (``TDQE_ERROR_INVALID_HASH``);
4. the header (version, att_key_type 2, tee_type 0x81, bytes 8..11 zero, Intel's QE vendor id,
   user_data = QE_ID || 4 zero bytes), the body (MRSIGNERSEAM and SEAMATTRIBUTES left zero), the
   ECDSA-P256/SHA-256 signature r||s over the signed region, the attestation key x||y, then the
   certification data type 6 (QE report, its PCK signature, 32 bytes of QE auth data, the inner type-5
   PEM chain).

Everything that does not change per quote is made once in ``__init__``: the keys, the QE report and
its PCK signature, and the certification-data bytes that follow the attestation key. The per-quote
work is the body copy and one signature.

The quote-producer interface the host's quote path calls is ``tdxmodel.host.QuoteProducer``.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, List, Optional, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tdxmodel import abi
from tdxmodel import quote_abi as qa
from tdxmodel.report import PART_MAC, verify as verify_report

#: The emulated TDQE's MRENCLAVE: not Intel's (we do not run Intel's enclave), a fixed digest.
EMULATED_QE_MRENCLAVE = hashlib.sha256(b"tdxmodel emulated TDQE").digest()


def _core_classes() -> Any:
    """(core Module class, TdqeCore, TdqeRefused) when the compiled core is built, else None."""
    try:
        from tdxmodel._core._ext import Module, TdqeCore, TdqeRefused
    except ImportError:
        return None
    return Module, TdqeCore, TdqeRefused


class TdqeError(Exception):
    """The TDQE refused the TDREPORT. ``.error`` is the TDQE's error name (quote.md §5.2)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error


def _rs(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def qe_report(*, cpusvn: bytes, reportdata: bytes, isvsvn: int = qa.EMULATED_QE_ISVSVN) -> bytes:
    """The TDQE's own SGX REPORTBODY (384 bytes, quote.md §5.4) with Intel's TD QE identity."""
    b = bytearray(qa.QE_REPORT_LEN)
    b[qa.QER_OFF_CPUSVN:qa.QER_OFF_CPUSVN + 16] = cpusvn
    b[qa.QER_OFF_ATTRIBUTES:qa.QER_OFF_ATTRIBUTES + 16] = qa.TD_QE_ATTRIBUTES
    b[qa.QER_OFF_MRENCLAVE:qa.QER_OFF_MRENCLAVE + 32] = EMULATED_QE_MRENCLAVE
    b[qa.QER_OFF_MRSIGNER:qa.QER_OFF_MRSIGNER + 32] = qa.TD_QE_MRSIGNER
    struct.pack_into("<HH", b, qa.QER_OFF_ISVPRODID, qa.TD_QE_ISVPRODID, isvsvn)
    b[qa.QER_OFF_REPORTDATA:qa.QER_OFF_REPORTDATA + 64] = reportdata
    return bytes(b)


class QuotingEnclave:
    """QuotingEnclave(*, attestation_key, pck_key, pck_chain_pem, qe_id, cpusvn, module,
    qe_auth_data=quote_abi.EMULATED_QE_AUTH_DATA)

    ``module`` is the platform's TDX module model (a backend Module): its TDG.MR.VERIFYREPORT (or the
    platform key on TDX 1.0) checks the TDREPORT MAC, as EVERIFYREPORT2 does for the real TDQE."""

    def __init__(self, *, attestation_key: ec.EllipticCurvePrivateKey, pck_key: ec.EllipticCurvePrivateKey,
                 pck_chain_pem: bytes, qe_id: bytes, cpusvn: bytes, module: Any,
                 qe_auth_data: bytes = qa.EMULATED_QE_AUTH_DATA) -> None:
        if len(qe_id) != qa.QE_ID_LEN:
            raise ValueError(f"QE_ID must be {qa.QE_ID_LEN} bytes")
        self.module = module
        self.attestation_key = attestation_key
        pub = attestation_key.public_key().public_bytes(serialization.Encoding.X962,
                                                        serialization.PublicFormat.UncompressedPoint)
        self.attestation_public = pub[1:]  # x||y, big-endian (quote.md §5.4)
        auth = bytes(qe_auth_data)
        report_data = hashlib.sha256(self.attestation_public + auth).digest() + bytes(32)
        self.qe_report = qe_report(cpusvn=cpusvn, reportdata=report_data)
        # The PCK signs the QE report once, when the attestation key is certified (quote.md §5.4).
        self.qe_report_signature = _rs(pck_key.sign(self.qe_report, ec.ECDSA(hashes.SHA256())))
        chain = bytes(pck_chain_pem)
        inner = struct.pack("<HI", qa.CERT_TYPE_PCK_CERT_CHAIN, len(chain)) + chain
        outer_body = self.qe_report + self.qe_report_signature + struct.pack("<H", len(auth)) + auth + inner
        #: Everything after the signature: attestation key, then the type-6 certification data.
        self.tail = self.attestation_public + struct.pack("<HI", qa.CERT_TYPE_QE_REPORT, len(outer_body)) + outer_body
        self.signature_data_len = qa.SIG_LEN + len(self.tail)
        header = bytearray(qa.HEADER_LEN)
        struct.pack_into("<HHI", header, 0, 0, qa.ATT_KEY_TYPE_ECDSA_P256, qa.TEE_TYPE_TDX)
        header[qa.HDR_OFF_VENDOR_ID:qa.HDR_OFF_VENDOR_ID + 16] = qa.INTEL_QE_VENDOR_ID
        header[qa.HDR_OFF_USER_DATA:qa.HDR_OFF_USER_DATA + qa.QE_ID_LEN] = qe_id
        self._header = bytes(header)
        self._ecdsa = ec.ECDSA(hashes.SHA256())
        # On the core backend the per-quote path runs in C without the GIL (csrc/vmm_tdqe.c); the
        # reference backend signs with the cryptography package. Both give the same bytes but r||s.
        self._core = None
        core = _core_classes()
        if core is not None and isinstance(module, core[0]):
            der = attestation_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
            self._core = core[1](der, self._header, self.tail, module)
            self._refused_exc = core[2]
            if type(self).produce is QuotingEnclave.produce:
                # produce() as the core's own method: no Python frame per quote (two callers share
                # fewer objects); what the C path refuses still gets produce()'s Python answer
                self._core.bind_fallback(self._after_core)
                self._fast_produce = self._core.produce_or_fallback
                self.produce = self._fast_produce

    # ------------------------------------------------------------------ the TDQE's checks
    def quote_version(self, tdreport: bytes) -> tuple:
        """(quote version, body type, TEE_TCB_SVN to copy, TEE_TCB_SVN2 or None, MRSERVICETD or None)
        by determine_quote_version (quote.md §5.2); TdqeError(TDQE_REPORT_FORMAT_NOT_SUPPORTED)."""
        r = tdreport
        version = r[qa.TDREPORT_OFF_VERSION]
        valid = r[qa.TDREPORT_OFF_VALID:qa.TDREPORT_OFF_VALID + 8]
        svn = r[abi.TDR_OFF_TEE_TCB_SVN:abi.TDR_OFF_TEE_TCB_SVN + 16]
        svn2 = r[qa.TDREPORT_OFF_TEE_TCB_SVN2:qa.TDREPORT_OFF_TEE_TCB_SVN2 + 16]
        bad = TdqeError(qa.TDQE_REPORT_FORMAT_NOT_SUPPORTED, "")

        def valid_ok() -> bool:
            return valid[0] == 0xFF and valid[1] == 0x01 and valid[2] in (0, 3) and not any(valid[3:])

        if version == 0:
            if any(r[qa.TDINFO_RESERVED_OFF_V0:qa.TDINFO_RESERVED_OFF_V0 + qa.TDINFO_RESERVED_LEN_V0]):
                raise TdqeError(bad.error, "TDINFO reserved bytes are not zero (REPORTTYPE.VERSION 0)")
            if not valid_ok():
                raise TdqeError(bad.error, f"TEE_TCB_INFO.VALID {valid.hex()} is not 0x1FF or 0x301FF")
            if valid[2] == 3 and svn2 != svn:
                return qa.QUOTE_VERSION_5, qa.BODY_TYPE_TD15, svn, svn2, None
            return qa.QUOTE_VERSION_4, qa.BODY_TYPE_TD10, svn, None, None
        if version == abi.TDX_REPORTTYPE_VERSION_SERVTD_BOUND:
            if any(r[qa.TDINFO_RESERVED_OFF_V1:qa.TDINFO_RESERVED_OFF_V1 + qa.TDINFO_RESERVED_LEN_V1]):
                raise TdqeError(bad.error, "TDINFO reserved bytes are not zero (REPORTTYPE.VERSION 1)")
            if not valid_ok():
                raise TdqeError(bad.error, f"TEE_TCB_INFO.VALID {valid.hex()} is not 0x1FF or 0x301FF")
            mrservicetd = r[qa.TDREPORT_OFF_SERVTD_HASH:qa.TDREPORT_OFF_SERVTD_HASH + 48]
            if valid[2] == 3:
                return qa.QUOTE_VERSION_5, qa.BODY_TYPE_TD15, svn, svn2, mrservicetd
            # quote.md §5.2: with VALID[2] = 0 the TDQE copies TEE_TCB_SVN2 into TEE_TCB_SVN (the
            # reference reads this as a possible TDQE bug; reproduced as written).
            return qa.QUOTE_VERSION_5, qa.BODY_TYPE_TD15, svn2, None, mrservicetd
        raise TdqeError(bad.error, f"REPORTTYPE.VERSION {version} is not supported")

    def check(self, tdreport: bytes) -> tuple:
        """The TDQE's checks in its order: format/version, MAC, then both hashes."""
        if not isinstance(tdreport, (bytes, bytearray, memoryview)) or len(tdreport) != abi.TDX_REPORT_LEN:
            raise TdqeError(qa.TDQE_REPORT_FORMAT_NOT_SUPPORTED, f"a TDREPORT is {abi.TDX_REPORT_LEN} bytes")
        r = bytes(tdreport)
        choice = self.quote_version(r)
        ok, part, reason = verify_report(r, self.module)
        if not ok:
            error = qa.TDQE_ERROR_INVALID_REPORT if part == PART_MAC else qa.TDQE_ERROR_INVALID_HASH
            raise TdqeError(error, reason)
        return choice

    # ------------------------------------------------------------------ quoting
    def _body(self, r: bytes, body_type: int, svn: bytes, svn2: Optional[bytes], servtd: Optional[bytes]) -> bytes:
        size = qa.BODY_SIZES[body_type]
        body = bytearray(size)
        offs = {n: (o, s) for n, o, s in qa.BODY_FIELDS + qa.BODY_FIELDS_TD15}
        for name, src in qa.BODY_FROM_TDREPORT:
            off, n = offs[name]
            body[off:off + n] = r[src:src + n]
        body[0:16] = svn
        if body_type == qa.BODY_TYPE_TD15:
            if svn2 is not None:
                o, n = offs["tee_tcb_svn2"]
                body[o:o + n] = svn2
            if servtd is not None:
                o, n = offs["mrservicetd"]
                body[o:o + n] = servtd
        return bytes(body)

    def produce(self, tdreport: bytes) -> bytes:
        """produce(tdreport: 1024 bytes) -> quote bytes. TdqeError if the TDQE refuses the report.
        (On the core an instance answers through ``TdqeCore.produce_or_fallback``, the same bytes
        and errors.)"""
        if self._core is not None:
            try:
                return self._core.produce(tdreport)
            except self._refused_exc as e:
                return self._after_core(tdreport, e.code)
            except TypeError:
                pass  # not bytes-like: the Python checks below say so
        return self._after_core(tdreport, 0)

    def _after_core(self, tdreport: Any, code: int) -> bytes:
        """The quote by the Python model: the C path refused the report (code > 0: its error, with
        the model's message) or there is no C path / the report is not bytes-like (code 0)."""
        if code:
            self._refused(tdreport, code)
        version, body_type, svn, svn2, servtd = self.check(tdreport)
        return self._assemble(bytes(tdreport), version, body_type, svn, svn2, servtd)

    def _refused(self, tdreport: Any, code: int) -> None:
        """The C path refused the report: the Python checks give the TDQE's error with its message."""
        self.check(tdreport)  # raises TdqeError for codes 1-3
        raise RuntimeError(f"the C TDQE path failed (code {code}) on a report the model accepts")

    def native_producer(self) -> Any:
        """The core's TdqeCore when quotes are made in C and ``produce`` is this class's own (not
        replaced on the instance or in a subclass), else None. The core's Host then calls it in C,
        with the GIL released for the whole quote; the bytes and refusals are produce()'s."""
        own = vars(self).get("produce")
        if self._core is None or type(self).produce is not QuotingEnclave.produce or \
                (own is not None and own is not getattr(self, "_fast_produce", None)):
            return None
        return self._core

    @property
    def backend(self) -> str:
        """'core' when quotes are made in C, else 'reference'."""
        return "core" if self._core is not None else "reference"

    def _assemble(self, r: bytes, version: int, body_type: int, svn: bytes, svn2: Optional[bytes],
                  servtd: Optional[bytes]) -> bytes:
        header = struct.pack("<H", version) + self._header[2:]
        body = self._body(r, body_type, svn, svn2, servtd)
        if version == qa.QUOTE_VERSION_5:
            signed = header + struct.pack("<HI", body_type, len(body)) + body
        else:
            signed = header + body
        sig = _rs(self.attestation_key.sign(signed, self._ecdsa))
        return signed + struct.pack("<I", self.signature_data_len) + sig + self.tail

    def produce_batch(self, tdreports: Any) -> List[bytes]:
        """produce_batch(tdreports: (N, 1024) uint8 array or a sequence of 1024-byte reports) -> list of
        N quotes. The first refused report raises TdqeError with its row in the message."""
        import numpy as np
        if isinstance(tdreports, np.ndarray):
            arr = np.ascontiguousarray(tdreports, dtype=np.uint8)
            if arr.ndim != 2 or arr.shape[1] != abi.TDX_REPORT_LEN:
                raise ValueError(f"expected an (N, {abi.TDX_REPORT_LEN}) uint8 array, got shape {arr.shape}")
            if self._core is not None:  # one nogil C loop
                codes, quotes = self._core.produce_batch(arr)
                for i, code in enumerate(codes):
                    if code:
                        try:
                            self._refused(arr[i].tobytes(), int(code))
                        except TdqeError as e:
                            raise TdqeError(e.error, f"row {i}: {str(e).split(': ', 1)[1]}") from None
                return quotes
            rows: Sequence[bytes] = [arr[i].tobytes() for i in range(arr.shape[0])]
        else:
            rows = [bytes(r) for r in tdreports]
        out = []
        for i, r in enumerate(rows):
            try:
                out.append(self.produce(r))
            except TdqeError as e:
                raise TdqeError(e.error, f"row {i}: {str(e).split(': ', 1)[1]}") from None
        return out


class PositionedQuotingEnclave:
    """PositionedQuotingEnclave(qe, tee_tcb_info): the TDQE of a platform whose TCB position moves
    while it serves (``tdxmodel tcb`` beside a running daemon). Each position has its own QE (the
    PCK certificate and CPUSVN of its level, quote.md §5.4); ``move(tee_tcb_info, qe)`` adds the new
    one. A TDREPORT is quoted by the QE of the position its TEE_TCB_INFO shows (ref §4.5), so a
    report made just before a move still gets the PCK it was made under and every quote is of one
    position, never a mix; a TEE_TCB_INFO of no known position goes to the newest QE (whose checks
    then answer for it)."""

    def __init__(self, qe: QuotingEnclave, tee_tcb_info: bytes) -> None:
        import threading
        self._lock = threading.Lock()
        self._by_info = {bytes(tee_tcb_info): qe}
        self.current = qe

    def move(self, tee_tcb_info: bytes, qe: QuotingEnclave) -> None:
        with self._lock:
            self._by_info[bytes(tee_tcb_info)] = qe
            self.current = qe

    def qe_for(self, tdreport: Any) -> QuotingEnclave:
        try:
            info = bytes(tdreport[abi.TDR_OFF_TEE_TCB_INFO:abi.TDR_OFF_TEE_TCB_INFO + abi.TDX_TEE_TCB_INFO_LEN])
        except TypeError:
            return self.current  # not bytes-like: the QE's own checks say so
        with self._lock:
            return self._by_info.get(info, self.current)

    def produce(self, tdreport: bytes) -> bytes:
        return self.qe_for(tdreport).produce(tdreport)

    @property
    def backend(self) -> str:
        return self.current.backend
