"""The quote generation service (tdxmodel.host.qgs, tdxmodel.transport.qgs_server): Intel's QGS
protocol (quote.md §4.2) byte for byte - the framing, the library's checks in their order, the error
responses, raw mode - backed by the emulated TDQE, whose quotes verify in our verifier and dcap-qvl;
the host's GetQuote through the same service; the Unix socket server, which answers malformed input
with the protocol's error (or closes, where Intel's server does) and keeps serving."""

from __future__ import annotations

import os
import random
import socket
import stat
import struct
import threading
import time

import dcap_qvl
import pytest

from tdxmodel import abi
from tdxmodel import quote as Q
from tdxmodel import quote_abi as qa
from tdxmodel.client import TdxGuest
from tdxmodel.host import qgs
from tdxmodel.host.collateral import Platform
from tdxmodel.state import StateStore
from tdxmodel.transport.qgs_server import QgsServer, QgsServerError, RateLimitedLog

HDR = struct.Struct("<HHIII")


@pytest.fixture
def platform(tmp_path, backend):
    return Platform(StateStore(tmp_path / "state", backend=backend))


@pytest.fixture
def td(platform, make_module):
    """(module, service): a module of the platform's TD and a QgsService over its TDQE."""
    platform.pki()
    module = make_module(**platform.store.load().to_dict())
    return module, qgs.QgsService(platform.quoting_enclave(module=module))


def verifies(platform, raw):
    coll, pki = platform.collateral(), platform.pki()
    ours = Q.verify(raw, coll, pki.root_cert)
    theirs = dcap_qvl.verify_with_root_ca(raw, dcap_qvl.QuoteCollateralV3.from_json(coll.to_dcap_qvl_json()),
                                          pki.root_der(), int(time.time()))
    return ours.ok and theirs.status == ours.status


# ------------------------------------------------------------------ the codec
def test_a_request_for_a_tdreport_is_qemus_1052_bytes():
    report = bytes(range(256)) * 4
    f = qgs.frame(qgs.get_quote_request(report))
    assert len(f) == 1052 and struct.unpack(">I", f[:4])[0] == 1048  # quote.md §4.2
    assert HDR.unpack_from(f, 4) == (1, 1, qa.QGS_GET_QUOTE_REQ, 1048, 0)
    assert struct.unpack_from("<II", f, 20) == (1024, 0) and f[28:] == report
    assert qgs.inflate_get_quote_request(f[4:]) == (report, b"")


def test_error_responses_are_the_zero_filled_fixed_part():
    for resp_type, n in ((qa.QGS_GET_QUOTE_RESP, 24), (qa.QGS_GET_COLLATERAL_RESP, 48),
                         (qa.QGS_GET_PLATFORM_INFO_RESP, 28)):
        m = qgs.error_response(qa.QGS_MSG_ERROR_UNEXPECTED, resp_type)
        assert len(m) == n and HDR.unpack_from(m) == (1, 1, resp_type, n, 0x00012001)
        assert not any(m[16:])
    with pytest.raises(qgs.QgsError):
        qgs.error_response(qa.QGS_MSG_SUCCESS)


def _req(major=1, minor=1, mtype=0, size=None, code=0, report=b"r" * 8, report_size=None, ids=b""):
    body = struct.pack("<II", len(report) if report_size is None else report_size, len(ids)) + report + ids
    n = 16 + len(body) if size is None else size
    return HDR.pack(major, minor, mtype, n, code) + body


@pytest.mark.parametrize("message, code", [
    (b"\x01\x00" * 8, qa.QGS_MSG_ERROR_INVALID_PARAMETER),                 # shorter than 24
    (_req(major=2), qa.QGS_MSG_ERROR_INVALID_VERSION),                     # major is checked first
    (_req(major=2, mtype=3), qa.QGS_MSG_ERROR_INVALID_VERSION),
    (_req(mtype=1), qa.QGS_MSG_ERROR_INVALID_TYPE),
    (_req(size=99), qa.QGS_MSG_ERROR_INVALID_SIZE),                        # header.size != bytes
    (_req(code=5), qa.QGS_MSG_ERROR_INVALID_CODE),
    (_req(report=b"", report_size=0), qa.QGS_MSG_ERROR_INVALID_CODE),      # report_size 0
    (_req(report_size=4), qa.QGS_MSG_ERROR_INVALID_SIZE),                  # 24 + sizes != size
])
def test_request_checks_in_the_librarys_order(message, code):
    with pytest.raises(qgs.QgsError) as e:
        qgs.inflate_get_quote_request(message)
    assert e.value.code == code


