"""The TDQE model (tdxmodel.host.qe): TDREPORT in, quote out, exactly as quote.md §5.1-§5.4 lays it out;
the version choice of §5.2; the MAC and hash re-checks with the TDQE's errors. Every body runs on both
backends (the module checks the MAC); Modules come from make_module."""

import copy
import hashlib
import struct

import numpy as np
import pytest
from cryptography import x509

from tdxmodel import abi
from tdxmodel import quote as Q
from tdxmodel import quote_abi as qa
from tdxmodel.config import default_tee_tcb_svn
from tdxmodel.host import QuoteProducer, quote_producer
from tdxmodel.host.collateral import Platform
from tdxmodel.host.qe import TdqeError
from tdxmodel.state import StateStore


@pytest.fixture
def platform(tmp_path, backend):
    return Platform(StateStore(tmp_path / "state", backend=backend))


@pytest.fixture
def td(platform, make_module):
    """(module of the platform's TD, its TDQE)."""
    platform.pki()
    module = make_module(**platform.store.load().to_dict())
    return module, platform.quoting_enclave(module=module)


def test_every_field_is_at_its_quote_md_offset(td, platform):
    module, qe = td
    rd = bytes(range(64))
    report = module.report(rd)
    raw = qe.produce(report)
    meta = platform.meta()
    # header (quote.md §5.1)
    assert struct.unpack_from("<HHI", raw, 0) == (4, 2, 0x81)
    assert raw[8:12] == bytes(4) and raw[12:28] == qa.INTEL_QE_VENDOR_ID
    assert raw[28:44] == bytes.fromhex(meta["qe_id"]) and raw[44:48] == bytes(4)
    # body (quote.md §5.2): copied from the TDREPORT, MRSIGNERSEAM and SEAMATTRIBUTES zero
    for body_off, size, tdr_off in ((0, 16, 264), (16, 48, 280), (120, 8, 512), (128, 8, 520), (136, 48, 528),
                                    (184, 48, 576), (232, 48, 624), (280, 48, 672), (328, 192, 720),
                                    (520, 64, 128)):
        assert raw[48 + body_off:48 + body_off + size] == report[tdr_off:tdr_off + size], body_off
    assert raw[48 + 64:48 + 120] == bytes(56)
    assert raw[48 + 520:48 + 584] == rd
    # signature data (quote.md §5.4)
    sig_len = struct.unpack_from("<I", raw, 632)[0]
    assert len(raw) == 636 + sig_len
    assert struct.unpack_from("<HI", raw, 764) == (6, len(raw) - 770)
    qe_report = raw[770:1154]
    auth_size = struct.unpack_from("<H", raw, 1218)[0]
    auth = raw[1220:1220 + auth_size]
    assert auth_size == 32 and auth == bytes(range(32))
    assert qe_report[320:352] == hashlib.sha256(raw[700:764] + auth).digest() and qe_report[352:384] == bytes(32)
    assert qe_report[128:160] == qa.TD_QE_MRSIGNER and struct.unpack_from("<H", qe_report, 256)[0] == 2
    inner_type, inner_size = struct.unpack_from("<HI", raw, 1252)
    chain = raw[1258:1258 + inner_size]
    assert inner_type == 5 and 1258 + inner_size == len(raw)
    certs = x509.load_pem_x509_certificates(chain)
    assert [c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value for c in certs] == [
        "Intel SGX PCK Certificate", "Intel SGX PCK Platform CA", "Intel SGX Root CA"]
    assert Q.check_signatures(raw) == {"quote_signature": True, "qe_report_signature": True, "qe_report_data": True}


def test_v5_when_tee_tcb_svn2_differs(platform, make_module):
    platform.set_tcb(quote_version=5)
    module = make_module(**platform.store.load().to_dict())
    report = module.report(b"x")
    raw = platform.quoting_enclave(module=module).produce(report)
    assert struct.unpack_from("<HHIHI", raw, 0)[:1] == (5,)
    assert struct.unpack_from("<HI", raw, 48) == (3, 648)
    assert raw[54 + 584:54 + 600] == report[384:400] != report[264:280]
    assert raw[54 + 600:54 + 648] == bytes(48)
    assert struct.unpack_from("<I", raw, 702)[0] == len(raw) - 706
    q = Q.parse_quote(raw)
    assert q.body_type == 3 and len(q.signed_region) == 702 and Q.check_signatures(q)["quote_signature"]


