"""The boot event log and the CCEL table (tdxmodel.eventlog): byte layout, round trip, replay, errors.

The layout checks read the bytes with struct at the offsets the specifications give (TCG PFP
TCG_PCR_EVENT / TCG_PCR_EVENT2, Linux actbl2.h struct acpi_table_ccel), independently of the
module's own parser, the way clients such as cc-trusted-vmsdk read them."""

from __future__ import annotations

import hashlib
import struct

import pytest

from tdxmodel import abi_eventlog as tcg
from tdxmodel import eventlog
from tdxmodel.eventlog import Event, EventLogError

Z48 = bytes(48)


def chain(*digests):
    v = Z48
    for d in digests:
        v = hashlib.sha384(v + d).digest()
    return v


def client_parse(area: bytes):
    """A reader written the way CCEL clients are: SHA1-format header, then TCG_PCR_EVENT2 records
    until an MR index of 0xFFFFFFFF; returns (header fields, [(mr, type, {alg: digest}, data)])."""
    mr, etype = struct.unpack_from("<II", area, 0)
    size = struct.unpack_from("<I", area, 28)[0]
    body = area[32:32 + size]
    sig = body[:16]
    platform, vmin, vmaj, errata, uintn, nalg = struct.unpack_from("<IBBBBI", body, 16)
    algs = {}
    off = 28
    for _ in range(nalg):
        alg, dsize = struct.unpack_from("<HH", body, off)
        algs[alg] = dsize
        off += 4
    vendor = body[off]
    header = dict(mr=mr, type=etype, sig=sig, platform=platform, version=(vmaj, vmin), errata=errata,
                  uintn=uintn, algs=algs, vendor=vendor, digest=area[8:28])
    pos = 32 + size
    events = []
    while True:
        mr = struct.unpack_from("<I", area, pos)[0]
        if mr == 0xFFFFFFFF:
            break
        etype, count = struct.unpack_from("<II", area, pos + 4)
        pos += 12
        digests = {}
        for _ in range(count):
            alg = struct.unpack_from("<H", area, pos)[0]
            digests[alg] = area[pos + 2:pos + 2 + algs[alg]]
            pos += 2 + algs[alg]
        dsize = struct.unpack_from("<I", area, pos)[0]
        events.append((mr, etype, digests, area[pos + 4:pos + 4 + dsize]))
        pos += 4 + dsize
    return header, events


def test_spec_id_header_is_the_tdvf_sha1_format_record():
    area = eventlog.log_area(eventlog.default_boot_events())
    header, _ = client_parse(area)
    assert header["type"] == tcg.EV_NO_ACTION == 3
    assert header["mr"] == 1  # TDVF: "PCRIndex 0 maps to MrIndex 1"
    assert header["digest"] == bytes(20)
    assert header["sig"] == b"Spec ID Event03\x00"
    assert header["version"] == (2, 0) and header["errata"] == 0 and header["uintn"] == 2
    assert header["algs"] == {0x000C: 48} and header["vendor"] == 0


def test_default_log_round_trips_and_is_ff_filled_to_laml():
    events = eventlog.default_boot_events()
    area = eventlog.log_area(events)
    assert len(area) == tcg.CCEL_DEFAULT_LAML == 65536
    records = eventlog.encode_log(events)
    assert area[:len(records)] == records and set(area[len(records):]) == {0xFF}
    spec, parsed = eventlog.parse_log(area)
    assert parsed == events and spec["algorithms"] == {tcg.TPM_ALG_SHA384: 48}
    # the client-style reader sees the same records, SHA-384 digests only
    _, seen = client_parse(area)
    assert [(m, t, d[0x000C], data) for m, t, d, data in seen] == \
        [(e.mr_index, e.event_type, e.digest, e.data) for e in events]


def test_default_boot_measures_firmware_kernel_cmdline_initrd():
    events = eventlog.default_boot_events()
    by_mr = {}
    for e in events:
        by_mr.setdefault(e.mr_index, []).append(e.event_type)
    assert by_mr == {1: [tcg.EV_EFI_PLATFORM_FIRMWARE_BLOB2, tcg.EV_SEPARATOR],
                     2: [tcg.EV_SEPARATOR, tcg.EV_EFI_BOOT_SERVICES_APPLICATION],
                     3: [tcg.EV_IPL, tcg.EV_EVENT_TAG]}
    fw, sep, _, kernel, cmdline, initrd = events
    assert fw.digest == hashlib.sha384(eventlog.DEFAULT_FIRMWARE).digest()
    assert sep.digest == hashlib.sha384(bytes(4)).digest() and sep.data == bytes(4)
    assert kernel.digest == hashlib.sha384(eventlog.DEFAULT_KERNEL).digest()
    assert cmdline.data == eventlog.DEFAULT_CMDLINE
    assert struct.unpack_from("<II", initrd.data) == (0x8F3B22EC, len(b"Linux initrd"))
    assert initrd.data[8:] == b"Linux initrd"
    # UEFI_PLATFORM_FIRMWARE_BLOB2: size, "TDVF", base, length
    assert fw.data[0] == 4 and fw.data[1:5] == b"TDVF"
    assert struct.unpack_from("<QQ", fw.data, 5)[1] == len(eventlog.DEFAULT_FIRMWARE)


def test_replay_extends_rtmr_mr_index_minus_one():
    events = eventlog.default_boot_events()
    r = eventlog.replay(events)
    assert r[0] == chain(events[0].digest, events[1].digest)
    assert r[1] == chain(events[2].digest, events[3].digest)
    assert r[2] == chain(events[4].digest, events[5].digest)
    assert r[3] == Z48
    # EV_NO_ACTION records extend nothing; a replay can start from given values
    noop = Event(1, tcg.EV_NO_ACTION, Z48, b"x")
    assert eventlog.replay([noop] + events) == r
    assert eventlog.replay([Event(4, tcg.EV_IPL, b"\x01" * 48)], r)[3] == chain(b"\x01" * 48)


