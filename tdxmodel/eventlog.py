"""The TD's boot event log: TCG crypto-agile records and the CCEL ACPI table (layer 3).

An emulated TD boots with measurements: firmware, kernel, command line and initrd are measured into
RTMR0..2 and logged, as TDVF and the Linux EFI stub do on a real TD. This module builds and parses
that log in the format firmware leaves at the CCEL table's LASA (constants and their sources:
``tdxmodel.abi_eventlog``):

* the first record is the Spec ID event in the SHA1 format (TCG_PCR_EVENT: MR index, EV_NO_ACTION,
  20 zero bytes, size, ``TCG_EfiSpecIDEventStruct`` "Spec ID Event03" naming SHA-384 as the one
  algorithm);
* every further record is a TCG_PCR_EVENT2 (CC_EVENT): u32 MR index, u32 event type, a
  TPML_DIGEST_VALUES with one SHA-384 digest, u32 event size, the event data;
* the log area is LAML bytes, filled with 0xFF after the last record (clients stop at an MR index of
  0xFFFFFFFF).

Replay (``replay``): every event but EV_NO_ACTION extends RTMR[mr_index - 1] with its digest,
RTMR <- SHA-384(RTMR || digest) (ref §4.5; MR index 0 is MRTD, which is not extendable).

``default_boot_events()`` is the documented default boot (README "Boot event log");
``events_from_toml(path)`` reads ``[[eventlog.event]]`` tables of a TOML config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import struct
import tomllib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from tdxmodel import abi
from tdxmodel import abi_eventlog as tcg

SHA384_LEN = abi.TDX_SHA384_LEN


class EventLogError(ValueError):
    """A malformed event log, CCEL table or event description; the message says where."""


@dataclasses.dataclass(frozen=True)
class Event:
    """One TCG_PCR_EVENT2 record: ``mr_index`` (1..4 = RTMR0..3), ``event_type``, the SHA-384
    ``digest`` extended into the RTMR, and the event ``data`` (what a verifier reads about it)."""

    mr_index: int
    event_type: int
    digest: bytes
    data: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.mr_index, int) or not 0 <= self.mr_index < tcg.CC_MR_INDEX_COUNT:
            raise EventLogError(f"MR index must be 0..{tcg.CC_MR_INDEX_COUNT - 1}, not {self.mr_index!r}")
        if not isinstance(self.event_type, int) or not 0 <= self.event_type <= 0xFFFFFFFF:
            raise EventLogError(f"event type must be a 32-bit integer, not {self.event_type!r}")
        if not isinstance(self.digest, (bytes, bytearray)) or len(self.digest) != SHA384_LEN:
            raise EventLogError(f"digest must be {SHA384_LEN} bytes (SHA-384)")
        if not isinstance(self.data, (bytes, bytearray)):
            raise EventLogError("event data must be bytes")
        if self.event_type != tcg.EV_NO_ACTION and self.mr_index == tcg.CC_MR_INDEX_MRTD:
            raise EventLogError("MR index 0 is MRTD, which no event extends (TDVF refuses it)")

    @property
    def rtmr(self) -> Optional[int]:
        """The RTMR this event extends (MR index - 1), or None for EV_NO_ACTION."""
        return None if self.event_type == tcg.EV_NO_ACTION else self.mr_index - 1

    @property
    def type_name(self) -> str:
        return tcg.EVENT_TYPE_NAMES.get(self.event_type, f"0x{self.event_type:08x}")

    def to_json(self) -> Dict[str, Any]:
        return {"mr_index": self.mr_index, "rtmr": self.rtmr, "type": self.type_name,
                "event_type": self.event_type, "digest": self.digest.hex(), "data": self.data.hex()}

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Event":
        try:
            return cls(int(d["mr_index"]), int(d["event_type"]), bytes.fromhex(d["digest"]),
                       bytes.fromhex(d.get("data", "")))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, EventLogError):
                raise
            raise EventLogError(f"malformed event record: {str(d)[:80]}") from None


def measure(mr_index: int, event_type: int, content: bytes, data: Optional[bytes] = None) -> Event:
    """measure(mr_index, event_type, content, data=None) -> Event whose digest is SHA-384(content);
    the event data defaults to the content itself."""
    return Event(mr_index, event_type, hashlib.sha384(content).digest(), content if data is None else data)


# ------------------------------------------------------------------ event data of the default boot
def firmware_blob2(description: bytes, base: int, length: int) -> bytes:
    """UEFI_PLATFORM_FIRMWARE_BLOB2: u8 description size, the description, u64 base, u64 length."""
    if len(description) > 255:
        raise EventLogError("a firmware blob description is at most 255 bytes")
    return bytes([len(description)]) + description + struct.pack("<QQ", base, length)


def image_load_event(location: int, length: int, link_address: int = 0,
                     device_path: bytes = tcg.END_DEVICE_PATH) -> bytes:
    """UEFI_IMAGE_LOAD_EVENT: u64 location, length, link-time address, device path length, path."""
    return struct.pack("<QQQQ", location, length, link_address, len(device_path)) + device_path


def tagged_event(tag_id: int, data: bytes) -> bytes:
    """TCG_PCClientTaggedEvent / efi_tcg2_tagged_event: u32 id, u32 size, data."""
    return struct.pack("<II", tag_id, len(data)) + data


#: What the default boot measures (README "Boot event log"): stand-ins for the real images, whose
#: SHA-384 digests are the logged digests.
DEFAULT_FIRMWARE = b"tdxmodel default firmware volume"
DEFAULT_KERNEL = b"tdxmodel default kernel image"
DEFAULT_CMDLINE = b"console=hvc0 root=/dev/vda1 rw"
DEFAULT_INITRD = b"tdxmodel default initrd"
_SEPARATOR = bytes(4)  # TDVF MeasureSeparatorEvent: the data and what is hashed are a u32 0


def default_boot_events() -> List[Event]:
    """The default boot: firmware into RTMR0, kernel into RTMR1, command line and initrd into RTMR2.

    * MR 1 (RTMR0): EV_EFI_PLATFORM_FIRMWARE_BLOB2 "TDVF" over ``DEFAULT_FIRMWARE``; EV_SEPARATOR;
    * MR 2 (RTMR1): EV_SEPARATOR; EV_EFI_BOOT_SERVICES_APPLICATION (UEFI_IMAGE_LOAD_EVENT) over
      ``DEFAULT_KERNEL``;
    * MR 3 (RTMR2): EV_IPL, the command line as text, over itself (as a boot loader logs it);
      EV_EVENT_TAG "Linux initrd" (tag 0x8F3B22EC) over ``DEFAULT_INITRD`` (the EFI stub's event).
    RTMR3 is left zero for the TD's own runtime extends."""
    return [
        measure(1, tcg.EV_EFI_PLATFORM_FIRMWARE_BLOB2, DEFAULT_FIRMWARE,
                firmware_blob2(b"TDVF", 0xFFC00000, len(DEFAULT_FIRMWARE))),
        measure(1, tcg.EV_SEPARATOR, _SEPARATOR),
        measure(2, tcg.EV_SEPARATOR, _SEPARATOR),
        measure(2, tcg.EV_EFI_BOOT_SERVICES_APPLICATION, DEFAULT_KERNEL,
                image_load_event(0x100000, len(DEFAULT_KERNEL))),
        measure(3, tcg.EV_IPL, DEFAULT_CMDLINE),
        measure(3, tcg.EV_EVENT_TAG, DEFAULT_INITRD,
                tagged_event(tcg.INITRD_EVENT_TAG_ID, b"Linux initrd")),
    ]


# ------------------------------------------------------------------ replay
def replay(events: Iterable[Event], initial: Optional[Sequence[bytes]] = None) -> List[bytes]:
    """replay(events, initial=None) -> [RTMR0..3]: RTMR[mr_index - 1] <- SHA-384(RTMR || digest) for
    every event but EV_NO_ACTION, from ``initial`` (default: 48 zero bytes each, ref §4.5)."""
    rtmr = list(initial) if initial is not None else [bytes(SHA384_LEN)] * abi.TDX_NUM_RTMRS
    for ev in events:
        if ev.rtmr is None:
            continue
        rtmr[ev.rtmr] = hashlib.sha384(rtmr[ev.rtmr] + ev.digest).digest()
    return rtmr


# ------------------------------------------------------------------ the binary log
def spec_id_event() -> bytes:
    """The first record: TCG_PCR_EVENT (SHA1 format) carrying TCG_EfiSpecIDEventStruct."""
    body = (tcg.SPEC_ID_SIGNATURE_03
            + struct.pack("<IBBBB", tcg.SPEC_ID_PLATFORM_CLASS, tcg.SPEC_ID_VERSION_MINOR,
                          tcg.SPEC_ID_VERSION_MAJOR, tcg.SPEC_ID_ERRATA, tcg.SPEC_ID_UINTN_SIZE)
            + struct.pack("<IHH", 1, tcg.TPM_ALG_SHA384, SHA384_LEN)
            + bytes([0]))  # vendorInfoSize 0
    return (struct.pack("<II", tcg.SPEC_ID_MR_INDEX, tcg.EV_NO_ACTION) + bytes(tcg.SHA1_DIGEST_LEN)
            + struct.pack("<I", len(body)) + body)


def encode_event(ev: Event) -> bytes:
    """One TCG_PCR_EVENT2 with a single SHA-384 digest."""
    return (struct.pack("<IIIH", ev.mr_index, ev.event_type, 1, tcg.TPM_ALG_SHA384) + bytes(ev.digest)
            + struct.pack("<I", len(ev.data)) + bytes(ev.data))


def encode_log(events: Iterable[Event]) -> bytes:
    """The records alone: the Spec ID event, then each event."""
    return spec_id_event() + b"".join(encode_event(ev) for ev in events)


def log_area(events: Iterable[Event], laml: Optional[int] = None) -> bytes:
    """The log area as firmware leaves it (``data/CCEL``): the records, then 0xFF up to LAML bytes.
    LAML defaults to 64 KiB, grown in whole pages when the log needs more."""
    records = encode_log(events)
    if laml is None:
        laml = max(tcg.CCEL_DEFAULT_LAML, -(-(len(records) + 8) // abi.TDX_PAGE_SIZE) * abi.TDX_PAGE_SIZE)
    if len(records) > laml:
        raise EventLogError(f"the log needs {len(records)} bytes, more than LAML {laml}")
    return records + bytes([tcg.LOG_FILL_BYTE]) * (laml - len(records))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EventLogError(f"truncated {what} at offset {self.pos}")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]


def parse_spec_id(body: bytes) -> Dict[str, Any]:
    """The fields of a TCG_EfiSpecIDEventStruct; EventLogError unless it is "Spec ID Event03"."""
    r = _Reader(body)
    signature = r.take(16, "Spec ID signature")
    if signature != tcg.SPEC_ID_SIGNATURE_03:
        raise EventLogError(f"the first record is not a Spec ID Event03 header ({signature!r})")
    out: Dict[str, Any] = {"signature": signature.rstrip(b"\0").decode("ascii", "replace"),
                           "platform_class": r.u32("platformClass"),
                           "spec_version_minor": r.u8("specVersionMinor"),
                           "spec_version_major": r.u8("specVersionMajor"),
                           "spec_errata": r.u8("specErrata"), "uintn_size": r.u8("uintnSize")}
    count = r.u32("numberOfAlgorithms")
    algs = {}
    for _ in range(count):
        alg, size = r.u16("algorithmId"), r.u16("digestSize")
        algs[alg] = size
    out["algorithms"] = algs
    out["vendor_info"] = r.take(r.u8("vendorInfoSize"), "vendorInfo").hex()
    return out


def parse_log(data: bytes) -> Tuple[Dict[str, Any], List[Event]]:
    """parse_log(data) -> (spec_id fields, events): the records of a log area (0xFF-filled or not).
    Digests of algorithms other than SHA-384 are skipped (the Spec ID header gives their sizes);
    an event without a SHA-384 digest is an error, since it cannot be replayed into an RTMR."""
    r = _Reader(bytes(data))
    mr, etype = r.u32("MR index"), r.u32("event type")
    if etype != tcg.EV_NO_ACTION:
        raise EventLogError("the first record is not the EV_NO_ACTION Spec ID header")
    r.take(tcg.SHA1_DIGEST_LEN, "SHA1-format digest")
    spec = parse_spec_id(r.take(r.u32("event size"), "Spec ID event"))
    spec["mr_index"] = mr
    sizes: Dict[int, int] = spec["algorithms"]
    if tcg.TPM_ALG_SHA384 not in sizes:
        raise EventLogError("the Spec ID header names no SHA-384 digests (TPM_ALG_SHA384 0x000C)")
    events: List[Event] = []
    while r.pos + 4 <= len(r.data):
        start = r.pos
        mr = r.u32("MR index")
        if mr == tcg.LOG_END_MR_INDEX:
            break
        etype = r.u32("event type")
        digest = None
        for _ in range(r.u32("digest count")):
            alg = r.u16("digest algorithm")
            if alg not in sizes:
                raise EventLogError(f"record at offset {start}: digest algorithm 0x{alg:04x} is not in the "
                                    "Spec ID header")
            value = r.take(sizes[alg], "digest")
            if alg == tcg.TPM_ALG_SHA384:
                digest = value
        event_data = r.take(r.u32("event size"), "event data")
        if digest is None:
            raise EventLogError(f"record at offset {start} has no SHA-384 digest")
        try:
            events.append(Event(mr, etype, digest, event_data))
        except EventLogError as e:
            raise EventLogError(f"record at offset {start}: {e}") from None
    return spec, events


# ------------------------------------------------------------------ the CCEL ACPI table
def ccel_table(laml: int, lasa: int = tcg.CCEL_DEFAULT_LASA) -> bytes:
    """The 56-byte CCEL table (``/sys/firmware/acpi/tables/CCEL``), checksummed so its bytes sum to
    0 mod 256 (ACPI 6.5 §5.2.6)."""
    if not 0 < laml < 1 << 64 or not 0 < lasa < 1 << 64:
        raise EventLogError("LAML and LASA must be nonzero 64-bit values (Linux refuses zero ones)")
    header = (tcg.CCEL_SIGNATURE + struct.pack("<IBB", tcg.CCEL_LEN, tcg.CCEL_REVISION, 0)
              + tcg.CCEL_OEM_ID + tcg.CCEL_OEM_TABLE_ID
              + struct.pack("<I", tcg.CCEL_OEM_REVISION) + tcg.CCEL_CREATOR_ID
              + struct.pack("<I", tcg.CCEL_CREATOR_REVISION))
    table = bytearray(header + struct.pack("<BBHQQ", tcg.CC_TYPE_TDX, tcg.CC_SUBTYPE_TDX, 0, laml, lasa))
    assert len(header) == tcg.ACPI_HEADER_LEN and len(table) == tcg.CCEL_LEN
    table[9] = (-sum(table)) & 0xFF
    return bytes(table)


def parse_ccel(table: bytes) -> Dict[str, Any]:
    """The fields of a CCEL table; EventLogError for a wrong signature, length, checksum or CC type."""
    table = bytes(table)
    if len(table) < tcg.CCEL_LEN:
        raise EventLogError(f"a CCEL table is {tcg.CCEL_LEN} bytes, not {len(table)}")
    sig, length, revision, checksum = struct.unpack_from("<4sIBB", table, 0)
    if sig != tcg.CCEL_SIGNATURE:
        raise EventLogError(f"not a CCEL table (signature {sig!r})")
    if length != len(table):
        raise EventLogError(f"CCEL header length {length} but {len(table)} bytes")
    if sum(table) & 0xFF:
        raise EventLogError("CCEL checksum does not make the table sum to 0")
    cc_type, cc_subtype, _rsvd, laml, lasa = struct.unpack_from("<BBHQQ", table, tcg.ACPI_HEADER_LEN)
    if (cc_type, cc_subtype) != (tcg.CC_TYPE_TDX, tcg.CC_SUBTYPE_TDX):
        raise EventLogError(f"CCEL CC type {cc_type}/{cc_subtype} is not TDX ({tcg.CC_TYPE_TDX}/0)")
    return {"revision": revision, "checksum": checksum, "oem_id": table[10:16].decode("ascii", "replace"),
            "cc_type": cc_type, "cc_subtype": cc_subtype, "laml": laml, "lasa": lasa}


# ------------------------------------------------------------------ TOML
def _event_from_toml(i: int, d: Dict[str, Any], where: str) -> Event:
    ctx = f"{where}: eventlog.event[{i}]"
    if not isinstance(d, dict):
        raise EventLogError(f"{ctx}: must be a table")
    known = {"rtmr", "mr_index", "type", "digest", "content", "content_hex", "data", "data_hex"}
    unknown = set(d) - known
    if unknown:
        raise EventLogError(f"{ctx}: unknown key(s) {', '.join(sorted(unknown))}")
    if ("rtmr" in d) == ("mr_index" in d):
        raise EventLogError(f"{ctx}: give exactly one of rtmr (0..3) and mr_index (1..4)")
    mr = d["mr_index"] if "mr_index" in d else d["rtmr"] + 1 if isinstance(d["rtmr"], int) else d["rtmr"]
    if isinstance(mr, bool) or not isinstance(mr, int) or not 1 <= mr <= abi.TDX_NUM_RTMRS:
        raise EventLogError(f"{ctx}: rtmr must be 0..3 (mr_index 1..4)")
    etype = d.get("type", "EV_IPL")
    if isinstance(etype, str):
        if etype not in tcg.EVENT_TYPES:
            raise EventLogError(f"{ctx}: unknown event type {etype!r} (give a TCG name or an integer)")
        etype = tcg.EVENT_TYPES[etype]
    if etype == tcg.EV_NO_ACTION:
        raise EventLogError(f"{ctx}: EV_NO_ACTION events extend nothing; leave them out")

    def blob(text_key: str, hex_key: str) -> Optional[bytes]:
        if text_key in d and hex_key in d:
            raise EventLogError(f"{ctx}: give {text_key} or {hex_key}, not both")
        if text_key in d:
            if not isinstance(d[text_key], str):
                raise EventLogError(f"{ctx}: {text_key} must be a string")
            return d[text_key].encode()
        if hex_key in d:
            try:
                return bytes.fromhex(d[hex_key])
            except (TypeError, ValueError):
                raise EventLogError(f"{ctx}: {hex_key} is not hex") from None
        return None

    content, data = blob("content", "content_hex"), blob("data", "data_hex")
    if "digest" in d:
        if content is not None:
            raise EventLogError(f"{ctx}: give digest or content, not both")
        try:
            digest = bytes.fromhex(d["digest"])
        except (TypeError, ValueError):
            raise EventLogError(f"{ctx}: digest is not hex") from None
    elif content is not None:
        digest = hashlib.sha384(content).digest()
    else:
        raise EventLogError(f"{ctx}: give content (hashed with SHA-384) or digest")
    try:
        return Event(mr, etype, digest, data if data is not None else (content or b""))
    except EventLogError as e:
        raise EventLogError(f"{ctx}: {e}") from None


def toml_sets_rtmr(doc: Dict[str, Any]) -> bool:
    """Whether a parsed TOML config gives the RTMRs itself (``rtmr`` at the top or in [td]/[platform])."""
    return "rtmr" in doc or any(isinstance(doc.get(t), dict) and "rtmr" in doc[t] for t in ("td", "platform"))


def boot_events_for_config(raw: Optional[bytes], path: "pathlib.Path | str" = "<config>") -> Tuple[List[Event], bool]:
    """(events, derive) for a new state made from the TOML text ``raw`` (None: no config): its
    ``[[eventlog.event]]`` tables, else the default boot; ``derive`` says the state's RTMRs are the
    events' replay. A config that sets ``rtmr`` itself and has no [eventlog] gets an empty boot log
    (no log explains its RTMRs: `tdxmodel eventlog` shows the difference); both at once is an error."""
    if raw is None:
        return default_boot_events(), True
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as e:
        raise EventLogError(f"{path}: not valid TOML: {' '.join(str(e).split())}") from None
    events = _events_from_doc(doc, str(path))
    if toml_sets_rtmr(doc):
        if events is not None:
            raise EventLogError(f"{path}: give the RTMRs as rtmr or as [[eventlog.event]] tables, not both")
        return [], False
    return (default_boot_events() if events is None else events), True


def events_from_toml(path: "pathlib.Path | str") -> Optional[List[Event]]:
    """The ``[[eventlog.event]]`` tables of a TOML config, or None when it has no ``eventlog`` table.

    Each event: ``rtmr`` (0..3) or ``mr_index`` (1..4); ``type`` (a TCG name such as
    ``"EV_EFI_BOOT_SERVICES_APPLICATION"`` or an integer; default EV_IPL); ``content`` (text) or
    ``content_hex`` (what is measured: the digest is its SHA-384) or ``digest`` (48 bytes of hex);
    ``data`` or ``data_hex`` (the event data; default: the content)."""
    p = pathlib.Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise EventLogError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise EventLogError(f"{p}: not valid TOML: {e}") from None
    return _events_from_doc(doc, str(p))


def _events_from_doc(doc: Dict[str, Any], p: str) -> Optional[List[Event]]:
    section = doc.get("eventlog")
    if section is None:
        return None
    if not isinstance(section, dict) or set(section) - {"event"}:
        raise EventLogError(f"{p}: [eventlog] holds only [[eventlog.event]] tables")
    events = section.get("event", [])
    if not isinstance(events, list):
        raise EventLogError(f"{p}: eventlog.event must be an array of tables ([[eventlog.event]])")
    return [_event_from_toml(i, d, p) for i, d in enumerate(events)]


# ------------------------------------------------------------------ the boot log of a state directory
#: The boot log's file in a state directory, beside state.json: written when the state is made
#: (atomically, before state.json, whose rename commits both; tdxmodel.state), read by the daemon
#: (the CCEL files) and `tdxmodel eventlog`.
BOOT_LOG_FILE = "boot-eventlog.json"
BOOT_LOG_FORMAT = 1


def boot_log_bytes(events: Iterable[Event]) -> bytes:
    """The JSON document of a boot log file."""
    import json
    return (json.dumps({"format": BOOT_LOG_FORMAT, "events": [ev.to_json() for ev in events]}, indent=1)
            + "\n").encode()


def parse_boot_log(raw: bytes, where: str = BOOT_LOG_FILE) -> List[Event]:
    """The events of a boot log file's bytes (``StateStore.boot_events`` reads the file)."""
    import json
    try:
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != BOOT_LOG_FORMAT or not isinstance(doc.get("events"), list):
            raise ValueError
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EventLogError(f"{where}: corrupt boot event log; remove the state directory to start afresh") from None
    try:
        return [Event.from_json(d) for d in doc["events"]]
    except EventLogError as e:
        raise EventLogError(f"{where}: {e}") from None