def test_minor_version_0_requests_are_accepted():
    # cctrusted builds v1.0 messages (quote.md §2.8); the library checks the major only
    assert qgs.inflate_get_quote_request(_req(minor=0)) == (b"r" * 8, b"")


def test_response_checks():
    ok = qgs.get_quote_response(b"Q" * 10)
    assert qgs.inflate_get_quote_response(ok) == (b"", b"Q" * 10)
    assert qgs.inflate_get_quote_response(qgs.error_response(qa.QGS_MSG_ERROR_UNEXPECTED)) == (b"", b"")
    empty_success = HDR.pack(1, 1, 1, 24, 0) + bytes(8)
    bad_code = HDR.pack(1, 1, 1, 24, qa.QGS_MSG_ERROR_MAX) + bytes(8)
    error_with_quote = HDR.pack(1, 1, 1, 26, qa.QGS_MSG_ERROR_UNEXPECTED) + struct.pack("<II", 0, 2) + b"QQ"
    for m, code in ((empty_success, qa.QGS_MSG_ERROR_INVALID_SIZE), (bad_code, qa.QGS_MSG_ERROR_INVALID_CODE),
                    (error_with_quote, qa.QGS_MSG_ERROR_INVALID_SIZE), (ok[:-1], qa.QGS_MSG_ERROR_INVALID_SIZE)):
        with pytest.raises(qgs.QgsError) as e:
            qgs.inflate_get_quote_response(m)
        assert e.value.code == code


def test_classify_follows_the_servers_framing_test():
    f = qgs.frame(qgs.get_quote_request(bytes(1024)))
    assert qgs.classify(f[:19]) == (qgs.NEED_MORE, 20)
    assert qgs.classify(f[:20]) == (qgs.NEED_MORE, 1052)
    assert qgs.classify(f) == (qgs.FRAMED, 1052)
    # a header size that is not the frame length, a bad major, an unknown type: not framed -> raw
    for bad in (f[:8] + struct.pack("<I", 7) + f[12:], f[:4] + b"\x02" + f[5:], f[:8] + b"\x09" + f[9:]):
        assert qgs.classify(bad[:100]) == (qgs.NEED_MORE, 1024)
    assert qgs.classify(bytes(1024)) == (qgs.RAW, 1024)
    big = struct.pack(">I", 5000) + HDR.pack(1, 1, 0, 5000, 0)
    assert qgs.classify(big) == (qgs.UNREADABLE, 5004)


# ------------------------------------------------------------------ the service over the TDQE
def test_a_framed_request_gets_a_quote_that_verifies(platform, td):
    module, service = td
    nonce = b"qgs framed".ljust(64, b"\0")
    reply = service.exchange(qgs.frame(qgs.get_quote_request(module.report(nonce))))
    selected, raw = qgs.inflate_get_quote_response(qgs.unframe(reply))
    assert selected == b"" and HDR.unpack_from(reply, 4)[:2] == (1, 1)
    assert Q.parse_quote(raw).reportdata == nonce and verifies(platform, raw)
    assert service.counters()["quotes"] == 1


def test_raw_mode_answers_the_raw_quote(platform, td):
    module, service = td
    raw = service.exchange(module.report(b"raw"))
    assert Q.parse_quote(raw).reportdata.startswith(b"raw") and verifies(platform, raw)
    assert service.counters()["raw_quotes"] == 1