# SVN2 == SVN compares with the default TEE_TCB_SVN, which names the module's major version in
# byte 1 (01 on 1.5, quote.md §5.5 step 4): taken from the config rather than spelled out, since it
# was once 03 00 01.. (a 1.0 module on a 1.5 platform).
_DEFAULT_SVN_1_5 = default_tee_tcb_svn("1.5")


@pytest.mark.parametrize("fields, version", [
    (dict(version="1.0"), 4),                                                   # VALID 0x1FF
    (dict(tee_tcb_svn2=_DEFAULT_SVN_1_5), 4),                                   # SVN2 == SVN
    (dict(tee_tcb_svn2=bytes([4] + [0] * 15)), 5),                              # SVN2 != SVN
    (dict(servtd_hash=b"\x11" * 48, tee_tcb_svn2=_DEFAULT_SVN_1_5), 5),         # VERSION 1
])
def test_version_choice(platform, make_module, fields, version):
    platform.pki()
    module = make_module(**fields)
    raw = platform.quoting_enclave(module=module).produce(module.report(b""))
    q = Q.parse_quote(raw)
    assert q.version == version
    if "servtd_hash" in fields:
        assert q.fields["mrservicetd"] == b"\x11" * 48


def _remac(module, report):
    """A report whose MAC holds on ``module``'s platform after the caller altered the REPORTMACSTRUCT."""
    import hmac
    b = bytearray(report)
    b[224:256] = hmac.new(module.mac_key, bytes(b[:224]), hashlib.sha256).digest()
    return bytes(b)


def test_report_format_not_supported(td):
    module, qe = td
    report = bytearray(module.report(b""))
    report[256] = 0x7F  # VALID[0] != 0xFF
    with pytest.raises(TdqeError) as e:
        qe.produce(bytes(report))
    assert e.value.error == "TDQE_REPORT_FORMAT_NOT_SUPPORTED"
    report = bytearray(module.report(b""))
    report[1000] = 1  # TDINFO reserved (VERSION 0)
    with pytest.raises(TdqeError, match="TDQE_REPORT_FORMAT_NOT_SUPPORTED: TDINFO reserved"):
        qe.produce(bytes(report))
    report = bytearray(module.report(b""))
    report[2] = 7  # REPORTTYPE.VERSION
    with pytest.raises(TdqeError, match="VERSION 7"):
        qe.produce(_remac(module, bytes(report)))
    with pytest.raises(TdqeError):
        qe.produce(b"short")


def test_mac_from_another_platform_is_invalid_report(td, hw_report_bytes, platform, make_module):
    module, qe = td
    with pytest.raises(TdqeError) as e:
        qe.produce(hw_report_bytes)  # real hardware's MAC
    assert e.value.error == "TDQE_ERROR_INVALID_REPORT"
    other = make_module(seed=99)
    with pytest.raises(TdqeError) as e:
        qe.produce(other.report(b""))
    assert e.value.error == "TDQE_ERROR_INVALID_REPORT"
    report = bytearray(module.report(b""))
    report[128] ^= 1  # REPORTDATA is under the MAC
    with pytest.raises(TdqeError) as e:
        qe.produce(bytes(report))
    assert e.value.error == "TDQE_ERROR_INVALID_REPORT"


@pytest.mark.parametrize("offset, part", [(300, "TEE_TCB_INFO_HASH"), (600, "TEE_INFO_HASH")])
def test_hash_mismatch_is_invalid_hash(td, offset, part):
    module, qe = td
    report = bytearray(module.report(b""))
    report[offset] ^= 1  # MRSEAM / MRCONFIGID: covered by a hash, not by the MAC
    with pytest.raises(TdqeError) as e:
        qe.produce(bytes(report))
    assert e.value.error == "TDQE_ERROR_INVALID_HASH" and part in str(e.value)