def test_mrtd_and_out_of_range_mr_indices_are_refused():
    with pytest.raises(EventLogError, match="MRTD"):
        Event(0, tcg.EV_IPL, Z48)
    with pytest.raises(EventLogError, match="MR index"):
        Event(5, tcg.EV_IPL, Z48)
    with pytest.raises(EventLogError, match="SHA-384"):
        Event(1, tcg.EV_IPL, b"\x00" * 32)


def test_parser_skips_other_digests_and_rejects_bad_logs():
    # A log with SHA-256 and SHA-384 banks: the replay uses the SHA-384 digest.
    body = (b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 2)
            + struct.pack("<HHHH", 0x000B, 32, 0x000C, 48) + b"\x00")
    head = struct.pack("<II", 1, 3) + bytes(20) + struct.pack("<I", len(body)) + body
    d384 = hashlib.sha384(b"k").digest()
    rec = (struct.pack("<III", 2, tcg.EV_IPL, 2) + struct.pack("<H", 0x000B) + bytes(32)
           + struct.pack("<H", 0x000C) + d384 + struct.pack("<I", 1) + b"k")
    spec, events = eventlog.parse_log(head + rec)  # no 0xFF fill: the end of the data ends it too
    assert events == [Event(2, tcg.EV_IPL, d384, b"k")] and spec["algorithms"] == {11: 32, 12: 48}
    with pytest.raises(EventLogError, match="truncated"):
        eventlog.parse_log(head + rec[:-3])
    with pytest.raises(EventLogError, match="Spec ID"):
        eventlog.parse_log(struct.pack("<II", 1, tcg.EV_IPL) + bytes(40))
    bad_sig = head.replace(b"Event03", b"Event02")
    with pytest.raises(EventLogError, match="Spec ID Event03"):
        eventlog.parse_log(bad_sig)
    sha256_only = (struct.pack("<III", 2, tcg.EV_IPL, 1) + struct.pack("<H", 0x000B) + bytes(32)
                   + struct.pack("<I", 0))
    with pytest.raises(EventLogError, match="no SHA-384"):
        eventlog.parse_log(head + sha256_only)


def test_log_larger_than_laml():
    many = [Event(4, tcg.EV_IPL, Z48, b"x" * 1000) for _ in range(80)]
    area = eventlog.log_area(many)
    assert len(area) > 65536 and len(area) % 4096 == 0 and eventlog.parse_log(area)[1] == many
    with pytest.raises(EventLogError, match="LAML"):
        eventlog.log_area(many, laml=4096)


def test_ccel_table_layout_checksum_and_checks():
    t = eventlog.ccel_table(65536, 0x7F000000)
    assert len(t) == 56 and t[:4] == b"CCEL" and sum(t) % 256 == 0
    assert struct.unpack_from("<IB", t, 4) == (56, 1)  # length, revision
    # actbl2.h: u8 CCtype, u8 Ccsub_type, u16 reserved, u64 LAML, u64 LASA after the 36-byte header
    assert struct.unpack_from("<BBHQQ", t, 36) == (2, 0, 0, 65536, 0x7F000000)
    fields = eventlog.parse_ccel(t)
    assert (fields["laml"], fields["lasa"], fields["cc_type"]) == (65536, 0x7F000000, 2)
    broken = bytearray(t)
    broken[40] ^= 1
    with pytest.raises(EventLogError, match="checksum"):
        eventlog.parse_ccel(bytes(broken))
    sev = bytearray(t)
    sev[36], sev[9] = 1, (sev[9] + 1) & 0xFF  # CC type SEV, checksum kept right
    with pytest.raises(EventLogError, match="not TDX"):
        eventlog.parse_ccel(bytes(sev))
    with pytest.raises(EventLogError, match="signature"):
        eventlog.parse_ccel(b"TPM2" + t[4:])
    with pytest.raises(EventLogError, match="nonzero"):
        eventlog.ccel_table(0, 1)


TOML = """
seed = 3
[[eventlog.event]]
rtmr = 0
type = "EV_EFI_PLATFORM_FIRMWARE_BLOB2"
content = "my firmware"
[[eventlog.event]]
mr_index = 3
type = 13
digest = "{d}"
data = "kernel_cmdline: quiet"
"""


def test_events_from_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(TOML.format(d="ab" * 48))
    events = eventlog.events_from_toml(p)
    assert events == [Event(1, tcg.EV_EFI_PLATFORM_FIRMWARE_BLOB2, hashlib.sha384(b"my firmware").digest(),
                            b"my firmware"),
                      Event(3, tcg.EV_IPL, b"\xab" * 48, b"kernel_cmdline: quiet")]
    p.write_text("seed = 1\n")
    assert eventlog.events_from_toml(p) is None
    for bad, msg in [('[[eventlog.event]]\nrtmr = 4\ncontent = "x"\n', "0..3"),
                     ('[[eventlog.event]]\nrtmr = 1\n', "content"),
                     ('[[eventlog.event]]\nrtmr = 1\ntype = "EV_NOPE"\ncontent = "x"\n', "unknown event type"),
                     ('[[eventlog.event]]\nrtmr = 1\nmr_index = 2\ncontent = "x"\n', "exactly one"),
                     ('[[eventlog.event]]\nrtmr = 1\ndigest = "00"\n', "48"),
                     ('[[eventlog.event]]\nrtmr = 1\ncontent = "x"\ncolour = 1\n', "unknown key")]:
        p.write_text(bad)
        with pytest.raises(EventLogError, match=msg):
            eventlog.events_from_toml(p)