def test_refusals_are_answered_as_intels_qgs_does(td):
    module, service = td
    report = bytearray(module.report(b""))
    report[600] ^= 1  # TEE_INFO_HASH mismatch: the TDQE refuses
    # framed: the error response with UNEXPECTED (get_resp maps every failure to it)
    reply = service.exchange(qgs.frame(qgs.get_quote_request(bytes(report))))
    assert qgs.unframe(reply) == qgs.error_response(qa.QGS_MSG_ERROR_UNEXPECTED)
    # a request whose sizes disagree: the same
    bad = _req(report=bytes(1024), report_size=1000)
    assert qgs.unframe(service.exchange(qgs.frame(bad))) == qgs.error_response(qa.QGS_MSG_ERROR_UNEXPECTED)
    # raw: no answer at all, whether the TDQE refuses it or it is not a legitimate TD report
    assert service.exchange(bytes(report)) is None
    good = bytearray(module.report(b""))
    good[500] = 1  # the 17 reserved bytes
    assert service.exchange(bytes(good)) is None
    assert service.exchange(bytes(1024)) is None
    # collateral and platform info: the error response of their type (no QPL behind this QGS)
    coll = HDR.pack(1, 1, qa.QGS_GET_COLLATERAL_REQ, 24, 0) + struct.pack("<II", 0, 0)
    assert qgs.unframe(service.exchange(qgs.frame(coll))) == \
        qgs.error_response(qa.QGS_MSG_ERROR_UNEXPECTED, qa.QGS_GET_COLLATERAL_RESP)
    info = HDR.pack(1, 1, qa.QGS_GET_PLATFORM_INFO_REQ, 16, 0)
    assert len(qgs.unframe(service.exchange(qgs.frame(info)))) == 28
    # a response type sent as a request: closed
    assert service.exchange(qgs.frame(qgs.error_response(qa.QGS_MSG_ERROR_UNEXPECTED))) is None
    c = service.counters()
    assert (c["quotes"], c["raw_quotes"], c["error_responses"]) == (0, 0, 4)
    assert c["closed_unanswered"] == 4


def test_the_hosts_get_quote_asks_the_same_service(platform, td, backend):
    """A configfs-tsm quote (v7.1) through the emulated VMM: upstream QEMU frames the guest's raw
    TDREPORT, the service answers, QEMU strips the frame; the guest reads a quote that verifies."""
    module, service = td
    cfg = platform.store.load()
    with TdxGuest("v7.1", backend=backend.BACKEND_NAME, config=cfg) as g:
        tdqe = platform.quoting_enclave(module=g.module)
        svc = qgs.QgsService(tdqe)
        g.attach_host(producer=qgs.QgsVmm(svc))
        raw = g.get_quote(b"through the VMM")
    assert Q.parse_quote(raw).reportdata.startswith(b"through the VMM") and verifies(platform, raw)
    assert svc.counters()["quotes"] == 1


def test_the_vmm_passes_a_framed_payload_through_unchanged(td):
    module, service = td
    vmm = qgs.QgsVmm(service)
    request = qgs.frame(qgs.get_quote_request(module.report(b"legacy")))
    reply = vmm.produce(request)  # what libtdx_attest's GET_QUOTE ioctl path parses (quote.md §2.7)
    assert struct.unpack(">I", reply[:4])[0] == len(reply) - 4
    assert Q.parse_quote(qgs.inflate_get_quote_response(reply[4:])[1]).reportdata.startswith(b"legacy")
    bad = bytearray(module.report(b""))
    bad[600] ^= 1
    with pytest.raises(qgs.QgsError):  # QEMU: error_code != 0 -> ERROR
        vmm.produce(bytes(bad))


# ------------------------------------------------------------------ the socket server
@pytest.fixture
def server(tmp_path, td):
    module, service = td
    lines = []
    srv = QgsServer(service, str(tmp_path / "run" / "tdx-qgs" / "qgs.socket"), timeout_s=2,
                    log=lines.append)
    srv.start()
    srv.lines = lines
    srv.module = module
    yield srv
    srv.stop()


