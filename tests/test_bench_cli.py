"""`tdxmodel bench`: flags, JSON keys and exit codes are a contract.

These check what the command reports and how it fails, never how fast anything is (speed is measured
by benchmarks/, not by timed tests).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tdxmodel import abi, bench, client
from tdxmodel.client import TdxGuest
from tdxmodel.cli import main

FAST = ["--seconds", "0.05"]
CONTRACT_KEYS = {"batch_reports_per_s", "mac_floor_per_s", "call_median_us", "call_p99_us",
                 "reference_call_median_us", "scaling", "busy_rate",
                 "mixed_scaling", "ioctl_scaling", "quote_per_s", "ecdsa_sign_floor_per_s", "quote_latency",
                 "whole_path_quote_per_s"}


def run_cli(capsys, *argv):
    code = main(["bench", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, fragment", [
    (["--callers", "0"], "--callers"),
    (["--callers", "two"], "--callers"),
    (["--seconds", "-1"], "--seconds"),
    (["--seconds", "nan"], "--seconds"),
    (["--extend-ratio", "1"], "--extend-ratio"),
    (["--extend-ratio", "-0.1"], "--extend-ratio"),
    (["--driver", "v5.0"], "--driver"),
    (["--frobnicate"], "unrecognized"),
])
def test_bad_flag_values_exit_2_with_one_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err


def test_json_has_the_contract_keys(capsys):
    code, out, _ = run_cli(capsys, "--json", "--callers", "2", *FAST)
    assert code == 0
    result = json.loads(out)
    assert CONTRACT_KEYS <= set(result)
    assert set(result["scaling"]) == set(result["ioctl_scaling"]) == set(result["ioctl_batch_scaling"]) == {"1", "2"}
    assert all(v > 0 for v in result["scaling"].values())
    assert set(result["mixed_scaling"]) == {"1", "2"} and all(v > 0 for v in result["mixed_scaling"].values())
    assert result["quote_per_s"] > 0 and result["ecdsa_sign_floor_per_s"] > 0
    assert list(result["quote_latency"]) == ["poll-1000", "poll-5", "poll-1", "interrupt"]
    assert all({"quotes_per_s", "min_ms", "median_ms", "max_ms"} <= set(r) for r in result["quote_latency"].values())
    for key in ("batch_reports_per_s", "mac_floor_per_s", "reference_call_median_us"):
        assert result[key] > 0, key
    assert 0 <= result["call_median_us"] <= result["call_p99_us"]
    # No extends were asked for, so no report can have met the held RTMR lock (ref §4.8).
    assert result["busy_rate"] == 0.0
    assert result["driver"] == "v6.2" and result["callers"] == 2  # v6.2 is the default


def test_extend_ratio_runs_extends_and_reports_busy_as_a_fraction(capsys):
    code, out, _ = run_cli(capsys, "--json", "--callers", "2", "--extend-ratio", "0.5", "--driver", "v6.16",
                           *FAST)
    assert code == 0
    result = json.loads(out)
    assert result["driver"] == "v6.16" and result["extend_ratio"] == 0.5
    assert 0.0 <= result["busy_rate"] <= 1.0
    # On v6.16 the extends go through the measurement file under mr_lock, like the driver's REPORTs,
    # so no driver call can meet BUSY (ref §2.5, §4.8).
    assert result["ioctl_busy_rate"] == 0.0
    # mixed_scaling counts the reports alone: half the batch callers' calls were extends.
    assert 0 < result["mixed_scaling"]["1"] < result["scaling"]["1"]


def test_table_is_readable(capsys):
    code, out, _ = run_cli(capsys, "--callers", "1", "--driver", "v4-2022-04", *FAST)
    assert code == 0
    assert "GET_REPORT ioctl median" in out and "HMAC-SHA-256 224 B floor" in out
    assert "callers" in out and "v4-2022-04" in out


def test_plot(capsys, tmp_path):
    target = tmp_path / "scaling.png"
    if importlib.util.find_spec("matplotlib") is None:
        code, out, err = run_cli(capsys, "--plot", str(target), *FAST)
        assert code == 2 and "matplotlib" in err and len(err.strip().splitlines()) == 1
        assert not target.exists()
    else:
        code, out, err = run_cli(capsys, "--plot", str(target), "--callers", "2", *FAST)
        assert code == 0
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_into_a_missing_directory_is_refused_before_measuring(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--plot", str(tmp_path / "no" / "such.png"), *FAST)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


# --- the driver-path batch the benchmarks use --------------------------------------------------------

@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_ioctl_batch_returns_each_rows_report(backend, make_kernel, driver):
    kernel = make_kernel(driver)
    data = bench.random_reportdata(5, seed=3)
    with TdxGuest(kernel=kernel) as caller:
        rets, reports = caller.ioctl_batch(data)
    assert rets.tolist() == [0] * 5
    assert np.array_equal(reports[:, abi.TDR_OFF_REPORTDATA:abi.TDR_OFF_REPORTDATA + 64], data)
    for row in reports:  # each is a genuine report of this platform (ref §4.7)
        assert kernel.module.verify(row.tobytes()) == abi.TDX_SUCCESS


def test_ioctl_batch_fail_nth_schedule(backend, make_kernel):
    kernel = make_kernel("v6.2")
    kernel.fault("failslab").ignore_gfp_wait = False  # ref §7: else GFP_KERNEL allocations never fail
    schedule = np.array([0, 1, 0, 3, 2, 0])
    with TdxGuest(kernel=kernel) as caller:
        rets, reports = caller.ioctl_batch(bench.random_reportdata(6), schedule)
        assert caller.process.fail_nth == 0
    # v6.2 points in order (CONTRACT.md): reportdata:kmalloc, tdreport:kzalloc, then the copy-in
    # (fail_usercopy): ref §2.4 rows 1-3.
    assert rets.tolist() == [0, -abi.ENOMEM, 0, -abi.EFAULT, -abi.ENOMEM, 0]
    assert not reports[rets != 0].any()


def test_ioctl_batch_rejects_bad_arguments(backend, make_kernel):
    kernel = make_kernel("v6.2")
    with TdxGuest(kernel=kernel) as caller:
        with pytest.raises(ValueError, match="reportdata"):
            caller.ioctl_batch(np.zeros((2, 63), dtype=np.uint8))
        with pytest.raises(TypeError, match="reportdata"):
            caller.ioctl_batch([[0] * 64])
        with pytest.raises(ValueError, match="fail_nth"):
            caller.ioctl_batch(np.zeros((2, 64), dtype=np.uint8), fail_nth=np.zeros(3, dtype=np.int64))
        with pytest.raises(ValueError, match="fail_nth"):
            caller.ioctl_batch(np.zeros((2, 64), dtype=np.uint8), fail_nth=np.array([0, -1]))


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_ioctl_batch_core_equals_reference(driver):
    """The core runs ioctl_batch as one nogil C loop (csrc/tdx_batch.c), the reference as a Python loop
    of Process.ioctl calls: same platform and seed, so every result and report byte must agree."""
    from tdxmodel import _backend
    from tdxmodel.config import ModuleConfig
    from tests.conftest import assert_kernel_balanced, backends_under_test

    if set(backends_under_test()) != {"core", "reference"}:
        pytest.skip("compares the two backends; TDXMODEL_TEST_BACKENDS selects only one")

    data = bench.random_reportdata(12, seed=7)
    schedule = np.array([0, 1, 2, 3, 4, 5, 0, 6, 7, 0, 1, 0])
    outcomes = []
    for name in ("core", "reference"):
        be = _backend.load(name)
        kernel = be.Kernel(be.Module(ModuleConfig(seed=5)), driver, seed=0)
        for cap in ("failslab", "fail_page_alloc"):
            kernel.fault(cap).ignore_gfp_wait = False
        kernel.fault("fail_page_alloc").min_order = 0
        with TdxGuest(kernel=kernel) as caller:
            rets, reports = caller.ioctl_batch(data, schedule)
            assert caller.process.fail_nth == 0
        assert_kernel_balanced(kernel)
        outcomes.append((rets.tolist(), reports))
    assert outcomes[0][0] == outcomes[1][0]
    assert 0 in outcomes[0][0] and any(r < 0 for r in outcomes[0][0])
    assert np.array_equal(outcomes[0][1], outcomes[1][1])


def test_ioctl_batch_on_a_plain_process(backend, make_kernel):
    # The module-level form on any process: the caller maps the request buffer and opens the node.
    kernel = make_kernel("v4-2022-04")
    process = kernel.process()
    buffer = 0x200000
    process.mmap(buffer, 4096, "rw")
    fd = process.open(kernel.device_path)
    assert fd >= 3
    data = bench.random_reportdata(3, seed=1)
    rets, reports = client.ioctl_batch(process, fd, data, cmd=abi.TDX_CMD_GET_TDREPORT, buffer=buffer)
    assert rets.tolist() == [0, 0, 0]
    # v4 writes the TDREPORT over the same buffer (ref §2.2): the last one is still there.
    assert process.peek(buffer, abi.TDX_REPORT_LEN) == reports[2].tobytes()
    assert np.array_equal(reports[:, 128:192], data)
    with pytest.raises(ValueError):
        client.ioctl_batch(process, fd, data, cmd=abi.TDX_CMD_GET_TDREPORT, buffer=0x900000)  # unmapped
    assert process.close(fd) == 0