def test_batch_form_takes_arrays_and_lists(td):
    module, qe = td
    rd = np.zeros((3, 64), dtype=np.uint8)
    rd[:, 0] = [1, 2, 3]
    reports, status = module.report_batch(rd)
    assert not status.any()
    quotes = qe.produce_batch(reports)
    assert [Q.parse_quote(q).reportdata[0] for q in quotes] == [1, 2, 3]
    assert all(Q.check_signatures(q)["quote_signature"] for q in quotes)
    assert qe.produce_batch([module.report(b"\x09")])[0][48 + 520] == 9
    bad = reports.copy()
    bad[1, 600] ^= 1
    with pytest.raises(TdqeError, match="row 1"):
        qe.produce_batch(bad)
    with pytest.raises(ValueError):
        qe.produce_batch(np.zeros((2, 10), dtype=np.uint8))


def test_quote_producer_interface(platform, make_module):
    platform.pki()
    module = make_module(**platform.store.load().to_dict())
    producer = quote_producer(platform.store.directory, module=module)
    assert isinstance(producer, QuoteProducer)
    raw = producer.produce(module.report(b"\x05"))
    assert Q.verify(raw, platform.collateral(), platform.pki().root_cert).status == "UpToDate"


def test_signatures_differ_per_quote_but_the_tail_is_built_once(td):
    module, qe = td
    r = module.report(b"")
    a, b = qe.produce(r), qe.produce(r)
    assert a[:636] == b[:636] and a[700:] == b[700:] == qe.tail  # only r||s changes (random k)


@pytest.mark.parametrize("fields", [dict(), dict(version="1.0"), dict(tee_tcb_svn2=bytes([9] + [0] * 15)),
                                    dict(servtd_hash=b"\x22" * 48)])
def test_c_and_python_paths_make_the_same_bytes_but_r_s(platform, make_module, backend, fields):
    """On the core backend quotes are made in C (csrc/vmm_tdqe.c); the Python model must give the same
    bytes everywhere except the signature's r||s (random k), so the C layout cannot drift from
    quote_abi.py."""
    platform.pki()
    module = make_module(**fields)
    fast = platform.quoting_enclave(module=module)
    slow = copy.copy(fast)  # the same QE report signature (made once per QuotingEnclave)
    slow._core = None
    assert fast.backend == ("core" if backend.BACKEND_NAME == "core" else "reference")
    report = module.report(b"same")
    a, b = fast.produce(report), slow.produce(report)
    sig = Q.parse_quote(a).signature_data_offset
    assert len(a) == len(b) and a[:sig] == b[:sig] and a[sig + 64:] == b[sig + 64:]
    assert Q.check_signatures(a)["quote_signature"] and Q.check_signatures(b)["quote_signature"]
    bad = bytearray(report)
    bad[700] ^= 1
    for qe in (fast, slow):
        with pytest.raises(TdqeError) as e:
            qe.produce(bytes(bad))
        assert e.value.error == "TDQE_ERROR_INVALID_HASH"


def test_hash_rechecks_hold_when_reports_alternate(td):
    """The C path remembers the last TEE_TCB_INFO / TDINFO it hashed (per thread): a report whose
    hash or hashed bytes differ from the remembered ones is still refused, and a TD whose TDINFO
    changed (an RTMR extend) still quotes."""
    module, qe = td
    good = module.report(b"a")
    for offset in (300, 600, 300, 256 + 239 - 1):  # MRSEAM, MRCONFIGID, MRSEAM again, last TEE_TCB_INFO byte
        bad = bytearray(good)
        bad[offset] ^= 1
        assert Q.check_signatures(qe.produce(good))["quote_signature"]
        with pytest.raises(TdqeError) as e:
            qe.produce(bytes(bad))
        assert e.value.error == "TDQE_ERROR_INVALID_HASH"
    for offset in (32, 80 + 47):  # TEE_TCB_INFO_HASH, TEE_INFO_HASH (REPORTMACSTRUCT, ref §4.5), re-MACed
        bad = bytearray(good)
        bad[offset] ^= 1
        with pytest.raises(TdqeError) as e:
            qe.produce(_remac(module, bytes(bad)))
        assert e.value.error == "TDQE_ERROR_INVALID_HASH"
    module.extend(2, b"\x11" * 48)
    after = module.report(b"b")
    assert after[512:1024] != good[512:1024]  # RTMR2 moved
    raw = qe.produce(after)
    assert Q.parse_quote(raw).reportdata[:1] == b"b" and Q.check_signatures(raw)["quote_signature"]
    stale = bytearray(after)
    stale[512:1024] = good[512:1024]  # the old TDINFO under the new TEE_INFO_HASH
    with pytest.raises(TdqeError) as e:
        qe.produce(_remac(module, bytes(stale)))
    assert e.value.error == "TDQE_ERROR_INVALID_HASH"


