"""TDG.VP.VMCALL and the host model, row by row: KVM's GetQuote check and QEMU's H1-H9 and completion
(quote.md §3.2, §4.1; tdx-abi.md §5), SetupEventNotifyInterrupt and GetTdVmCallInfo (quote.md §3.1,
§3.3), the fault menu and the platform clock. Every test runs on both backends.
"""

from __future__ import annotations

import hashlib
import struct

import time

import pytest

from tdxmodel import abi, errors

PAGE = abi.TDX_PAGE_SIZE
SHARED = abi.TDX_GPA_SHARED_BIT
BUF = 16 * PAGE                 # an 8 KiB quote buffer, shared
SIZE = 2 * PAGE
PRIV = 20 * PAGE                # a private page
MEMORY_PAGES = 96
TDREPORT = bytes((i * 7 + 3) & 0xFF for i in range(abi.TDX_REPORT_LEN))
SEC = 1_000_000_000

GQ = abi.TDVMCALL_GET_QUOTE
OK = abi.TDVMCALL_STATUS_SUCCESS
INVALID = abi.TDVMCALL_STATUS_INVALID_OPERAND
ALIGN = abi.TDVMCALL_STATUS_ALIGN_ERROR
RETRY = abi.TDVMCALL_STATUS_RETRY
UNSUPPORTED = abi.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED


def test_quote(payload=TDREPORT):
    return b"tdxmodel-testq-1" + hashlib.sha384(payload).digest() + payload


test_quote.__test__ = False


@pytest.fixture
def make_host(backend, make_module):
    """make_host(**host_kwargs) -> (module, host) with the 8 KiB buffer at BUF shared and filled."""
    made = []

    def factory(memory_pages=MEMORY_PAGES, **kwargs):
        m = make_module(memory_pages=memory_pages)
        m.set_page_state(16 * PAGE, 64, "shared")
        m.set_page_state(PRIV, 1, "private")
        kwargs.setdefault("producer", backend.TestQuoteProducer())
        h = backend.Host(m, **kwargs)
        made.append(h)
        write_request(m)
        return m, h

    yield factory
    for h in made:
        try:
            c = h.counters()
        except RuntimeError:  # the test closed it
            continue
        assert c["in_flight"] >= 0 and c["completed"] <= c["accepted"], c
        h.close()


def write_request(m, gpa=BUF, version=1, in_len=abi.TDX_REPORT_LEN, payload=TDREPORT, size=SIZE):
    m.write_memory(gpa, bytes(size))
    m.write_memory(gpa, struct.pack("<QQII", version, 0, in_len, 0) + payload)


def header(m, gpa=BUF):
    version, status, in_len, out_len = struct.unpack("<QQII", m.read_memory(gpa, 24))
    return {"version": version, "status": status, "in_len": in_len, "out_len": out_len}


def get_quote(m, gpa=BUF, size=SIZE):
    return m.tdvmcall(GQ, gpa | SHARED, size)[0]


# ------------------------------------------------------------------------------------------------
# Requests that fail before anything is written: KVM, then H1-H4 (status, buffer untouched)
# ------------------------------------------------------------------------------------------------
def _rows():
    return [
        ("KVM: a private GPA (shared bit clear)", lambda m: m.tdvmcall(GQ, BUF, SIZE)[0], INVALID),
        ("H1: size 0", lambda m: get_quote(m, size=0), INVALID),
        ("H2: GPA not 4 KiB-aligned", lambda m: get_quote(m, gpa=BUF + 64), ALIGN),
        ("H2: size not 4 KiB-aligned", lambda m: get_quote(m, size=SIZE - 1), ALIGN),
        ("H2 before H1's later checks: misaligned size over a private page",
         lambda m: m.tdvmcall(GQ, PRIV | SHARED, 100)[0], ALIGN),
        ("H3: header page not shared", lambda m: get_quote(m, gpa=PRIV), INVALID),
        ("H3: header beyond guest memory", lambda m: get_quote(m, gpa=MEMORY_PAGES * PAGE), INVALID),
        ("H4: size above 128 KiB", lambda m: get_quote(m, size=abi.HOST_GET_QUOTE_MAX_BUF_LEN + PAGE), INVALID),
    ]


