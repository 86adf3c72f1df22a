"""The TDQE plugged into the host's quote path as its QuoteProducer: a guest's GetQuote TDVMCALL
(quote.md §3.2, §4.1) returns a DCAP quote that our verifier and dcap-qvl accept, with the guest's
REPORTDATA inside. Both backends; the Module comes from make_module."""

import struct
import time

import dcap_qvl
import pytest

from tdxmodel import abi
from tdxmodel import quote as Q
from tdxmodel.host.collateral import Platform
from tdxmodel.state import StateStore

PAGE = abi.TDX_PAGE_SIZE
BUF = 16 * PAGE
SIZE = 2 * PAGE


@pytest.mark.parametrize("version", [4, 5])
def test_get_quote_through_the_host_returns_a_verifiable_quote(tmp_path, backend, make_module, version):
    platform = Platform(StateStore(tmp_path / "state", backend=backend))
    platform.set_tcb(status="SWHardeningNeeded", quote_version=version)
    module = make_module(memory_pages=96, **platform.store.load().to_dict())
    module.set_page_state(BUF, SIZE // PAGE, "shared")
    host = backend.Host(module, producer=platform.quoting_enclave(module=module))
    try:
        nonce = bytes(range(64))
        report = module.report(nonce)
        module.write_memory(BUF, bytes(SIZE))
        module.write_memory(BUF, struct.pack("<QQII", 1, 0, len(report), 0) + report)
        assert module.tdvmcall(abi.TDVMCALL_GET_QUOTE, BUF | abi.TDX_GPA_SHARED_BIT, SIZE)[0] == \
            abi.TDVMCALL_STATUS_SUCCESS
        host.clock.advance_ns(abi.HOST_SERVICE_TIME_US * 1000)
        _, status, _, out_len = struct.unpack("<QQII", module.read_memory(BUF, 24))
        assert status == abi.GET_QUOTE_SUCCESS
        raw = module.read_memory(BUF + 24, out_len)
    finally:
        host.close()
    q = Q.parse_quote(raw)
    assert q.version == version and q.reportdata == nonce
    coll, pki = platform.collateral(), platform.pki()
    r = Q.verify(raw, coll, pki.root_cert)
    assert (r.status, r.advisory_ids) == ("SWHardeningNeeded", ["INTEL-SA-00837"])
    d = dcap_qvl.verify_with_root_ca(raw, dcap_qvl.QuoteCollateralV3.from_json(coll.to_dcap_qvl_json()),
                                     pki.root_der(), int(time.time()))
    assert d.status == "SWHardeningNeeded"


def test_a_report_the_tdqe_refuses_gives_get_quote_error(tmp_path, backend, make_module):
    platform = Platform(StateStore(tmp_path / "state", backend=backend))
    platform.pki()
    module = make_module(memory_pages=96, **platform.store.load().to_dict())
    module.set_page_state(BUF, SIZE // PAGE, "shared")
    host = backend.Host(module, producer=platform.quoting_enclave(module=module))
    try:
        report = bytearray(module.report(b""))
        report[600] ^= 1  # TEE_INFO_HASH no longer matches: TDQE_ERROR_INVALID_HASH
        module.write_memory(BUF, bytes(SIZE))
        module.write_memory(BUF, struct.pack("<QQII", 1, 0, len(report), 0) + bytes(report))
        module.tdvmcall(abi.TDVMCALL_GET_QUOTE, BUF | abi.TDX_GPA_SHARED_BIT, SIZE)
        host.clock.advance_ns(abi.HOST_SERVICE_TIME_US * 1000)
        _, status, _, out_len = struct.unpack("<QQII", module.read_memory(BUF, 24))
    finally:
        host.close()
    assert status == abi.GET_QUOTE_ERROR and out_len == 0