def test_two_threads_quote_at_once_with_valid_signatures(td):
    """Each thread signs with its own copy of the attestation key in C: quotes made concurrently by
    two threads (and by the main thread between them) all verify with the one attestation key."""
    import threading

    module, qe = td
    out = {0: [], 1: []}

    def worker(i):
        for k in range(40):
            out[i].append(qe.produce(module.report(bytes([i, k]))))

    ts = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in ts:
        t.start()
    between = qe.produce(module.report(b"main"))
    for t in ts:
        t.join()
    for i in (0, 1):
        assert [Q.parse_quote(q).reportdata[:2] for q in out[i]] == [bytes([i, k]) for k in range(40)]
        assert all(Q.check_signatures(q)["quote_signature"] for q in out[i])
        assert all(q[700:] == qe.tail for q in out[i])
    assert Q.check_signatures(between)["quote_signature"]


class _Counting:
    """A producer that is not the TDQE itself: the host calls it through Python."""

    def __init__(self, qe):
        self.qe, self.calls = qe, 0

    def produce(self, payload):
        self.calls += 1
        return self.qe.produce(payload)


def test_host_calls_the_tdqe_in_c_with_the_same_answers(tmp_path, backend):
    """On the core the host's quote service calls the TDQE in C (``native_producer``); quotes and
    refusals through the configfs path are the same as through the TDQE's Python ``produce``, and a
    producer that replaces ``produce`` is still the one called."""
    from tdxmodel import errors
    from tdxmodel.client import TdxGuest

    platform = Platform(StateStore(tmp_path / "state", backend=backend.BACKEND_NAME))
    platform.pki()
    with TdxGuest("v7.1", backend=backend.BACKEND_NAME, config=platform.store.load()) as g:
        qe = platform.quoting_enclave(module=g.module)
        assert (qe.native_producer() is not None) == (backend.BACKEND_NAME == "core")
        counting = _Counting(qe)
        host = g.attach_host(producer=qe)
        native = g.get_quote(b"n")
        host.producer = counting
        python = g.get_quote(b"n")
        assert counting.calls == 1
        sig = Q.parse_quote(native).signature_data_offset
        assert native[:sig] == python[:sig] and native[sig + 64:] == python[sig + 64:]
        assert Q.verify(native, platform.collateral(), platform.pki().root_cert).status == "UpToDate"
        # refusals: a TDQE whose module is another platform's (TDQE_ERROR_INVALID_REPORT) fails the
        # GetQuote the same way on both routes
        stranger = Platform(StateStore(tmp_path / "other", backend=backend.BACKEND_NAME)).quoting_enclave()
        answers = []
        for producer in (stranger, _Counting(stranger)):
            host.producer = producer
            try:
                answers.append(g.get_quote(b"n"))
            except errors.KernelError as e:
                answers.append(e.errno)
        assert answers[0] == answers[1] == abi.EIO
        # an instance whose produce was replaced is not called in C
        replaced = _Counting(platform.quoting_enclave(module=g.module))
        qe.produce = replaced.produce
        assert qe.native_producer() is None
        host.producer = qe
        assert Q.parse_quote(g.get_quote(b"r")).reportdata[:1] == b"r" and replaced.calls == 1
