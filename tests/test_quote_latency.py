"""`tdxmodel bench --quote-latency` and `tdxmodel.quote_latency`: flags, JSON keys and what the
virtual clock makes of each completion mode (the emulated times, deterministic; never wall time).
"""

from __future__ import annotations

import json
import threading

import pytest

from tdxmodel import abi, quote_latency as ql
from tdxmodel.cli import main
from tdxmodel.client import TdxGuest
from tdxmodel.host_faults import TestQuoteProducer

ROW_KEYS = {"quotes_per_s", "min_ms", "median_ms", "max_ms"}


def run_cli(capsys, *argv):
    code = main(["bench", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_the_contract_keys_and_reproduces_the_table_on_the_virtual_clock(capsys):
    code, out, _ = run_cli(capsys, "--quote-latency", "--json")
    assert code == 0
    result = json.loads(out)
    lat = result["quote_latency"]
    assert list(lat) == ["poll-1000", "poll-5", "poll-1", "interrupt"]
    assert all(ROW_KEYS <= set(row) for row in lat.values())
    # HZ=1000: msleep(1000) wakes on a 64 ms wheel step (1024 ms from t=0), msleep(5) after 7 ms,
    # msleep(1) after 3 ms (two of them before the 4.6 ms service is done); the interrupt at 4.6 ms
    assert [lat[k]["median_ms"] for k in lat] == [1024.0, 7.0, 6.0, 4.6]
    assert lat["poll-5"]["quotes_per_s"] == pytest.approx(1000 / 7)
    assert result["within_published"] == {"poll-1000": True, "poll-5": True, "poll-1": True, "interrupt": True}
    assert result["clock"] == "virtual" and result["hz"] == 1000 and result["service_ms"] == 4.6
    conc = result["quote_concurrency"]["callers"]
    assert list(conc) == ["1", "2", "4", "8"] and all(r["quotes"] == int(n) * 3 for n, r in conc.items())
    # served one at a time: all N callers of a round take N quotes' time; quotes/s stays one caller's
    assert [conc[n]["round_ms"] for n in conc] == [7.0, 14.0, 28.0, 56.0]
    assert all(r["quotes_per_s"] == pytest.approx(1000 / 7) for r in conc.values())


def test_poll_list_and_service_time(capsys):
    code, out, _ = run_cli(capsys, "--quote-latency", "--json", "--poll-ms", "2,5", "--service-ms", "3")
    assert code == 0
    lat = json.loads(out)["quote_latency"]
    assert list(lat) == ["poll-2", "poll-5", "interrupt"]
    assert (lat["poll-2"]["median_ms"], lat["poll-5"]["median_ms"], lat["interrupt"]["median_ms"]) == (4.0, 7.0, 3.0)


def test_table_names_the_published_figures(capsys):
    code, out, _ = run_cli(capsys, "--quote-latency")
    assert code == 0
    assert "1025.95" in out and "6.85-10.93" in out and "2.99-10.76" in out and "HZ=1000" in out
    assert "N callers in one TD asking at once" in out


@pytest.mark.parametrize("argv, fragment", [
    (["--quote-latency", "--poll-ms", "0"], "--poll-ms"),
    (["--quote-latency", "--poll-ms", "5,x"], "--poll-ms"),
    (["--quote-latency", "--service-ms", "-1"], "--service-ms"),
    (["--quote-latency", "--service-ms", "nan"], "--service-ms"),
    (["--quote-latency", "--clock", "sundial"], "--clock"),
    (["--quote-latency", "--clock", "real", "--spin-us", "-1"], "--spin-us"),
    (["--quote-latency", "--clock", "real", "--spin-us", "nan"], "--spin-us"),
    (["--quote-latency", "--clock", "real", "--spin-us", "1e7"], "--spin-us"),
])
def test_bad_flags_exit_2_with_one_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err


@pytest.mark.parametrize("argv, fragment", [
    (["--poll-ms", "5"], "--poll-ms needs --quote-latency"),
    (["--clock", "real"], "--clock needs --quote-latency"),
    (["--spin-us", "100"], "--spin-us needs --quote-latency"),
    (["--quote-latency", "--spin-us", "100"], "--spin-us needs --clock real"),
    (["--shared-host", "--spin-us", "0"], "--spin-us does not apply"),
    (["--quote-latency", "--quote"], "--quote-latency"),
])
def test_flags_that_belong_to_quote_latency(capsys, argv, fragment):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and fragment in err and len(err.strip().splitlines()) == 1


def test_plot(capsys, tmp_path):
    target = tmp_path / "latency.png"
    code, out, err = run_cli(capsys, "--quote-latency", "--plot", str(target))
    assert code == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_cli(capsys, "--quote-latency", "--plot", str(tmp_path / "no" / "x.png"))
    assert code == 2 and "does not exist" in err


def test_both_backends_report_the_same_virtual_latencies():
    rows = [ql.run((1000, 3), backend=b)["quote_latency"] for b in ("core", "reference")]
    assert rows[0] == rows[1]


def test_modes_map_to_the_kernel_option():
    assert ql.completion_for("poll-1000").mode == "stock"
    c = ql.completion_for("poll-7")
    assert (c.mode, c.interval_ms, c.cap_ms, c.hz) == ("poll", 7, abi.QUOTE_POLL_CAP_MS, ql.HZ)
    assert ql.completion_for("interrupt").mode == "interrupt"


@pytest.mark.parametrize("mode,per_quote_ns", [("poll", 7_000_000), ("interrupt", 4_600_000)])
def test_n_callers_in_one_td_are_served_one_at_a_time(backend, mode, per_quote_ns):
    """Concurrent quotes in one TD take the tsm rwsem for writing and quote_lock (quote.md §1.5,
    §2.3): on the virtual clock, overlapping waits would overlap in time; served one at a time,
    N callers' quotes take N times one quote's time."""
    n, q = 4, 3
    td = TdxGuest("v6.16", backend.BACKEND_NAME, quote_completion={"mode": mode, "hz": 1000})
    host = td.attach_host(TestQuoteProducer())
    host.set_schedule([{"fault": None, "seconds": 0.0046}], cycle=True)
    guests = [td] + [TdxGuest(kernel=td.kernel) for _ in range(n - 1)]
    for g in guests[1:]:
        g.host = host
    barrier = threading.Barrier(n)
    done = []

    def caller(g, i):
        barrier.wait()
        for k in range(q):
            done.append(g.get_quote(bytes([i, k]), item=f"c{i}") != b"")

    threads = [threading.Thread(target=caller, args=(g, i)) for i, g in enumerate(guests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert done == [True] * (n * q)
    assert host.clock.now_ns() == n * q * per_quote_ns
    assert host.counters()["accepted"] == n * q
    for g in guests[1:]:
        g.host = None
        g.close()
    td.close()


def test_the_real_clock_table_spins_the_end_of_its_sleeps_by_default():
    """On the real clock every latency mode's sleeps end awake (DEFAULT_REAL_SPIN_US) unless told 0;
    the run says which it did, and a quote still takes at least the service time."""
    spun = ql.run((5,), clock="real", seconds=0.02)
    assert spun["spin_us"] == ql.DEFAULT_REAL_SPIN_US > 0
    assert f"sleeps spin their last {ql.DEFAULT_REAL_SPIN_US} us" in ql.format_table(spun)
    plain = ql.run((5,), clock="real", seconds=0.02, spin_us=0)
    assert plain["spin_us"] == 0 and "spin" not in ql.format_table(plain)
    for result in (spun, plain):
        assert result["quote_latency"]["interrupt"]["min_ms"] >= 4.6
        assert result["quote_latency"]["poll-5"]["min_ms"] >= 6.0   # msleep(5) at HZ=1000: 6-7 ms
    assert ql.run((5,), seconds=0.02)["spin_us"] == 0                # the virtual clock never spins
