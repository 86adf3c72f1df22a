"""SharedHost: several TDs (each its own Module, Kernel and VMM) on one host machine whose 16
in-flight GetQuote slots (QEMU's TDX_MAX_GET_QUOTE_REQUEST, quote.md §4.1 H6) count across all of
them: with 16 requests in flight the 17th, from any TD, gets R10 RETRY, and a guest meeting it does
what its generation does on RETRY (the same as under the host's `retry` fault). Both backends."""

from __future__ import annotations

import struct

import pytest

from tdxmodel import abi, errors, profiles
from tdxmodel.client import TdxGuest
from tdxmodel.config import ModuleConfig
from tdxmodel.host_faults import TestQuoteProducer

GPA = 0x10000
SLOTS = abi.HOST_MAX_GET_QUOTE_REQUESTS
QUOTE_DRIVERS = [d for d in abi.DRIVERS if profiles.get(d).quote is not None or profiles.get(d).ioctl_quote is not None]


def get_quote_vmcall(module, payload=b"report"):
    """One GetQuote TDVMCALL straight from the TD (quote.md §3.2): a shared page with the 24-byte
    header; returns R10."""
    module.set_page_state(GPA, 1, "shared")
    module.write_memory(GPA, struct.pack("<QQII", abi.GET_QUOTE_CMD_VER, 0, len(payload), 0) + payload)
    r10, _ = module.tdvmcall(abi.TDVMCALL_GET_QUOTE, GPA | abi.TDX_GPA_SHARED_BIT, abi.TDX_PAGE_SIZE)
    return r10


def status(module):
    return struct.unpack_from("<Q", module.read_memory(GPA + abi.QUOTE_HDR_OFF_STATUS, 8))[0]


@pytest.fixture
def fillers(backend):
    """fillers(shared, n) -> n TDs on SHARED, each with one GetQuote in flight that never completes."""
    made = []

    def make(shared, n):
        for i in range(n):
            m = backend.Module(ModuleConfig(seed=100 + i), memory_pages=64)
            h = shared.attach(m)
            h.push_fault("never")
            assert get_quote_vmcall(m) == abi.TDVMCALL_STATUS_SUCCESS
            made.append(h)
        return made[-n:]

    yield make
    for h in made:
        h.close()


def test_the_seventeenth_request_in_flight_from_any_td_is_retry(backend, fillers):
    shared = backend.SharedHost(producer=TestQuoteProducer())
    assert shared.slots == SLOTS == 16
    held = fillers(shared, SLOTS - 1)
    m = backend.Module(ModuleConfig(seed=7), memory_pages=64)
    h = shared.attach(m)
    h.push_fault(None, seconds=1.0)
    assert get_quote_vmcall(m) == abi.TDVMCALL_STATUS_SUCCESS           # the 16th: accepted
    assert status(m) == abi.GET_QUOTE_IN_FLIGHT
    late = backend.Module(ModuleConfig(seed=8), memory_pages=64)
    lh = shared.attach(late)
    assert get_quote_vmcall(late) == abi.TDVMCALL_STATUS_RETRY           # the 17th: RETRY
    assert status(late) == 0  # the header is untouched (H6 comes before anything is written)
    c = shared.counters()
    assert (c["hosts"], c["in_flight"], c["peak_in_flight"], c["accepted"], c["retries"]) == (SLOTS + 1, SLOTS, SLOTS, SLOTS, 1)
    assert lh.counters()["retries"] == 1 and lh.counters()["in_flight"] == 0
    # a TD with a VMM of its own is not limited by this host
    own = backend.Module(ModuleConfig(seed=9), memory_pages=64)
    oh = backend.Host(own, producer=TestQuoteProducer())
    assert get_quote_vmcall(own) == abi.TDVMCALL_STATUS_SUCCESS
    oh.close()
    # one TD's request completes on its clock: its slot is free for the TD that was refused
    h.clock.advance_ns(2 * 10**9)
    assert status(m) == abi.GET_QUOTE_SUCCESS and shared.counters()["in_flight"] == SLOTS - 1
    assert get_quote_vmcall(late) == abi.TDVMCALL_STATUS_SUCCESS
    lh.clock.advance_ns(10**9)
    assert status(late) == abi.GET_QUOTE_SUCCESS
    # a TD that goes away gives its slots back, requests in flight included
    for f in held:
        f.close()
    h.close()
    lh.close()
    c = shared.counters()
    assert (c["hosts"], c["in_flight"], c["completed"], c["accepted"], c["retries"]) == (0, 0, 2, SLOTS + 1, 1)


