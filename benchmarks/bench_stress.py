"""The correctness-under-load check of tests/test_stress.py at a large size, timed.

Question: do the RTMR lock (module) and mr_lock (6.16 driver) keep their semantics under many more
interleavings than CI can afford, and what does checked concurrent traffic cost?
"""

from tdxmodel import abi, bench
from tests import stress_oracles as oracles

THREADS = 4
OPS = {"core": 5000, "reference": 1000}


def test_stress_module_leaves(benchmark, backend_name):
    benchmark.group = "stress (large)"
    module = bench.make_module(backend_name)
    log = benchmark.pedantic(oracles.stress_module, args=(module,),
                             kwargs={"threads": THREADS, "ops_per_thread": OPS[backend_name]},
                             rounds=1, iterations=1)
    final = [module.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]
    assert oracles.check_stress(log, final, module.mac_key) == []
    benchmark.extra_info.update(extends=len(log.extends), reports=len(log.reports),
                                report_busy=log.report_busy, extend_busy=log.extend_busy)


def test_stress_module_extenders_per_rtmr(benchmark, backend_name):
    benchmark.group = "stress (large)"
    module = bench.make_module(backend_name)
    ops = OPS[backend_name] // 2
    log = benchmark.pedantic(oracles.stress_module_per_index, args=(module,),
                             kwargs={"reporters": 2, "ops_per_thread": ops}, rounds=1, iterations=1)
    final = [module.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]
    assert [len(e) for e in log.extends] == [ops] * abi.TDX_NUM_RTMRS
    assert oracles.check_stress_per_index(log, final) == []
    benchmark.extra_info.update(reports=len(log.reports), report_busy=log.report_busy,
                                extend_busy=log.extend_busy)


def test_stress_v616_driver(benchmark, backend_name):
    benchmark.group = "stress (large)"
    kernel = bench.make_kernel(backend_name, "v6.16")
    log = benchmark.pedantic(oracles.stress_driver, args=(kernel,),
                             kwargs={"threads": THREADS, "ops_per_thread": OPS[backend_name] // 2},
                             rounds=1, iterations=1)
    assert log.errnos == {}
    final = [kernel.module.rtmr(i) for i in range(abi.TDX_NUM_RTMRS)]
    assert oracles.check_stress(log, final, kernel.module.mac_key) == []
    benchmark.extra_info.update(extends=len(log.extends), reports=len(log.reports), reads=len(log.reads))
