"""The QGS message fuzzer: seeded random and mutated QGS 1.1 frames and raw TDREPORT messages at the QGS
socket server (tdxmodel/transport/qgs_server.py over tdxmodel/host/qgs.py and the emulated TDQE), sent
as raw bytes on its Unix socket.

Messages: well-formed GET_QUOTE_REQs of genuine TDREPORTs (some with an id list), raw genuine
TDREPORTs, and the same mutated: the frame length, major/minor, type, size, error_code,
report_size and id_list_size at and past their limits (0, 1, 19/20, the exact size and one off,
the 4096-byte read buffer and one past it, 2**32-1), bit flips in the header, truncation, trailing
bytes; GET_COLLATERAL_REQ / GET_PLATFORM_INFO_REQ and the response types; raw reports with the
"legitimate TD report" bytes off (quote.md §4.2); random bytes of every length up to 70 KB.
Delivery: all at once with a half-close, all at once left open, in random chunks, byte by byte
(slowloris) stopping short so the server's per-connection timeout has to end it, and batches of
many connections at once.

The expected answer of each message is worked out here from quote.md §4.2 (not by calling the
server's own classifier): a close without an answer, the zero-filled error response of the
request's response type with QGS_MSG_ERROR_UNEXPECTED, a GET_QUOTE_RESP v1.1 whose quote carries the
request's TDREPORT, or (raw mode) the bare quote. Checks: each answer is exactly that; no handler
raised (the server logs "internal error" when one does); every connection ends (answer or close)
within the server's timeout plus a margin; afterwards a clean framed and a clean raw request are
answered and no handler thread is left.

``python -m tests.fuzz.qgs_fuzz --cases N --seed S``; the CI-sized run is test_qgs_fuzz.py.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from tdxmodel import quote as Q
from tdxmodel import quote_abi as qa

HDR = struct.Struct("<HHIII")       # major, minor, type, size, error_code (quote.md §4.2)
SERVER_TIMEOUT = 0.5                # the fuzzed server's per-connection timeout (Intel's: 30 s)
MARGIN = 10.0                       # a connection neither answered nor closed by then has hung
UNEXPECTED = 0x00012001             # QGS_MSG_ERROR_UNEXPECTED: get_resp maps every failure to it
ERROR_LEN = {1: 24, 3: 48, 5: 28}   # the fixed part of each response type


# ------------------------------------------------------------------ the messages
def _frame(msg: bytes) -> bytes:
    return struct.pack(">I", len(msg)) + msg


def _get_quote_req(report: bytes, ids: bytes = b"", minor: int = 1) -> bytes:
    return HDR.pack(1, minor, 0, 24 + len(report) + len(ids), 0) + struct.pack("<II", len(report), len(ids)) \
        + report + ids


def message(r: random.Random, report: bytes) -> Tuple[bytes, str]:
    """(bytes to send, what they are); ``report`` is a genuine TDREPORT of the served TD."""
    k = r.random()
    if k < 0.12:
        ids = r.choice((b"", b"", r.randbytes(r.choice((1, 16, 100)))))
        return _frame(_get_quote_req(report, ids, r.choice((1, 1, 0, 2, 0xFFFF)))), "good frame"
    if k < 0.20:
        return report, "good raw"
    if k < 0.55:  # a good frame with one or two fields set to a limit, or bits flipped in its head
        m = bytearray(_frame(_get_quote_req(report, r.choice((b"", r.randbytes(8))))))
        for _ in range(r.choice((1, 1, 2))):
            field = r.choice(("len", "major", "minor", "type", "size", "code", "report_size", "id_size", "flip"))
            if field == "len":
                struct.pack_into(">I", m, 0, r.choice((0, 1, 15, 16, 19, 20, 23, 24, len(m) - 5, len(m) - 3,
                                                       4091, 4092, 4093, 1 << 16, 0xFFFFFFFF)))
            elif field == "flip":
                m[r.randrange(28)] ^= 1 << r.randrange(8)
            else:
                off, fmt = {"major": (4, "<H"), "minor": (6, "<H"), "type": (8, "<I"), "size": (12, "<I"),
                            "code": (16, "<I"), "report_size": (20, "<I"), "id_size": (24, "<I")}[field]
                v = r.choice((0, 1, 2, 5, 6, 7, 1023, 1024, 1025, len(m) - 4, len(m) - 5, 0xFFFF, 0xFFFFFFFF,
                              UNEXPECTED))
                struct.pack_into(fmt, m, off, v & (0xFFFF if fmt == "<H" else 0xFFFFFFFF))
        if r.random() < 0.3:  # the header's size and the frame length kept in step
            struct.pack_into(">I", m, 0, struct.unpack_from("<I", m, 16)[0])
        return bytes(m), "mutated frame"
    if k < 0.63:  # the other request types and the response types, their sizes right or not
        mtype = r.choice((1, 2, 2, 3, 4, 4, 5, 6, 7))
        body = r.randbytes(r.choice((0, 8, 24, 32, 100)))
        size = 16 + len(body) if r.random() < 0.8 else r.choice((0, 16, 4092, 4093))
        return _frame(HDR.pack(1, 1, mtype, size, 0) + body)[:4 + max(16, size) if size < 5000 else None], \
            f"type {mtype}"
    if k < 0.73:  # a raw report with the legitimate-report bytes off, or cut or extended
        m = bytearray(report)
        c = r.random()
        if c < 0.5:
            off, n = r.choice(((0, 1), (1, 1), (2, 1)) + qa.QGS_RAW_ZERO_RANGES)
            m[off + r.randrange(n)] ^= 1 << r.randrange(8)
        elif c < 0.7:
            m[r.randrange(len(m))] ^= 1 << r.randrange(8)   # elsewhere: the TDQE's MAC check decides
        elif c < 0.85:
            m = m[:r.choice((20, 500, 1023))]
        else:
            m += r.randbytes(r.choice((1, 100, 3000)))
        return bytes(m), "mutated raw"
    if k < 0.80:  # a frame longer than the read buffer, with all its bytes or a part
        n = r.choice((4092, 4093, 5000, 70000))
        head = struct.pack(">I", n) + HDR.pack(1, 1, r.choice((0, 2, 4)), n, 0)
        return head + r.randbytes(r.choice((0, 100, n - 16))), "oversize frame"
    if k < 0.90:  # truncation of a good frame
        f = _frame(_get_quote_req(report))
        return f[:r.choice((0, 1, 3, 4, 19, 20, 27, 28, 1051))], "truncated frame"
    return r.randbytes(r.choice((1, 3, 19, 20, 21, 100, 1023, 1024, 1025, 4096, 5000))), "random"


# ------------------------------------------------------------------ the expected answer (quote.md §4.2)
def _legitimate(raw: bytes) -> bool:
    return raw[0] == 0x81 and raw[1] == 0 and raw[2] in (0, 1) and \
        not any(any(raw[o:o + n]) for o, n in qa.QGS_RAW_ZERO_RANGES)


def expected(data: bytes, report: bytes) -> Tuple[str, Any]:
    """What the server must do with ``data`` (everything the client sent before EOF or the timeout):
    ("close", None), ("error", response type), ("quote", TDREPORT) framed, ("raw", TDREPORT), or
    ("quote?"/"raw?", TDREPORT) when the TDQE decides (a report that is not the genuine one: refused
    unless its MAC still checks)."""
    n = len(data)
    if n < 20:                                   # the first read needs 4 + 16 bytes
        return "close", None
    length = int.from_bytes(data[:4], "big")
    major, _minor, mtype, size, code = HDR.unpack_from(data, 4)
    if length and size == length and major == 1 and mtype < 6:    # framed
        total = 4 + length
        if total > 4096 or n < total:            # beyond the read buffer, or not all of it came
            return "close", None
        msg = data[4:total]
        if mtype in (1, 3, 5):                   # a response type: get_resp's default
            return "close", None
        if mtype in (2, 4):                      # no provider / platform library: the error
            return "error", mtype + 1
        if len(msg) < 24:
            return "error", 1
        rs, ids = struct.unpack_from("<II", msg, 16)
        if code != 0 or rs == 0 or 24 + rs + ids != size:
            return "error", 1
        rep = msg[24:24 + rs]
        return ("quote", rep) if rep == report else ("quote?", rep)
    if n < 1024:                                 # raw mode waits for a whole TDREPORT
        return "close", None
    raw = data[:1024]
    if not _legitimate(raw):
        return "close", None
    return ("raw", raw) if raw == report else ("raw?", raw)


def _quote_carries(quote: bytes, rep: bytes) -> Optional[str]:
    try:
        q = Q.parse_quote(quote)
    except Exception as e:
        return f"the quote does not parse: {e}"
    if q.reportdata != rep[128:192]:
        return "the quote's REPORTDATA is not the request's"
    return None


def check(answer: bytes, want: Tuple[str, Any]) -> Optional[str]:
    kind, arg = want
    if kind == "close":
        return None if answer == b"" else f"answered {len(answer)} bytes ({answer[:24].hex()}), expected a close"
    if kind == "error":
        n = ERROR_LEN[arg]
        good = _frame(HDR.pack(1, 1, arg, n, UNEXPECTED) + bytes(n - 16))
        return None if answer == good else f"expected the {n}-byte error response of type {arg}, got {answer[:32].hex()}"
    if kind in ("raw", "raw?"):
        if kind == "raw?" and answer == b"":
            return None
        return "no answer" if not answer else _quote_carries(answer, arg)
    # a framed GET_QUOTE_RESP v1.1, or (quote?) the error response
    if kind == "quote?" and answer == _frame(HDR.pack(1, 1, 1, 24, UNEXPECTED) + bytes(8)):
        return None
    if len(answer) < 28 or int.from_bytes(answer[:4], "big") != len(answer) - 4:
        return f"not one whole frame: {answer[:32].hex()}"
    major, minor, mtype, size, code = HDR.unpack_from(answer, 4)
    id_size, quote_size = struct.unpack_from("<II", answer, 20)
    if (major, minor, mtype, size, code, id_size) != (1, 1, 1, len(answer) - 4, 0, 0) \
            or quote_size != len(answer) - 28:
        return f"not a GET_QUOTE_RESP v1.1 with the quote: header {(major, minor, mtype, size, code, id_size, quote_size)}"
    return _quote_carries(answer[28:], arg)


# ------------------------------------------------------------------ delivery
def _recv_all(s: socket.socket, deadline: float) -> Tuple[bytes, Optional[str]]:
    out = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out, "neither answered nor closed within the server's timeout and a margin"
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return out, None
        if not chunk:
            return out, None
        out += chunk


def deliver(path: str, data: bytes, how: str, r: random.Random) -> Tuple[bytes, bytes, Optional[str]]:
    """Send ``data`` as ``how`` says; (the bytes the server can have seen, its answer, a problem)."""
    sent = data
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(MARGIN)
        s.connect(path)
        deadline = time.monotonic() + SERVER_TIMEOUT + MARGIN
        try:
            if how in ("whole", "open"):
                s.sendall(data)
                if how == "whole":
                    s.shutdown(socket.SHUT_WR)
            elif how == "chunks":
                i = 0
                while i < len(data):
                    n = r.choice((1, 7, 100, 1000, 4096))
                    s.sendall(data[i:i + n])
                    i += n
                    time.sleep(r.choice((0, 0, 0.001, 0.005)))
                s.shutdown(socket.SHUT_WR)
            else:  # slowloris: a byte at a time, stopping short of what the server waits for
                sent = data[:r.randrange(len(data) + 1)]
                for i in range(0, len(sent), 4):
                    s.sendall(sent[i:i + 4])
                    time.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered or closed before taking everything: what it read decides
        answer, problem = _recv_all(s, deadline)
    return sent, answer, problem


def _delivery(r: random.Random) -> str:
    return r.choice(("whole", "whole", "whole", "open", "chunks", "slowloris"))


# ------------------------------------------------------------------ the campaign
def campaign(seed: int, n: int, backend: Optional[str] = None, batch: int = 24) -> List[Dict[str, Any]]:
    """``n`` messages of stream ``seed`` at a fresh QGS server over the TDQE of ``backend``'s module;
    the cases with problems. About one message in ten goes in a batch of ``batch`` at once."""
    from tdxmodel import _backend
    from tdxmodel.host import qgs
    from tdxmodel.host.collateral import Platform
    from tdxmodel.state import StateStore
    from tdxmodel.transport.qgs_server import QgsServer

    tmp = tempfile.TemporaryDirectory(prefix="tdxm-qgsfuzz-")
    platform = Platform(StateStore(tmp.name + "/state", backend=backend))
    platform.pki()
    b = _backend.load(backend)
    from tdxmodel.config import ModuleConfig
    module = b.Module(ModuleConfig(**platform.store.load().to_dict()), memory_pages=64)
    service = qgs.QgsService(platform.quoting_enclave(module=module))
    lines: List[str] = []
    server = QgsServer(service, tmp.name + "/qgs.sock", timeout_s=SERVER_TIMEOUT, log=lines.append)
    server.log.burst = 1 << 30   # every line kept: an internal error must not be rate-limited away
    r = random.Random(seed)
    bad: List[Dict[str, Any]] = []
    report = module.report(r.randbytes(64))

    def one(i: int, data: bytes, what: str, how: str, rr: random.Random) -> None:
        try:
            sent, answer, problem = deliver(server.path, data, how, rr)
        except OSError as e:
            bad.append({"index": i, "what": what, "how": how, "problems": [f"client: {e!r}"]})
            return
        want = expected(sent, report)
        problems = [problem] if problem else []
        if not problem:
            p = check(answer, want)
            if p:
                problems.append(p)
        if problems:
            bad.append({"index": i, "what": what, "how": how, "sent": sent[:48].hex(), "len": len(sent),
                        "expected": want[0], "problems": problems})

    threads_before = threading.active_count()
    server.start()
    try:
        i = 0
        while i < n:
            if r.random() < 0.1:  # many connections at once
                group = []
                for j in range(min(batch, n - i)):
                    data, what = message(r, report)
                    group.append(threading.Thread(target=one, args=(i + j, data, what, _delivery(r),
                                                                    random.Random(r.getrandbits(32)))))
                for t in group:
                    t.start()
                for t in group:
                    t.join(SERVER_TIMEOUT + 3 * MARGIN)
                i += len(group)
                continue
            data, what = message(r, report)
            one(i, data, what, _delivery(r), r)
            i += 1
        # still serving: a clean framed and a clean raw request
        fresh = module.report(b"after the fuzz".ljust(64, b"\0"))
        for data, want in ((_frame(_get_quote_req(fresh)), ("quote", fresh)), (fresh, ("raw", fresh))):
            _, answer, problem = deliver(server.path, data, "whole", r)
            p = problem or check(answer, want)
            if p:
                bad.append({"index": n, "what": "the final clean request", "problems": [p]})
        internal = [ln for ln in lines if "internal error" in ln]
        if internal:
            bad.append({"index": n, "what": "the server's log", "problems": internal[:5]})
        deadline = time.monotonic() + 5
        while threading.active_count() > threads_before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        if threading.active_count() > threads_before + 1:
            bad.append({"index": n, "what": "threads", "problems": [
                f"{threading.active_count() - threads_before - 1} handler threads still alive"]})
    finally:
        server.stop()
        tmp.cleanup()
    return sorted(bad, key=lambda b: b["index"])


def main(argv: Optional[List[str]] = None) -> int:
    from tests.fuzz import seeded_cli
    return seeded_cli.main(argv, prog="python -m tests.fuzz.qgs_fuzz", doc=__doc__, default_cases=2000,
                           campaign=campaign, what="QGS fuzz", unit="messages")


if __name__ == "__main__":
    sys.exit(main())
