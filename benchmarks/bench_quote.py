"""The quote path: the TDQE model against its ECDSA floor, and our verifier against dcap-qvl.

Questions: how close is quote generation to the one signature it must make (OpenSSL ECDSA-P256 over
SHA-256 of the 632-byte v4 signed region, key loaded once, C loop)? Does it scale across callers (the
core's C path releases the GIL)? Is ``tdxmodel.quote.verify`` at least as fast as dcap-qvl on the same
quote and collateral? ``tdxmodel bench --quote --json`` gives the same figures as one object.
"""

import threading

import dcap_qvl
import numpy as np
import pytest

from tdxmodel import quote as Q
from tdxmodel.host.collateral import Platform
from tdxmodel.state import StateStore

N = 200


@pytest.fixture
def setup(backend_name, tmp_path):
    platform = Platform(StateStore(tmp_path, backend=backend_name))
    qe = platform.quoting_enclave()
    report = qe.module.report(b"bench")
    raw = qe.produce(report)
    return backend_name, platform, qe, report, raw


def test_ecdsa_sign_floor_c_loop(benchmark, tmp_path):
    """The floor is a C loop, so it is the core's alone (the reference has no C)."""
    qe = Platform(StateStore(tmp_path, backend="core")).quoting_enclave()
    raw = qe.produce(qe.module.report(b"bench"))
    assert qe._core is not None, "the core's TDQE path is not built"
    benchmark.group = f"quote x{N}"
    benchmark.extra_info["ops_per_call"] = N
    benchmark(qe._core.sign_floor, raw[:632], N)


def test_quote_one_caller(benchmark, setup):
    name, _, qe, report, _ = setup
    benchmark.group = f"quote x{N}"
    benchmark.extra_info["ops_per_call"] = N

    def loop():
        for _ in range(N):
            qe.produce(report)
    benchmark(loop)


def test_quote_two_callers(benchmark, setup):
    name, _, qe, report, _ = setup
    benchmark.group = f"quote x{N}"
    benchmark.extra_info["ops_per_call"] = 2 * N

    def one():
        for _ in range(N):
            qe.produce(report)

    def loop():
        ts = [threading.Thread(target=one) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    benchmark(loop)


def test_quote_batch(benchmark, setup):
    _, _, qe, report, _ = setup
    benchmark.group = f"quote x{N}"
    benchmark.extra_info["ops_per_call"] = N
    rows = np.frombuffer(report * N, dtype=np.uint8).reshape(N, len(report))
    assert len(benchmark(qe.produce_batch, rows)) == N


def test_verify_ours(benchmark, setup):
    _, platform, _, _, raw = setup
    benchmark.group = "verify x1"
    coll, root = platform.collateral(), platform.pki().root_cert
    assert benchmark(Q.verify, raw, coll, root).ok


def test_verify_dcap_qvl(benchmark, setup):
    import time
    _, platform, _, _, raw = setup
    benchmark.group = "verify x1"
    coll = dcap_qvl.QuoteCollateralV3.from_json(platform.collateral().to_dcap_qvl_json())
    root = platform.pki().root_der()
    assert benchmark(dcap_qvl.verify_with_root_ca, raw, coll, root, int(time.time())).status == "UpToDate"