def test_a_shared_host_is_for_its_backend_and_counts_from_the_first_request(backend):
    shared = backend.SharedHost()
    with pytest.raises(TypeError):
        backend.Host(backend.Module(ModuleConfig(), memory_pages=64), shared=object())
    with pytest.raises(TypeError):
        backend.SharedHost(producer=object())
    m = backend.Module(ModuleConfig(), memory_pages=64)
    h = shared.attach(m)
    assert h.shared is shared and h.producer is None
    # no quote service on this host (producer None): H5, before any slot is taken
    assert get_quote_vmcall(m) == abi.TDVMCALL_STATUS_SUCCESS and status(m) == abi.GET_QUOTE_SERVICE_UNAVAILABLE
    assert shared.counters()["in_flight"] == 0
    h.close()
    assert shared.counters()["hosts"] == 0


def outcome(guest):
    try:
        return ("ok", len(guest.get_quote(b"seventeenth")))
    except errors.KernelError as e:
        return ("errno", e.errno)


def td_on(backend, driver, host_factory):
    """A TD of DRIVER whose VMM comes from host_factory(module) before the kernel boots (an ioctl quote
    path registers its notify vector at boot)."""
    m = backend.Module(ModuleConfig(seed=3), memory_pages=128)
    h = host_factory(m)
    k = backend.Kernel(m, driver)
    g = TdxGuest(kernel=k)
    g.host = h
    return g, h


@pytest.mark.parametrize("driver", QUOTE_DRIVERS)
def test_a_guest_meeting_a_full_shared_host_does_what_its_generation_does_on_retry(backend, fillers, driver):
    # the generation's answer to RETRY: its own host, the `retry` fault (quote.md §4.1 H6)
    g, h = td_on(backend, driver, lambda m: backend.Host(m, producer=TestQuoteProducer()))
    h.push_fault("retry")
    expected = outcome(g)
    g.host = None
    g.close()
    h.close()
    assert expected[0] == "errno" or expected == ("ok", 0), expected  # RETRY never gives a quote
    if profiles.get(driver).quote is not None:
        assert expected == ("errno", abi.EIO)  # configfs-tsm: R10 != 0 is -EIO (quote.md §2.3 P6)

    shared = backend.SharedHost(producer=TestQuoteProducer())
    fillers(shared, SLOTS)
    g, h = td_on(backend, driver, shared.attach)
    try:
        assert outcome(g) == expected
        assert h.counters()["retries"] == 1 and shared.counters()["retries"] == 1
    finally:
        g.host = None
        g.close()
        h.close()


@pytest.mark.parametrize("driver", ["v7.1", "intel-downstream"])
def test_tds_on_a_shared_host_each_get_their_own_quote(backend, driver):
    """Several TDs quoting through one shared host: each quote is of the TD that asked (the test
    producer's bytes carry its payload), and the host's counters add up."""
    shared = backend.SharedHost(producer=TestQuoteProducer())
    tds = [td_on(backend, driver, shared.attach) for _ in range(3)]
    try:
        for i, (g, h) in enumerate(tds):
            q = g.get_quote(bytes([i]) * 8)
            assert q.startswith(TestQuoteProducer.MAGIC) and h.counters()["completed"] == 1
            payload = q[len(TestQuoteProducer.MAGIC) + 48:]
            assert bytes([i]) * 8 in payload
        c = shared.counters()
        assert (c["hosts"], c["accepted"], c["completed"], c["in_flight"], c["retries"]) == (3, 3, 3, 0, 0)
    finally:
        for g, h in tds:
            g.host = None
            g.close()
            h.close()


def test_bench_shared_host_json(capsys):
    """`tdxmodel bench --shared-host --tds LIST --json`: per N TDs quotes/s and RETRY counts, every
    request either a quote or a RETRY the guest saw as -EIO (and the host counted), never more than
    16 in flight; the downstream driver's parallel requests beside them."""
    import json
    from tdxmodel.cli import main
    code = main(["bench", "--shared-host", "--tds", "1,17", "--service-ms", "20", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and set(out["shared_host"]) == {"1", "17"}
    for n, row in out["shared_host"].items():
        assert row["quotes"] + row["retries"] == int(n) * out["rounds"]
        assert row["retries"] == row["host_retries"] and 1 <= row["peak_in_flight"] <= SLOTS
        assert row["quotes_per_s"] > 0
    assert out["shared_host"]["1"]["retries"] == 0 and out["service_ms"] == 20
    assert set(out["downstream_parallel"]) == {"1", "4", "16", "24"}
    assert out["downstream_parallel"]["1"]["retries"] == 0


@pytest.mark.parametrize("argv, fragment", [
    (["--shared-host", "--tds", "0"], "--tds"),
    (["--shared-host", "--tds", "a,b"], "--tds"),
    (["--tds", "2"], "--tds needs --shared-host"),
    (["--shared-host", "--quote-latency"], "--quote-latency"),
])
def test_bench_shared_host_bad_flags_exit_2_with_one_line(capsys, argv, fragment):
    from tdxmodel.cli import main
    try:
        code = main(["bench", *argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err
