"""Quote workloads for ``tdxmodel bench --quote`` and ``benchmarks/bench_quote.py`` (host layer).

JSON keys (one object):

* ``quote_per_s``: ``QuotingEnclave.produce`` on one thread (the TDQE's checks, body copy, one ECDSA
  signature; in C without the GIL on the core backend, with ``cryptography`` on the reference);
* ``ecdsa_sign_floor_per_s`` (``floor_source``): OpenSSL ECDSA-P256 over SHA-256 of the v4 signed
  region (632 bytes) with the key loaded once, in a C loop, same run (the ``cryptography`` package's
  sign call in a Python loop when the core is not built);
* ``quote_scaling``: callers ("1".."N") -> quotes per second, N threads calling ``produce``, each
  caller with its own TDREPORT and its own bound ``produce`` (two TDs' requests are two objects: one
  shared ``bytes`` object's reference count, written by both cores per call, cost 4-5 % at 2 callers);
  ``quote_scaling_parallelism``: the cores those threads were granted (CPU-seconds / wall-seconds);
* ``batch_quote_per_s``: ``produce_batch`` on ``batch_rows`` TDREPORTs per call, one thread;
* ``whole_path_quote_per_s`` (``whole_path_driver``): ``TdxGuest.get_quote`` through the emulated
  configfs-tsm path (mkdir, inblob write, outblob read: TDG.MR.REPORT, GetQuote TDVMCALL, the host
  and its TDQE, the wait, the copies), virtual clock, zero host service time, one caller;
* ``verify_per_s``: ``tdxmodel.quote.verify`` of one quote with its collateral and root;
* ``dcap_qvl_verify_per_s``: ``dcap_qvl.verify_with_root_ca`` on the same quote and collateral (null
  when dcap-qvl is not installed);
* ``ratios``: ``quote_vs_floor``, ``quote_2_callers_vs_floor``, ``whole_path_vs_floor``,
  ``verify_vs_dcap_qvl``;
* ``cpu_rates``: the floor, ``quote_per_s`` and the whole path per CPU-second of the measuring thread,
  and their two ratios to the floor (what a loaded machine leaves intact).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

BATCH_ROWS = 256
#: The configfs-tsm generation of the whole-path figure: upstream 6.16-6.19 (8 KiB quote buffer, ref §2.5).
WHOLE_PATH_DRIVER = "v6.16"


def _rates(fn: Callable[[], Any], seconds: float, per_call: int = 1) -> Tuple[float, float]:
    """(calls per wall-second, calls per CPU-second of this thread) of ``fn`` for about ``seconds``.
    On a shared machine the second holds where the first shows the neighbours."""
    fn()  # warm
    n, t0, c0 = 0, time.perf_counter(), time.thread_time()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n * per_call / dt, n * per_call / max(time.thread_time() - c0, 1e-9)


def _rate(fn: Callable[[], Any], seconds: float, per_call: int = 1) -> float:
    return _rates(fn, seconds, per_call)[0]


def _threads(make_fn: Callable[[int], Callable[[], Any]], callers: int, seconds: float) -> Tuple[float, float]:
    """(calls per second of ``callers`` threads, thread i calling ``make_fn(i)()`` in a loop, the cores
    they were granted: their CPU-seconds over the wall-seconds, so a figure from a shared machine can
    be read)."""
    counts = [0] * callers
    cpu = [0.0] * callers
    start, stop = threading.Barrier(callers + 1), threading.Event()

    def worker(i: int) -> None:
        fn = make_fn(i)
        start.wait()
        c0 = time.thread_time()
        while not stop.is_set():
            fn()
            counts[i] += 1
        cpu[i] = time.thread_time() - c0

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(callers)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    dt = time.perf_counter() - t0
    for t in ts:
        t.join()
    return sum(counts) / dt, sum(cpu) / dt


def whole_path_rate(platform: Any, seconds: float, backend: Optional[str] = None,
                    driver: str = WHOLE_PATH_DRIVER) -> Tuple[float, float]:
    """(Quotes per wall-second, per CPU-second) of ``TdxGuest.get_quote`` on a TD of ``platform`` (its module, its TDQE as the
    host's quote service), with the virtual clock and zero service time: what the emulated kernel path,
    the copies and configfs add to the quote itself."""
    from tdxmodel import quote as Q
    from tdxmodel.client import TdxGuest

    with TdxGuest(driver, backend=backend, config=platform.store.load()) as guest:
        host = guest.attach_host(producer=platform.quoting_enclave(module=guest.module), clock="virtual")
        host.set_schedule([{"seconds": 0}], cycle=True)
        Q.parse_quote(guest.get_quote(b"bench"))  # a real quote, or this raises
        return _rates(lambda: guest.get_quote(b"bench"), seconds)


def run(seconds: float = 0.5, callers: int = 2, progress: Optional[Callable[[str], None]] = None,
        backend: Optional[str] = None) -> Dict[str, Any]:
    import numpy as np

    from tdxmodel import quote as Q
    from tdxmodel.host.collateral import Platform
    from tdxmodel.state import StateStore

    say = progress or (lambda m: None)
    with tempfile.TemporaryDirectory(prefix="tdxmodel-bench-quote-") as d:
        platform = Platform(StateStore(d, backend=backend))
        qe = platform.quoting_enclave()
        report = qe.module.report(b"bench")
        raw = qe.produce(report)
        signed = raw[:Q.parse_quote(raw).signature_data_offset - 4]
        collateral, root = platform.collateral(), platform.pki().root_cert
        out: Dict[str, Any] = {"backend": qe.backend, "seconds": seconds, "callers": callers,
                               "batch_rows": BATCH_ROWS, "quote_len": len(raw)}

        say("ECDSA sign floor")
        if qe._core is not None:
            n = 2000
            while True:
                t0, c0 = time.perf_counter(), time.thread_time()
                qe._core.sign_floor(signed, n)
                dt, dc = time.perf_counter() - t0, time.thread_time() - c0
                if dt >= seconds:
                    break
                n *= 2
            floor = n / dt, n / max(dc, 1e-9)
            out["floor_source"] = "openssl-c-loop"
        else:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import ec
            key, alg = qe.attestation_key, ec.ECDSA(hashes.SHA256())
            floor = _rates(lambda: key.sign(signed, alg), seconds)
            out["floor_source"] = "cryptography-python-loop"
        out["ecdsa_sign_floor_per_s"] = floor[0]

        say("quote, one caller")
        one = _rates(lambda: qe.produce(report), seconds)
        out["quote_per_s"] = one[0]
        say(f"quote, 1..{callers} callers")
        def caller(i: int) -> Callable[[], Any]:
            produce, own_report = qe.produce, bytes(bytearray(report))  # this caller's objects
            return lambda: produce(own_report)
        scaling = {str(c): _threads(caller, c, seconds) for c in range(1, callers + 1)}
        out["quote_scaling"] = {k: v[0] for k, v in scaling.items()}
        out["quote_scaling_parallelism"] = {k: v[1] for k, v in scaling.items()}
        say(f"whole path ({WHOLE_PATH_DRIVER} configfs-tsm, virtual clock, zero service time)")
        whole = whole_path_rate(platform, seconds, backend)
        out["whole_path_quote_per_s"] = whole[0]
        # The same three per CPU-second of the measuring thread: their ratios hold on a loaded machine.
        out["cpu_rates"] = {"ecdsa_sign_floor_per_cpu_s": floor[1], "quote_per_cpu_s": one[1],
                            "whole_path_quote_per_cpu_s": whole[1], "quote_vs_floor": one[1] / floor[1],
                            "whole_path_vs_floor": whole[1] / floor[1]}
        out["whole_path_driver"] = WHOLE_PATH_DRIVER
        say("quote batch")
        rows = np.frombuffer(report * BATCH_ROWS, dtype=np.uint8).reshape(BATCH_ROWS, len(report))
        out["batch_quote_per_s"] = _rate(lambda: qe.produce_batch(rows), seconds, BATCH_ROWS)

        say("verify (tdxmodel.quote.verify)")
        out["verify_per_s"] = _rate(lambda: Q.verify(raw, collateral, root), seconds)
        say("verify (dcap-qvl)")
        try:
            import dcap_qvl
        except ImportError:
            out["dcap_qvl_verify_per_s"] = None
        else:
            dc = dcap_qvl.QuoteCollateralV3.from_json(collateral.to_dcap_qvl_json())
            root_der, now = platform.pki().root_der(), int(time.time())
            out["dcap_qvl_verify_per_s"] = _rate(lambda: dcap_qvl.verify_with_root_ca(raw, dc, root_der, now),
                                                 seconds)
        floor = out["ecdsa_sign_floor_per_s"]
        out["ratios"] = {
            "quote_vs_floor": out["quote_per_s"] / floor,
            "quote_2_callers_vs_floor": (out["quote_scaling"].get("2", 0.0) / floor) if callers >= 2 else None,
            "whole_path_vs_floor": out["whole_path_quote_per_s"] / floor,
            "verify_vs_dcap_qvl": (out["verify_per_s"] / out["dcap_qvl_verify_per_s"]
                                   if out["dcap_qvl_verify_per_s"] else None),
        }
        out["machine"] = {"cpus": os.cpu_count()}
    return out


def format_table(r: Dict[str, Any]) -> str:
    rows = [("backend", r["backend"]), ("ecdsa_sign_floor_per_s", f"{r['ecdsa_sign_floor_per_s']:.0f} ({r['floor_source']})"),
            ("quote_per_s", f"{r['quote_per_s']:.0f}"), ("batch_quote_per_s", f"{r['batch_quote_per_s']:.0f}"),
            ("whole_path_quote_per_s", f"{r['whole_path_quote_per_s']:.0f} ({r['whole_path_driver']} configfs-tsm)")]
    rows += [(f"quote_scaling[{k}]", f"{v:.0f} ({r['quote_scaling_parallelism'][k]:.2f} cores)")
             for k, v in r["quote_scaling"].items()]
    rows += [("verify_per_s", f"{r['verify_per_s']:.0f}"),
             ("dcap_qvl_verify_per_s", "n/a" if r["dcap_qvl_verify_per_s"] is None else f"{r['dcap_qvl_verify_per_s']:.0f}")]
    rows += [(k, "n/a" if v is None else f"{v:.2f}x") for k, v in r["ratios"].items()]
    rows += [(f"per CPU-second: {k}", f"{r['cpu_rates'][k]:.2f}x") for k in ("quote_vs_floor", "whole_path_vs_floor")]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