@pytest.mark.parametrize("name,call,expected", _rows(), ids=[r[0] for r in _rows()])
def test_get_quote_early_checks(make_host, name, call, expected):
    m, h = make_host()
    before = m.read_memory(BUF, SIZE)
    assert call(m) == expected
    assert m.read_memory(BUF, SIZE) == before
    assert h.counters()["accepted"] == 0 and h.counters()["in_flight"] == 0


@pytest.mark.parametrize("version", [0, 2, 1 << 32])
def test_h3_header_version_must_be_1(make_host, version):
    m, h = make_host()
    write_request(m, version=version)
    before = m.read_memory(BUF, SIZE)
    assert get_quote(m) == INVALID
    assert m.read_memory(BUF, SIZE) == before


def test_h4_in_len_bounded_by_size_minus_24(make_host):
    m, h = make_host()
    write_request(m, in_len=SIZE - 24 + 1, payload=b"")
    assert get_quote(m) == INVALID
    write_request(m, in_len=SIZE - 24, payload=b"")
    assert get_quote(m) == OK
    assert header(m)["status"] == abi.GET_QUOTE_IN_FLIGHT


def test_h4_128k_buffer_is_accepted(make_host):
    m, h = make_host()
    size = abi.HOST_GET_QUOTE_MAX_BUF_LEN
    write_request(m, size=size)
    assert get_quote(m, size=size) == OK


# ------------------------------------------------------------------------------------------------
# H5-H9
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["no producer", "fault"])
def test_h5_no_quote_service(make_host, how):
    m, h = make_host(producer=None) if how == "no producer" else make_host()
    if how == "fault":
        h.push_fault("service_unavailable")
    assert get_quote(m) == OK
    assert header(m) == {"version": 1, "status": abi.GET_QUOTE_SERVICE_UNAVAILABLE,
                         "in_len": abi.TDX_REPORT_LEN, "out_len": 0}
    assert m.read_memory(BUF + 24, abi.TDX_REPORT_LEN) == TDREPORT
    assert h.counters()["accepted"] == 0


def test_h6_sixteen_in_flight_give_retry(make_host):
    m, h = make_host()
    for i in range(abi.HOST_MAX_GET_QUOTE_REQUESTS):
        h.push_fault("never")
        write_request(m, gpa=(24 + 2 * i) * PAGE)
        assert get_quote(m, gpa=(24 + 2 * i) * PAGE) == OK
    gpa = 60 * PAGE
    write_request(m, gpa=gpa)
    assert get_quote(m, gpa=gpa) == RETRY
    assert header(m, gpa)["status"] == 0  # untouched
    assert h.counters()["in_flight"] == 16 and h.counters()["retries"] == 1


def test_h6_retry_fault(make_host):
    m, h = make_host()
    h.push_fault("retry")
    assert get_quote(m) == RETRY
    assert header(m)["status"] == 0
    assert get_quote(m) == OK  # the fault was for one request


def test_h7_unreadable_payload_leaks_a_slot(make_host):
    m, h = make_host()
    gpa = PRIV - PAGE  # header page shared, the payload runs into the private page
    m.write_memory(gpa, struct.pack("<QQII", 1, 0, 2 * PAGE - 24, 0))
    assert get_quote(m, gpa=gpa, size=2 * PAGE) == INVALID
    c = h.counters()
    assert c["in_flight"] == 1 and c["leaked_slots"] == 1 and c["accepted"] == 0
    assert header(m, gpa)["status"] == 0
    # 16 such failures: a permanent RETRY (quote.md §4.1 "Bugs")
    for _ in range(15):
        assert get_quote(m, gpa=gpa, size=2 * PAGE) == INVALID
    assert get_quote(m) == RETRY
    h.clock.advance_ns(3600 * SEC)
    assert get_quote(m) == RETRY


def test_h8_in_flight_is_written_before_the_call_returns(make_host):
    m, h = make_host()
    assert get_quote(m) == OK
    assert header(m) == {"version": 1, "status": abi.GET_QUOTE_IN_FLIGHT,
                         "in_len": abi.TDX_REPORT_LEN, "out_len": 0}
    assert h.counters()["in_flight"] == 1