def talk(path, *chunks, shut=False, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    for c in chunks:
        s.sendall(c)
    if shut:
        s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        out += c
    s.close()
    return out


def test_the_server_answers_framed_and_raw_and_removes_what_it_made(tmp_path, platform, server):
    path = server.path
    assert stat.S_ISSOCK(os.lstat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    report = server.module.report(b"sock")
    reply = talk(path, qgs.frame(qgs.get_quote_request(report)))
    assert verifies(platform, qgs.inflate_get_quote_response(qgs.unframe(reply))[1])
    assert verifies(platform, talk(path, report))
    # a request split in many small writes is assembled (the client waits between them)
    f = qgs.frame(qgs.get_quote_request(report))
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    for i in range(0, len(f), 100):
        s.sendall(f[i:i + 100])
        time.sleep(0.01)
    s.settimeout(10)
    got = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        got += c
    s.close()
    assert qgs.unframe(got)[:16] == reply[4:20]
    server.stop()
    assert not os.path.lexists(path) and not os.path.exists(tmp_path / "run")


def test_malformed_input_gets_the_protocols_answer_and_the_server_goes_on(server, fuzz_seed):
    path = server.path
    assert talk(path, b"\x00\x00", shut=True) == b""                        # too short, EOF: closed
    assert talk(path, bytes(1024)) == b""                                   # not a TD report: closed
    big = struct.pack(">I", 70000) + HDR.pack(1, 1, 0, 70000, 0)
    assert talk(path, big + bytes(100)) == b""                              # beyond the read buffer
    bad_sizes = qgs.frame(_req(report=bytes(1024), report_size=1))
    assert qgs.unframe(talk(path, bad_sizes)) == qgs.error_response(qa.QGS_MSG_ERROR_UNEXPECTED)
    t0 = time.monotonic()
    assert talk(path, b"x" * 30) == b""                                     # waits for 1024, then times out
    assert time.monotonic() - t0 >= 1.5
    rng = random.Random(fuzz_seed)
    for _ in range(60):
        junk = bytes(rng.getrandbits(8) for _ in range(rng.choice((20, 24, 64, 1024, 1052))))
        if rng.random() < 0.5:  # a valid-looking frame around junk
            junk = qgs.frame(HDR.pack(1, rng.choice((0, 1)), rng.randrange(8), len(junk) + 16, 0) + junk)
        talk(path, junk, shut=True)
    reply = talk(path, qgs.frame(qgs.get_quote_request(server.module.report(b"after"))))
    assert Q.parse_quote(qgs.inflate_get_quote_response(qgs.unframe(reply))[1]).reportdata.startswith(b"after")
    assert any("no whole request within 2 s" in line for line in server.lines)


def test_many_clients_at_once_each_get_their_own_quote(server):
    reports = [server.module.report(bytes([i]) * 64) for i in range(12)]
    out = [None] * len(reports)

    def client(i):
        out[i] = talk(server.path, qgs.frame(qgs.get_quote_request(reports[i])))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(reports))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i, reply in enumerate(out):
        assert Q.parse_quote(qgs.inflate_get_quote_response(qgs.unframe(reply))[1]).reportdata == bytes([i]) * 64


def test_the_socket_path_is_never_taken_over(tmp_path, td):
    module, service = td
    plain = tmp_path / "file"
    plain.write_text("keep")
    with pytest.raises(QgsServerError, match="not a socket"):
        QgsServer(service, str(plain)).start()
    assert plain.read_text() == "keep"
    link = tmp_path / "link"
    os.symlink(plain, link)
    with pytest.raises(QgsServerError, match="not a socket"):
        QgsServer(service, str(link)).start()
    live = str(tmp_path / "live.sock")
    with QgsServer(service, live):
        with pytest.raises(QgsServerError, match="served by a running QGS"):
            QgsServer(service, live).start()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(live)
    stale.close()  # bound, never listening: stale
    with QgsServer(service, live, log=lambda m: None) as srv:
        assert talk(srv.path, module.report(b"")) != b""


def test_the_log_is_rate_limited():
    lines = []
    log = RateLimitedLog(lines.append, burst=3, per_seconds=3600)
    for i in range(50):
        log(f"m{i}")
    assert lines == ["m0", "m1", "m2"]


def test_a_frame_of_exactly_the_read_buffer_is_read_and_one_byte_more_is_not(server):
    """The 4096-byte read buffer is the limit (quote.md §4.2): a GET_COLLATERAL_REQ frame of exactly
    4096 bytes gets its error response; one of 4097 is closed without an answer (found by the
    mutation run: only a 70 KB frame was tried)."""
    for total, answered in ((4096, True), (4097, False)):
        n = total - 4
        frame = struct.pack(">I", n) + HDR.pack(1, 1, qa.QGS_GET_COLLATERAL_REQ, n, 0) + bytes(n - 16)
        reply = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(server.path)
            try:
                s.sendall(frame)
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
            except (ConnectionResetError, BrokenPipeError):  # closed with the frame's end unread
                pass
        if answered:
            assert qgs.unframe(reply) == qgs.error_response(qa.QGS_MSG_ERROR_UNEXPECTED, qa.QGS_GET_COLLATERAL_RESP)
        else:
            assert reply == b""
