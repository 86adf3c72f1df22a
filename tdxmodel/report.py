"""The TDREPORT as data (layer 3): a read-only view, a numpy dtype, and verification of its parts.

Everything here works on any 1024-byte TDREPORT_STRUCT (ref §4.4), one from real hardware included;
only :func:`verify` needs a module model, for the platform's MAC key.

What protects which bytes (ref §4.5):

* the MAC (bytes 224..255) covers REPORTMACSTRUCT bytes 0..223. The real algorithm is not public;
  tdxmodel's is HMAC-SHA-256 with the emulated platform's key (a design choice, README "The MAC is
  ours"), so a report verifies only on the emulated platform that made it;
* TEE_TCB_INFO_HASH (bytes 32..79) = SHA-384 of TEE_TCB_INFO, bytes 256..494 (239 bytes);
* TEE_INFO_HASH (bytes 80..127) = SHA-384 of TDINFO, bytes 512..1023;
* the 17 reserved bytes 495..511 are covered by nothing, on hardware as here.

``TDREPORT_DTYPE`` is built from ``abi.TDREPORT_FIELDS``: byte fields are ``('u1', (n,))`` subarrays
(unlike ``'S'``, which drops trailing NUL bytes, they round-trip exactly), the four 64-bit fields
(``tcb_valid``, ``seam_attributes``, ``attributes``, ``xfam``) are little-endian ``'<u8'``, and
``report_type`` is a nested struct of four ``u1`` (``type``, ``subtype``, ``version``, ``reserved``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from tdxmodel import abi
from tdxmodel.errors import describe_status

BytesLike = Union[bytes, bytearray, memoryview]

#: name -> (offset, size), from the one source of truth.
FIELDS: Dict[str, Tuple[int, int]] = {name: (off, size) for name, off, size, _ in abi.TDREPORT_FIELDS}

#: TDREPORT fields that are little-endian 64-bit integers (ref §4.4).
INT_FIELDS = ("tcb_valid", "seam_attributes", "attributes", "xfam")

#: The names verification uses for a report's protected parts (also the CLI's spelling).
PART_MAC = "MAC"
PART_TEE_TCB_INFO_HASH = "TEE_TCB_INFO_HASH"
PART_TEE_INFO_HASH = "TEE_INFO_HASH"

_REPORT_LEN = abi.TDX_REPORT_LEN
_SHA = abi.TDX_SHA384_LEN
# Byte ranges each hash covers (ref §4.5): TEE_TCB_INFO is 239 bytes, TDINFO the whole 512.
_TCB_INFO = slice(abi.TDR_OFF_TEE_TCB_INFO, abi.TDR_OFF_TEE_TCB_INFO + abi.TDX_TEE_TCB_INFO_LEN)
_TDINFO = slice(abi.TDR_OFF_TDINFO, abi.TDR_OFF_TDINFO + abi.TDX_TDINFO_LEN)
_TCB_INFO_HASH = slice(abi.TDR_OFF_TEE_TCB_INFO_HASH, abi.TDR_OFF_TEE_TCB_INFO_HASH + _SHA)
_TEE_INFO_HASH = slice(abi.TDR_OFF_TEE_INFO_HASH, abi.TDR_OFF_TEE_INFO_HASH + _SHA)
_MAC_COVERED = slice(0, abi.TDX_MAC_COVERED_LEN)
_MAC = slice(abi.TDR_OFF_MAC, abi.TDR_OFF_MAC + abi.TDX_MAC_LEN)
_REPORTMACSTRUCT = slice(0, abi.TDX_REPORTMACSTRUCT_LEN)


def _span(s: slice) -> str:
    """Inclusive byte range, as the reference writes it: "256..494"."""
    return f"{s.start}..{s.stop - 1}"


# One-line reasons; each names the failing part first, as the CLI prints it.
_ALTERED = f"the MAC belongs to another platform, or bytes {_span(_REPORTMACSTRUCT)} were altered"


def _build_dtype() -> np.dtype:
    report_type = np.dtype([("type", "u1"), ("subtype", "u1"), ("version", "u1"), ("reserved", "u1")])
    names: List[str] = []
    formats: List[Any] = []
    offsets: List[int] = []
    for name, off, size, _ in abi.TDREPORT_FIELDS:
        if name == "report_type":
            fmt: Any = report_type
        elif name in INT_FIELDS:
            fmt = "<u8"
        else:
            fmt = ("u1", (size,))
        if np.dtype(fmt).itemsize != size:  # abi.py changed a field's size: fail at import, loudly
            raise AssertionError(f"TDREPORT field {name}: dtype size {np.dtype(fmt).itemsize} != {size}")
        names.append(name)
        formats.append(fmt)
        offsets.append(off)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": _REPORT_LEN})


#: numpy structured dtype of one TDREPORT_STRUCT (itemsize 1024); field names and offsets are
#: exactly ``abi.TDREPORT_FIELDS``.
TDREPORT_DTYPE: np.dtype = _build_dtype()


def _as_report_bytes(data: Any, argname: str = "report") -> bytes:
    """_as_report_bytes(data: bytes-like, argname: str) -> bytes  (1024 bytes, else ValueError)."""
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{argname} must be bytes-like, not {type(data).__name__}")
    raw = bytes(data)
    if len(raw) != _REPORT_LEN:
        raise ValueError(f"{argname} must be {_REPORT_LEN} bytes (a TDREPORT_STRUCT), got {len(raw)}")
    return raw


class TdReport:
    """A read-only view of one TDREPORT_STRUCT (ref §4.4).

    ``TdReport.from_bytes(b)`` accepts any 1024 bytes; nothing is validated beyond the length, so
    reports from real hardware and deliberately damaged ones decode alike. ``to_bytes()`` returns
    the exact input. Byte fields are ``bytes``; ``tcb_valid``, ``seam_attributes``, ``attributes``
    and ``xfam`` are ``int``; ``rtmr`` is a tuple of four 48-byte values.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        object.__setattr__(self, "_raw", _as_report_bytes(raw))

    @classmethod
    def from_bytes(cls, data: BytesLike) -> "TdReport":
        """from_bytes(data: bytes-like of length 1024) -> TdReport"""
        return cls(_as_report_bytes(data))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("TdReport is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("TdReport is read-only")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TdReport) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return (f"TdReport(version={self.version}, reportdata={self.reportdata.hex()[:16]}..., "
                f"mrtd={self.mrtd.hex()[:16]}...)")

    def to_bytes(self) -> bytes:
        """to_bytes() -> bytes: the 1024 bytes this view was made from, unchanged."""
        return self._raw

    def field(self, name: str) -> bytes:
        """field(name: str) -> bytes: the raw bytes of any ``abi.TDREPORT_FIELDS`` entry (reserved
        runs included, e.g. ``"reserved_495"``)."""
        try:
            off, size = FIELDS[name]
        except KeyError:
            raise ValueError(f"name: no TDREPORT field {name!r}") from None
        return self._raw[off:off + size]

    def _int(self, name: str) -> int:
        return int.from_bytes(self.field(name), "little")

    # --- REPORTMACSTRUCT (ref §4.4) ---
    @property
    def type(self) -> int:
        """REPORTTYPE.TYPE (0x81 for TDX)."""
        return self._raw[abi.TDR_OFF_REPORTTYPE]

    @property
    def subtype(self) -> int:
        return self._raw[abi.TDR_OFF_REPORTTYPE + 1]

    @property
    def version(self) -> int:
        """REPORTTYPE.VERSION: 0, or 1 when a service TD is bound (1.5, ref §4.3)."""
        return self._raw[abi.TDR_OFF_REPORTTYPE + 2]

    @property
    def report_type(self) -> Dict[str, int]:
        return {"type": self.type, "subtype": self.subtype, "version": self.version}

    cpusvn = property(lambda self: self.field("cpusvn"))
    tee_tcb_info_hash = property(lambda self: self.field("tee_tcb_info_hash"))
    tee_info_hash = property(lambda self: self.field("tee_info_hash"))
    reportdata = property(lambda self: self.field("reportdata"))
    mac = property(lambda self: self.field("mac"))
    # --- TEE_TCB_INFO ---
    tcb_valid = property(lambda self: self._int("tcb_valid"))
    tee_tcb_svn = property(lambda self: self.field("tee_tcb_svn"))
    mrseam = property(lambda self: self.field("mrseam"))
    mrsignerseam = property(lambda self: self.field("mrsignerseam"))
    seam_attributes = property(lambda self: self._int("seam_attributes"))
    tee_tcb_svn2 = property(lambda self: self.field("tee_tcb_svn2"))
    # --- TDINFO ---
    attributes = property(lambda self: self._int("attributes"))
    xfam = property(lambda self: self._int("xfam"))
    mrtd = property(lambda self: self.field("mrtd"))
    mrconfigid = property(lambda self: self.field("mrconfigid"))
    mrowner = property(lambda self: self.field("mrowner"))
    mrownerconfig = property(lambda self: self.field("mrownerconfig"))
    servtd_hash = property(lambda self: self.field("servtd_hash"))

    @property
    def rtmr(self) -> Tuple[bytes, bytes, bytes, bytes]:
        return tuple(self.field(f"rtmr{i}") for i in range(abi.TDX_NUM_RTMRS))  # type: ignore[return-value]

    @property
    def tee_tcb_info(self) -> bytes:
        """The bytes TEE_TCB_INFO_HASH covers: 256..494, 239 bytes (ref §4.5)."""
        return self._raw[_TCB_INFO]

    @property
    def tdinfo(self) -> bytes:
        """The bytes TEE_INFO_HASH covers: 512..1023, the whole TDINFO (ref §4.5)."""
        return self._raw[_TDINFO]

    # --- checks ---
    def check_hashes(self) -> Dict[str, bool]:
        """check_hashes() -> {"TEE_TCB_INFO_HASH": bool, "TEE_INFO_HASH": bool}: whether each stored
        hash equals SHA-384 of the bytes it covers (ref §4.5). Needs no key."""
        return {
            PART_TEE_TCB_INFO_HASH: hashlib.sha384(self._raw[_TCB_INFO]).digest() == self._raw[_TCB_INFO_HASH],
            PART_TEE_INFO_HASH: hashlib.sha384(self._raw[_TDINFO]).digest() == self._raw[_TEE_INFO_HASH],
        }

    def to_json(self) -> Dict[str, Any]:
        """to_json() -> dict: every named field (bytes as lowercase hex, the 64-bit fields as ints,
        ``report_type`` as {type, subtype, version}, ``rtmr`` as a list of four) plus ``raw``, the
        whole report in hex. Key spellings are a contract (the CLI prints this dict)."""
        out: Dict[str, Any] = {"report_type": self.report_type}
        for name in ("cpusvn", "tee_tcb_info_hash", "tee_info_hash", "reportdata", "mac"):
            out[name] = self.field(name).hex()
        out["tcb_valid"] = self.tcb_valid
        for name in ("tee_tcb_svn", "mrseam", "mrsignerseam"):
            out[name] = self.field(name).hex()
        out["seam_attributes"] = self.seam_attributes
        out["tee_tcb_svn2"] = self.tee_tcb_svn2.hex()
        out["attributes"] = self.attributes
        out["xfam"] = self.xfam
        for name in ("mrtd", "mrconfigid", "mrowner", "mrownerconfig"):
            out[name] = self.field(name).hex()
        out["rtmr"] = [r.hex() for r in self.rtmr]
        out["servtd_hash"] = self.servtd_hash.hex()
        out["raw"] = self._raw.hex()
        return out


def _mac_check(raw: bytes, module: Any) -> Tuple[bool, str]:
    """The MAC on this platform: TDG.MR.VERIFYREPORT on 1.5, the same HMAC with the key on 1.0."""
    if module.version == "1.0":
        # TDX 1.0 has no TDG.MR.VERIFYREPORT (ref §4.7): compute the model's MAC with the platform
        # key directly, the same HMAC-SHA-256 over bytes 0..223 the module writes (ref §4.5).
        expected = hmac.new(module.mac_key, raw[_MAC_COVERED], hashlib.sha256).digest()
        if hmac.compare_digest(expected, raw[_MAC]):
            return True, "MAC verified with this platform's key (TDX 1.0 has no TDG.MR.VERIFYREPORT)"
        return False, f"MAC: does not verify with this platform's key (TDX 1.0, no TDG.MR.VERIFYREPORT): {_ALTERED}"
    status = module.verify(raw)
    if status == abi.TDX_SUCCESS:
        return True, "MAC verified by TDG.MR.VERIFYREPORT"
    if status == abi.TDX_INVALID_CPUSVN:
        return False, ("MAC: TDG.MR.VERIFYREPORT returned TDX_INVALID_CPUSVN: the report's CPUSVN is not "
                       "valid on this platform, so the MAC belongs to another platform (or CPUSVN was altered)")
    if status == abi.TDX_INVALID_REPORTMACSTRUCT:
        return False, f"MAC: TDG.MR.VERIFYREPORT returned TDX_INVALID_REPORTMACSTRUCT: {_ALTERED}"
    return False, f"MAC: TDG.MR.VERIFYREPORT returned {describe_status(status)}"


def verify(report_bytes: BytesLike, module: Any) -> Tuple[bool, Optional[str], str]:
    """verify(report_bytes: 1024 bytes, module: backend Module) -> (ok, failing_part, reason)

    Is this report genuine on ``module``'s platform? ``failing_part`` is None when it is, else
    ``"MAC"``, ``"TEE_TCB_INFO_HASH"`` or ``"TEE_INFO_HASH"``; ``reason`` is one line.

    The MAC is checked first, as a verifier must: only a MAC that holds makes the stored hashes
    trustworthy, and a report from another platform fails there, whatever its hashes say. Then the
    two hashes, TEE_TCB_INFO_HASH before TEE_INFO_HASH. Bytes 495..511 are covered by neither, so a
    change there is not detected (ref §4.4-§4.5, as on hardware).
    """
    raw = _as_report_bytes(report_bytes, "report_bytes")
    mac_ok, mac_reason = _mac_check(raw, module)
    if not mac_ok:
        return False, PART_MAC, mac_reason
    hashes = TdReport(raw).check_hashes()
    if not hashes[PART_TEE_TCB_INFO_HASH]:
        also = "" if hashes[PART_TEE_INFO_HASH] else "; TEE_INFO_HASH does not match either"
        return False, PART_TEE_TCB_INFO_HASH, (
            f"TEE_TCB_INFO_HASH: SHA-384 of TEE_TCB_INFO (bytes {_span(_TCB_INFO)}) differs from the hash "
            f"at bytes {_span(_TCB_INFO_HASH)}{also}")
    if not hashes[PART_TEE_INFO_HASH]:
        return False, PART_TEE_INFO_HASH, (
            f"TEE_INFO_HASH: SHA-384 of TDINFO (bytes {_span(_TDINFO)}) differs from the hash at bytes "
            f"{_span(_TEE_INFO_HASH)}")
    return True, None, f"genuine: {mac_reason}; TEE_TCB_INFO_HASH and TEE_INFO_HASH match"


# --------------------------------------------------------------------------- arrays
def reports_to_array(reports: Union[Iterable[BytesLike], np.ndarray]) -> np.ndarray:
    """reports_to_array(reports: iterable of 1024-byte reports | uint8 array (N, 1024)) -> ndarray
    of TDREPORT_DTYPE, shape (N,), a fresh writable copy."""
    if isinstance(reports, np.ndarray):
        if reports.dtype == TDREPORT_DTYPE:
            return reports.copy()
        if reports.dtype != np.uint8 or reports.ndim != 2 or reports.shape[1] != _REPORT_LEN:
            raise ValueError(f"reports: expected a uint8 array of shape (N, {_REPORT_LEN}), "
                             f"got {reports.dtype} {reports.shape}")
        return np.ascontiguousarray(reports).view(TDREPORT_DTYPE).reshape(-1).copy()
    if isinstance(reports, (bytes, bytearray, memoryview, str)):
        raise TypeError("reports must be an iterable of reports, not a single bytes object")
    chunks = [_as_report_bytes(r, f"reports[{i}]") for i, r in enumerate(reports)]
    return np.frombuffer(b"".join(chunks), dtype=TDREPORT_DTYPE).copy()


def array_to_reports(array: np.ndarray) -> List[bytes]:
    """array_to_reports(array: ndarray of TDREPORT_DTYPE) -> list of 1024-byte reports."""
    if not isinstance(array, np.ndarray) or array.dtype != TDREPORT_DTYPE:
        raise TypeError("array must be a numpy array of tdxmodel.report.TDREPORT_DTYPE")
    flat = np.ascontiguousarray(array.reshape(-1))
    raw = flat.tobytes()
    return [raw[i:i + _REPORT_LEN] for i in range(0, len(raw), _REPORT_LEN)]