def test_no_in_flight_fault_leaves_status_zero(make_host):
    m, h = make_host()
    h.push_fault("no_in_flight")
    assert get_quote(m) == OK
    assert header(m)["status"] == abi.GET_QUOTE_SUCCESS and header(m)["out_len"] == 0
    h.clock.advance_ns(SEC)
    assert header(m)["out_len"] == len(test_quote())  # the host completes later all the same


# ------------------------------------------------------------------------------------------------
# Completion: data at 24, then the header; the 30 s timer; the size - 52 bound
# ------------------------------------------------------------------------------------------------
def test_completion_writes_the_quote_then_the_header(make_host):
    m, h = make_host()
    assert get_quote(m) == OK
    h.clock.advance_ns(abi.HOST_SERVICE_TIME_US * 1000 - 1)
    assert header(m)["status"] == abi.GET_QUOTE_IN_FLIGHT
    h.clock.advance_ns(1)
    q = test_quote()
    assert header(m) == {"version": 1, "status": 0, "in_len": abi.TDX_REPORT_LEN, "out_len": len(q)}
    assert m.read_memory(BUF + 24, len(q)) == q
    c = h.counters()
    assert c["completed"] == 1 and c["in_flight"] == 0 and c["interrupts"] == 0


def test_service_time_zero_completes_before_the_call_returns(make_host):
    m, h = make_host()
    h.push_fault("service_time", seconds=0)
    assert get_quote(m) == OK
    assert header(m)["status"] == abi.GET_QUOTE_SUCCESS and header(m)["out_len"] == len(test_quote())


