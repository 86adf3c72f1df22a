"""Floors: the hash primitives a TDREPORT is made of, one operation per call (ref §4.5).

Question: what is the least a report can cost? HMAC-SHA-256 over 224 bytes with a precomputed key (the
MAC) and SHA-384 over 512 bytes (TEE_INFO_HASH, recomputed after every extend), through OpenSSL in a C
loop and through Python's hashlib/hmac. bench_batch.py puts the batch API beside the same floors.
"""

import hashlib
import hmac

from tdxmodel import abi, bench

N = 1000


def test_hmac224_openssl_c_loop(benchmark):
    benchmark.group = f"floors x{N}"
    benchmark.extra_info["ops_per_call"] = N
    hmac224, _ = bench.floor_functions()
    assert hmac224 is not None, "the core's _floor_hmac224 is not built"
    assert len(benchmark(hmac224, bytes(32), N)) == abi.TDX_MAC_LEN


def test_sha384_512_openssl_c_loop(benchmark):
    benchmark.group = f"floors x{N}"
    benchmark.extra_info["ops_per_call"] = N
    _, sha384 = bench.floor_functions()
    assert sha384 is not None, "the core's _floor_sha384_512 is not built"
    assert len(benchmark(sha384, N)) == abi.TDX_SHA384_LEN


def test_hmac224_python(benchmark):
    benchmark.group = f"floors x{N}"
    benchmark.extra_info["ops_per_call"] = N
    keyed = hmac.new(bytes(32), digestmod=hashlib.sha256)
    msg = bytes(abi.TDX_MAC_COVERED_LEN)

    def loop():
        for _ in range(N):
            m = keyed.copy()
            m.update(msg)
            m.digest()
    benchmark(loop)


def test_sha384_512_python(benchmark):
    benchmark.group = f"floors x{N}"
    benchmark.extra_info["ops_per_call"] = N
    msg = bytes(abi.TDX_TDINFO_LEN)

    def loop():
        for _ in range(N):
            hashlib.sha384(msg).digest()
    benchmark(loop)
