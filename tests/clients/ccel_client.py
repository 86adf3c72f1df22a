#!/usr/bin/env python3
"""A TD attestation client written the way the Python SDKs are (cc-trusted-vmsdk's TdxVM), with no
tdxmodel import: it refuses to start without the CCEL ACPI table, reads the boot event log from
/sys/firmware/acpi/tables/data/CCEL, gets a TDREPORT with TDX_CMD_GET_REPORT0 on /dev/tdx_guest,
replays the log and compares the result with the report's RTMRs; where configfs-tsm is there
(/sys/kernel/config/tsm/report) it also gets a quote through it, as the SDKs' TSM path does
(temporary item, inblob, outblob, rmdir), and compares the quote's RTMRs too (quote.md §5.2: the
TD body at 48 (v4) or 54 (v5), RTMR0..3 at body offset 328).

Prints one JSON object; exit 0 when the replay matches, 1 when it does not, 3 when CCEL is missing.
"""

import fcntl
import hashlib
import json
import os
import struct
import sys

CCEL = "/sys/firmware/acpi/tables/CCEL"
CCEL_DATA = "/sys/firmware/acpi/tables/data/CCEL"
DEVICE = "/dev/tdx_guest"
TDX_CMD_GET_REPORT0 = 0xC4405401  # _IOWR('T', 1, struct tdx_report_req), 1088 bytes
RTMR_OFFSET = 720                 # TDREPORT: TDINFO.RTMR0, RTMRi at 720 + 48 i
TSM_REPORT = "/sys/kernel/config/tsm/report"
QUOTE_BODY = {4: 48, 5: 54}       # quote.md §5.2
BODY_RTMR0 = 328


def quote_via_tsm(nonce):
    """A quote through configfs-tsm, or None when the tree is not there."""
    if not os.path.isdir(TSM_REPORT):
        return None
    item = os.path.join(TSM_REPORT, "ccel-client-%d" % os.getpid())
    os.mkdir(item)
    try:
        with open(os.path.join(item, "provider")) as f:
            assert f.read() == "tdx_guest\n", "not the TDX provider"
        fd = os.open(os.path.join(item, "inblob"), os.O_WRONLY)
        try:
            os.write(fd, nonce)
        finally:
            os.close(fd)
        with open(os.path.join(item, "outblob"), "rb") as f:
            return f.read()
    finally:
        os.rmdir(item)


def parse_events(data):
    """(MR index, event type, SHA-384 digest) of each record after the Spec ID header."""
    size = struct.unpack_from("<I", data, 28)[0]
    body = data[32:32 + size]
    nalg = struct.unpack_from("<I", body, 24)[0]
    sizes = dict(struct.unpack_from("<HH", body, 28 + 4 * i) for i in range(nalg))
    pos, out = 32 + size, []
    while pos + 4 <= len(data):
        mr = struct.unpack_from("<I", data, pos)[0]
        if mr == 0xFFFFFFFF:
            break
        etype, count = struct.unpack_from("<II", data, pos + 4)
        pos += 12
        digest = None
        for _ in range(count):
            alg = struct.unpack_from("<H", data, pos)[0]
            if alg == 0x000C:
                digest = data[pos + 2:pos + 2 + sizes[alg]]
            pos += 2 + sizes[alg]
        pos += 4 + struct.unpack_from("<I", data, pos)[0]
        out.append((mr, etype, digest))
    return out


def main():
    if not (os.path.exists(CCEL) and os.path.exists(CCEL_DATA)):
        print(json.dumps({"error": "no CCEL table"}))
        return 3
    with open(CCEL, "rb") as f:
        table = f.read()
    assert table[:4] == b"CCEL" and len(table) == struct.unpack_from("<I", table, 4)[0], "bad CCEL"
    assert sum(table) % 256 == 0 and table[36] == 2, "CCEL: bad checksum or not TDX"
    laml = struct.unpack_from("<Q", table, 40)[0]
    with open(CCEL_DATA, "rb") as f:
        log = f.read()
    assert len(log) >= laml, "CCEL data shorter than LAML"
    rtmr = [bytes(48)] * 4
    events = parse_events(log)
    for mr, etype, digest in events:
        if etype == 3:  # EV_NO_ACTION
            continue
        rtmr[mr - 1] = hashlib.sha384(rtmr[mr - 1] + digest).digest()
    req = bytearray(1088)
    req[:64] = hashlib.sha512(b"ccel client nonce").digest()
    fd = os.open(DEVICE, os.O_RDWR)
    try:
        fcntl.ioctl(fd, TDX_CMD_GET_REPORT0, req)
    finally:
        os.close(fd)
    report = bytes(req[64:])
    reported = [report[RTMR_OFFSET + 48 * i:RTMR_OFFSET + 48 * (i + 1)] for i in range(4)]
    ok = reported == rtmr
    out = {"events": len(events), "replayed": [r.hex() for r in rtmr],
           "report": [r.hex() for r in reported], "match": ok}
    quote = quote_via_tsm(bytes(req[:64]))
    if quote is not None:
        version = struct.unpack_from("<H", quote, 0)[0]
        at = QUOTE_BODY[version] + BODY_RTMR0
        quoted = [quote[at + 48 * i:at + 48 * (i + 1)] for i in range(4)]
        out["quote_version"] = version
        out["quote"] = [r.hex() for r in quoted]
        out["quote_hex"] = quote.hex()
        out["quote_match"] = quoted == rtmr
        ok = ok and quoted == rtmr
        out["match"] = ok
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