def test_service_time_is_honoured(make_host):
    m, h = make_host()
    h.push_fault("service_time", seconds=12.5)
    get_quote(m)
    h.clock.advance_ns(12 * SEC)
    assert header(m)["status"] == abi.GET_QUOTE_IN_FLIGHT
    h.clock.advance_ns(SEC // 2)
    assert header(m)["status"] == abi.GET_QUOTE_SUCCESS


def test_transaction_timer_gives_error_at_30_s(make_host):
    m, h = make_host()
    h.push_fault("service_time", seconds=45)
    get_quote(m)
    h.clock.advance_ns(30 * SEC - 1)
    assert header(m)["status"] == abi.GET_QUOTE_IN_FLIGHT
    h.clock.advance_ns(1)
    assert header(m) == {"version": 1, "status": abi.GET_QUOTE_ERROR, "in_len": 1024, "out_len": 0}
    assert m.read_memory(BUF + 24, 1024) == TDREPORT


def test_never_completes(make_host):
    m, h = make_host()
    h.push_fault("never")
    get_quote(m)
    h.clock.advance_ns(10_000 * SEC)
    assert header(m)["status"] == abi.GET_QUOTE_IN_FLIGHT
    assert h.counters()["in_flight"] == 1


def test_error_fault(make_host):
    m, h = make_host()
    h.push_fault("error")
    get_quote(m)
    h.clock.advance_ns(SEC)
    assert header(m)["status"] == abi.GET_QUOTE_ERROR and header(m)["out_len"] == 0
    assert m.read_memory(BUF + 24, 1024) == TDREPORT


class FixedProducer:
    def __init__(self, n):
        self.n = n
        self.calls = []

    def produce(self, payload):
        self.calls.append(payload)
        return bytes([0xA5]) * self.n


@pytest.mark.parametrize("n,status", [(SIZE - abi.HOST_QUOTE_OVERHEAD, abi.GET_QUOTE_SUCCESS),
                                      (SIZE - abi.HOST_QUOTE_OVERHEAD + 1, abi.GET_QUOTE_ERROR)])
def test_quote_bounded_by_size_minus_52(make_host, n, status):
    p = FixedProducer(n)
    m, h = make_host(producer=p)
    get_quote(m)
    h.clock.advance_ns(SEC)
    assert header(m)["status"] == status
    assert p.calls == [TDREPORT]
    if status == abi.GET_QUOTE_SUCCESS:
        assert header(m)["out_len"] == n and m.read_memory(BUF + 24, n) == bytes([0xA5]) * n


def test_a_failing_producer_gives_error(make_host):
    class Broken:
        def produce(self, payload):
            raise RuntimeError("QGS down")

    m, h = make_host(producer=Broken())
    get_quote(m)
    h.clock.advance_ns(SEC)
    assert header(m)["status"] == abi.GET_QUOTE_ERROR


def test_payload_is_captured_at_h7(make_host):
    m, h = make_host()
    get_quote(m)
    m.write_memory(BUF + 24, bytes(1024))  # the guest scribbles while the host owns the buffer
    h.clock.advance_ns(SEC)
    q = test_quote()
    assert m.read_memory(BUF + 24, len(q)) == q


@pytest.mark.parametrize("out_len,expected", [(0, SIZE), (100_000, 100_000)])
def test_oversize_out_len(make_host, out_len, expected):
    m, h = make_host()
    h.push_fault("oversize_out_len", out_len=out_len)
    get_quote(m)
    h.clock.advance_ns(SEC)
    assert header(m)["status"] == 0 and header(m)["out_len"] == expected


def test_out_len_changes_after_the_first_read(make_host):
    m, h = make_host()
    h.push_fault("out_len_changes", out_len=5000)
    get_quote(m)
    h.clock.advance_ns(SEC)
    assert header(m)["out_len"] == len(test_quote())
    h.guest_read(BUF | SHARED, 24)
    assert header(m)["out_len"] == 5000
    m.write_memory(BUF + 20, struct.pack("<I", 7))
    h.guest_read(BUF + 20, 4)
    assert header(m)["out_len"] == 7  # once only


def test_completion_to_a_page_made_private_is_dropped(make_host):
    m, h = make_host()
    get_quote(m)
    m.set_page_state(BUF, 2, "private")
    h.clock.advance_ns(SEC)
    assert header(m)["status"] == abi.GET_QUOTE_IN_FLIGHT
    assert h.counters()["completed"] == 0 and h.counters()["in_flight"] == 0


# ------------------------------------------------------------------------------------------------
# SetupEventNotifyInterrupt, GetTdVmCallInfo, dispatch
# ------------------------------------------------------------------------------------------------
SENI = abi.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT


@pytest.mark.parametrize("vector,r10", [(31, INVALID), (32, OK), (255, OK), (256, INVALID), (1 << 63, INVALID)])
def test_setup_event_notify_vector_range(make_host, vector, r10):
    m, h = make_host()
    assert m.tdvmcall(SENI, vector)[0] == r10
    assert h.notify_vector == (vector if r10 == OK else None)


def test_notify_vector_injected_on_completion(make_host):
    m, h = make_host()
    assert m.tdvmcall(SENI, 0xEC)[0] == OK
    assert m.tdvmcall(SENI, 7)[0] == INVALID  # out of range keeps the registration
    get_quote(m)
    assert h.counters()["interrupts"] == 0
    h.clock.advance_ns(SEC)
    assert h.counters()["interrupts"] == 1 and h.counters()["last_vector"] == 0xEC
    write_request(m)
    h.push_fault("no_interrupt")
    get_quote(m)
    h.clock.advance_ns(SEC)
    assert header(m)["status"] == 0 and h.counters()["completed"] == 2
    assert h.counters()["interrupts"] == 1


def test_no_vector_no_interrupt(make_host):
    m, h = make_host()
    get_quote(m)
    h.clock.advance_ns(SEC)
    assert h.counters()["interrupts"] == 0


@pytest.mark.parametrize("leaf,expected", [(0, (OK, 0)), (1, (OK, abi.TDVMCALL_INFO_SETUP_EVENT_NOTIFY)),
                                           (2, (INVALID, abi.TDVMCALL_GET_TD_VM_CALL_INFO))])
def test_get_td_vm_call_info(make_host, leaf, expected):
    m, h = make_host()
    assert m.tdvmcall(abi.TDVMCALL_GET_TD_VM_CALL_INFO, leaf) == expected


@pytest.mark.parametrize("r11", [abi.TDVMCALL_MAP_GPA, abi.TDVMCALL_REPORT_FATAL_ERROR, 0, 0x10005, 1 << 63])
def test_other_subfunctions_unsupported(make_host, r11):
    m, h = make_host()
    assert m.tdvmcall(r11)[0] == UNSUPPORTED


def test_vendor_specific_r10_unsupported(make_host):
    m, h = make_host()
    assert m.tdvmcall(GQ, BUF | SHARED, SIZE, r10=1)[0] == UNSUPPORTED
    assert header(m)["status"] == 0


def test_without_a_host_everything_is_unsupported(backend, make_module):
    m = make_module(memory_pages=32)
    assert m.tdvmcall(GQ, BUF | SHARED, SIZE)[0] == UNSUPPORTED
    assert m.tdvmcall(abi.TDVMCALL_GET_TD_VM_CALL_INFO, 0)[0] == UNSUPPORTED
    assert m.tdcall(abi.TDG_VP_VMCALL) == abi.TDX_SUCCESS


def test_one_host_per_module_and_close_detaches(backend, make_host):
    m, h = make_host()
    with pytest.raises(ValueError):
        backend.Host(m)
    h.close()
    assert m.tdvmcall(GQ, BUF | SHARED, SIZE)[0] == UNSUPPORTED
    h2 = backend.Host(m, producer=backend.TestQuoteProducer())
    assert get_quote(m) == OK
    h2.close()


def test_tdvmcall_argument_checks(make_host):
    m, h = make_host()
    with pytest.raises(ValueError):
        m.tdvmcall(-1)
    with pytest.raises(TypeError):
        m.tdvmcall("GetQuote")
    with pytest.raises(ValueError):
        m.tdvmcall(GQ, 1 << 64)


# ------------------------------------------------------------------------------------------------
# The fault menu: per request, by schedule, bad specs
# ------------------------------------------------------------------------------------------------
def test_schedule_cycles_after_pushed_faults(make_host):
    m, h = make_host()
    h.set_schedule([None, "retry"], cycle=True)
    h.push_fault("retry")
    got = []
    for _ in range(5):
        write_request(m)
        got.append(get_quote(m))
        h.clock.advance_ns(SEC)
    assert got == [RETRY, OK, RETRY, OK, RETRY]
    h.clear_faults()
    assert get_quote(m) == OK


def test_schedule_without_cycle_ends_in_qemu(make_host):
    m, h = make_host()
    h.set_schedule(["retry", {"fault": "retry"}])
    assert [get_quote(m) for _ in range(3)] == [RETRY, RETRY, OK]


@pytest.mark.parametrize("spec,params,exc", [
    ("bogus", {}, ValueError), ("service_time", {}, ValueError),
    ("service_time", {"seconds": -1}, ValueError), ("service_time", {"seconds": float("nan")}, ValueError),
    ("error", {"colour": 1}, ValueError), ("oversize_out_len", {"out_len": 1 << 32}, ValueError),
    ("oversize_out_len", {"out_len": "big"}, TypeError), (3, {}, ValueError),
])
def test_bad_fault_specs(make_host, spec, params, exc):
    m, h = make_host()
    with pytest.raises(exc):
        h.push_fault(spec, **params)
    with pytest.raises(exc):
        h.set_schedule([dict(fault=spec, **params)])


def test_fault_names_are_the_contract():
    assert abi.HOST_FAULTS == ("service_time", "never", "error", "service_unavailable", "retry",
                               "oversize_out_len", "out_len_changes", "no_in_flight", "no_interrupt")


# ------------------------------------------------------------------------------------------------
# The clock and the producers
# ------------------------------------------------------------------------------------------------
def test_virtual_clock_moves_only_when_told(backend):
    c = backend.Clock()
    assert c.kind == "virtual" and c.now_ns() == 0
    c.sleep_ns(30 * SEC)
    assert c.now_ns() == 30 * SEC
    c.advance_ns(5)
    assert c.now_ns() == 30 * SEC + 5


def test_virtual_clock_stops_at_the_end_of_time(backend):
    """Past 2**64-2 ns a sleep or advance saturates (never wraps to the past, never leaves u64)."""
    end = (1 << 64) - 2
    c = backend.Clock()
    c.advance_ns(1 << 63)
    c.advance_ns(1 << 63)
    assert c.now_ns() == end
    c.sleep_ns((1 << 64) - 1)
    c.advance_ns(5)
    assert c.now_ns() == end


def test_a_request_due_past_the_end_of_time_completes_there(make_host):
    m, h = make_host()
    h.clock.advance_ns((1 << 64) - 3)  # the 1 s service time would end past 2**64-2
    assert get_quote(m) == OK and header(m)["status"] == abi.GET_QUOTE_IN_FLIGHT
    h.clock.advance_ns(1)
    assert header(m)["status"] == 0 and h.counters()["completed"] == 1


def test_real_clock(backend):
    c = backend.Clock("real")
    t0 = c.now_ns()
    c.sleep_ns(2_000_000)
    assert c.now_ns() - t0 >= 2_000_000
    with pytest.raises(ValueError):
        c.advance_ns(1)
    with pytest.raises(ValueError):
        backend.Clock("sundial")


def test_a_spinning_real_clock_ends_its_sleeps_awake(backend):
    """spin_us: the sleep's last part is spent on a CPU (its thread's CPU time shows it), so it ends on
    time where an idle vCPU would wake late; without it the thread sleeps and uses next to no CPU."""
    spinning, plain = backend.Clock("real", spin_us=20_000), backend.Clock("real")
    assert (spinning.spin_us, plain.spin_us) == (20_000, 0)
    for clock, busy in ((spinning, True), (plain, False)):
        t0, cpu0 = clock.now_ns(), time.thread_time_ns()
        clock.sleep_ns(25_000_000)
        waited, cpu = clock.now_ns() - t0, time.thread_time_ns() - cpu0
        assert waited >= 25_000_000
        assert (cpu >= 5_000_000) if busy else (cpu < 5_000_000), (clock, cpu)
    t0 = spinning.now_ns()
    spinning.sleep_ns(1_000_000)  # shorter than the spin: all of it spins, still at least that long
    assert spinning.now_ns() - t0 >= 1_000_000


@pytest.mark.parametrize("kind, spin_us, exc", [
    ("virtual", 1, ValueError),           # a virtual sleep takes no time to spin through
    ("real", -1, ValueError), ("real", float("nan"), ValueError), ("real", 1_000_001, ValueError),
    ("real", "2", TypeError), ("real", True, TypeError), ("real", None, TypeError),
])
def test_clock_spin_is_checked(backend, kind, spin_us, exc):
    with pytest.raises(exc):
        backend.Clock(kind, spin_us=spin_us)
    assert backend.Clock("real", spin_us=1_000_000).spin_us == 1_000_000
    assert backend.Clock("real", spin_us=2.5).spin_us == 2.5
    assert backend.Clock("virtual", spin_us=0).spin_us == 0


def test_host_on_a_shared_real_clock_completes_after_a_real_sleep(backend, make_module):
    m = make_module(memory_pages=MEMORY_PAGES)
    m.set_page_state(16 * PAGE, 2, "shared")
    clock = backend.Clock("real")
    h = backend.Host(m, clock=clock, producer=backend.TestQuoteProducer())
    try:
        assert h.clock is clock
        write_request(m)
        assert get_quote(m) == OK
        clock.sleep_ns(abi.HOST_SERVICE_TIME_US * 1000 + 1_000_000)
        assert header(m)["status"] == abi.GET_QUOTE_SUCCESS
    finally:
        h.close()


def test_test_producer_bytes(backend):
    p = backend.TestQuoteProducer()
    assert p.produce(TDREPORT) == test_quote()
    with pytest.raises(TypeError):
        p.produce("text")


def test_python_producer_on_any_backend_sees_the_payload(make_host):
    p = FixedProducer(1500)
    m, h = make_host(producer=p)
    get_quote(m)
    h.clock.advance_ns(SEC)
    assert p.calls == [TDREPORT] and header(m)["out_len"] == 1500
    h.producer = None
    write_request(m)
    assert get_quote(m) == OK and header(m)["status"] == abi.GET_QUOTE_SERVICE_UNAVAILABLE


def test_the_default_host_has_no_quote_service(backend, make_module):
    # QEMU without quote-generation-socket (quote.md §4.1 H5); the test producer is never the default
    m = make_module(memory_pages=MEMORY_PAGES)
    m.set_page_state(16 * PAGE, 2, "shared")
    h = backend.Host(m)
    try:
        assert h.producer is None
        write_request(m)
        assert get_quote(m) == OK and header(m)["status"] == abi.GET_QUOTE_SERVICE_UNAVAILABLE
    finally:
        h.close()


def test_bad_host_arguments(backend, make_module):
    m = make_module(memory_pages=32)
    with pytest.raises(TypeError):
        backend.Host("module")
    with pytest.raises(TypeError):
        backend.Host(m, producer=object())
    with pytest.raises(TypeError):
        backend.Host(m, clock=3)
