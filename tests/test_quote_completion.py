"""The quote provider's completion modes (a kernel option, profiles.QuoteCompletion) on both backends
and every configfs-tsm generation: the stock loop, the proposed read_poll_timeout() variant with its
interval and cap (quote.md §2.5), completion by the SetupEventNotifyInterrupt vector (quote.md §2.6,
§3.3), and the jiffy model of msleep (kernel/time/timer.c), all on the virtual clock.
"""

from __future__ import annotations

import threading
import time

import pytest

from tdxmodel import abi, profiles
from tests.test_configfs_tsm import INBLOB, ITEM, PAGE, QUOTE_GENERATIONS, UBUF, UPAGES, quote_for, read_file, \
    test_quote, write_file

MS = 1_000_000
SERVICE_NS = abi.HOST_SERVICE_TIME_US * 1000


@pytest.fixture
def td(backend, make_module):
    """td(driver, completion=None, host=True, host_first=True) -> (kernel, process, host)."""
    made = []

    def factory(driver="v6.16", completion=None, host=True, host_first=True):
        m = make_module(memory_pages=160)
        h = None
        if host and host_first:
            h = backend.Host(m, producer=backend.TestQuoteProducer())
        k = backend.Kernel(m, driver, quote_completion=completion)
        if host and not host_first:
            h = backend.Host(m, producer=backend.TestQuoteProducer())
        p = k.process()
        p.mmap(UBUF, UPAGES * PAGE, "rw")
        made.append((k, h))
        return k, p, h

    yield factory
    for k, h in made:
        c = k.counters()
        assert c["locks_held"] == 0 and c["locks_taken"] == c["locks_released"], c
        if h is not None:
            h.close()


def timed_quote(k, p, h):
    t0 = h.clock.now_ns()
    ret, data = quote_for(k, p)
    return ret, data, h.clock.now_ns() - t0


# ------------------------------------------------------------------------------------------------
# The option
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_every_generation_defaults_to_the_stock_loop_and_takes_each_mode(td, driver):
    k, p, h = td(driver)
    assert k.quote_completion == profiles.get(driver).quote.completion == profiles.STOCK_COMPLETION
    for spec, label in (("poll", "poll-5"), ({"mode": "poll", "interval_ms": 1}, "poll-1"),
                        ("interrupt", "interrupt"), ("stock", "poll-1000")):
        k2, p2, h2 = td(driver, spec)
        assert k2.quote_completion == profiles.quote_completion(spec)
        assert k2.quote_completion.label == label
        ret, data = quote_for(k2, p2)
        assert data == test_quote(k2.module.report(INBLOB))


def test_poll_defaults_are_the_maintainers_5_ms_and_2_s():
    c = profiles.quote_completion("poll")
    assert (c.mode, c.interval_ms, c.cap_ms, c.sleep, c.hz) == ("poll", 5, 2000, "msleep", 0)


@pytest.mark.parametrize("spec,exc", [
    ("fast", ValueError), ({"mode": "poll", "interval_ms": 0}, ValueError),
    ({"mode": "poll", "interval_ms": 1.5}, TypeError), ({"mode": "poll", "cap_ms": -1}, ValueError),
    ({"mode": "stock", "interval_ms": 5}, ValueError), ({"mode": "interrupt", "cap_ms": 5}, ValueError),
    ({"mode": "poll", "sleep": "spin"}, ValueError), ({"hz": 1024}, ValueError), ({"hz": True}, ValueError),
    ({"mode": "poll", "bogus": 1}, ValueError), (5, TypeError),
])
def test_bad_completion_specs_are_refused(backend, make_module, spec, exc):
    with pytest.raises(exc):
        backend.Kernel(make_module(memory_pages=160), "v6.16", quote_completion=spec)


def test_a_generation_without_configfs_tsm_takes_no_completion(backend, make_module):
    with pytest.raises(ValueError, match="no configfs-tsm"):
        backend.Kernel(make_module(memory_pages=160), "v6.2", quote_completion="poll")


# ------------------------------------------------------------------------------------------------
# msleep on the jiffy model (HZ): schedule_timeout(msecs_to_jiffies(m) + 1) on the timer wheel
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ms,hz,now_ms,want_ms", [
    (1, 1000, 0, 3), (5, 1000, 0, 7), (5, 1000, 0.5, 6.5), (1000, 1000, 0, 1024),  # level 2: 64 ms steps
    (1000, 1000, 24, 1064), (1000, 1000, 25, 1063), (5, 250, 0, 16), (1000, 250, 0, 1024), (5, 0, 0.3, 5),
])
def test_msleep_jiffy_model(ms, hz, now_ms, want_ms):
    assert profiles.msleep_ns(ms, hz, int(now_ms * MS)) == int(want_ms * MS)


@pytest.mark.parametrize("spec,want_ms", [
    ({"hz": 1000}, 1024),                                   # stock: msleep_interruptible(1000)
    ({"mode": "poll", "interval_ms": 5, "hz": 1000}, 7),    # one msleep(5): 6-7 ms
    ({"mode": "poll", "interval_ms": 1, "hz": 1000}, 6),    # two msleep(1) of 3 ms: ready at 4.7
    ({"mode": "poll", "interval_ms": 5, "sleep": "usleep_range", "hz": 1000}, 5),  # hrtimer: no ticks
])
def test_the_kernel_sleeps_on_the_jiffy_model(td, spec, want_ms):
    k, p, h = td("v6.16", spec)
    ret, data, dt = timed_quote(k, p, h)
    assert data == test_quote(k.module.report(INBLOB))
    assert dt == want_ms * MS


# ------------------------------------------------------------------------------------------------
# The read_poll_timeout() variant: interval and cap
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_poll_5ms_completes_at_the_first_poll_after_the_service_time(td, driver):
    k, p, h = td(driver, "poll")
    ret, data, dt = timed_quote(k, p, h)
    assert data == test_quote(k.module.report(INBLOB))
    assert dt == 5 * MS   # 4.676 ms of service, polls every 5 ms
    ret, data, dt = timed_quote(k, p, h)
    assert ret > 0 and dt == 5 * MS


# (service ms, virtual ms at the end, outcome): polls at 0, 5, ..., the cap passes at 2000; the
# check at 2005 is the one read_poll_timeout() makes after the timeout.
CAP_ROWS = [
    ("ready at the cap's last in-time check", 2000, 2000, "ok"),
    ("ready between the cap and the check after it", 2004.9, 2005, "ok"),
    ("ready just after the check past the cap", 2005.1, 2005, -abi.ETIMEDOUT),
    ("never", None, 2005, -abi.ETIMEDOUT),
]


@pytest.mark.parametrize("name,service,end_ms,want", CAP_ROWS, ids=[r[0] for r in CAP_ROWS])
@pytest.mark.parametrize("driver", ["v6.7", "v7.1"])
def test_poll_cap_boundaries(td, driver, name, service, end_ms, want):
    k, p, h = td(driver, {"mode": "poll", "interval_ms": 5, "cap_ms": 2000})
    h.push_fault("never") if service is None else h.push_fault("service_time", seconds=service / 1000)
    ret, data, dt = timed_quote(k, p, h)
    assert dt == end_ms * MS
    if want == "ok":
        assert data == test_quote(k.module.report(INBLOB))
        return
    assert ret == want
    # the VMM still owns the buffer: the next request meets IN_FLIGHT (P2)
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EBUSY


def test_poll_cap_other_interval_and_cap(td):
    k, p, h = td("v7.0", {"mode": "poll", "interval_ms": 7, "cap_ms": 20})
    h.push_fault("never")
    ret, _, dt = timed_quote(k, p, h)   # checks at 0, 7, 14, 21 (> 20: the last)
    assert (ret, dt) == (-abi.ETIMEDOUT, 21 * MS)


def test_poll_wait_ignores_signals_the_stock_loop_does_not(td):
    k, p, h = td("v6.16", "poll")
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    p.signal_pending = True   # read_poll_timeout sleeps uninterruptibly
    ret, data = read_file(p, ITEM + "/outblob")
    assert data == test_quote(k.module.report(INBLOB))
    k, p, h = td("v6.16")
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    p.signal_pending = True
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EINTR


def test_stock_loop_off_by_one_is_kept_under_the_jiffy_model(td):
    # 30 polls of 1024 ms at HZ=1000 from t=0 (each wakes on a 64 ms boundary): ready during the
    # 30th sleep still gives -ETIMEDOUT (quote.md §2.4)
    k, p, h = td("v6.11", {"hz": 1000})
    h.push_fault("service_time", seconds=29.9)
    ret, _, dt = timed_quote(k, p, h)
    assert ret == -abi.ETIMEDOUT and dt == 30 * 1024 * MS


# ------------------------------------------------------------------------------------------------
# Completion by the notify interrupt
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_interrupt_registers_the_vector_at_init_and_completes_at_the_service_time(td, driver):
    k, p, h = td(driver, "interrupt")
    assert k.notify_registered and h.notify_vector == abi.QUOTE_NOTIFY_VECTOR
    assert h.counters()["vmcalls"] == 1   # SetupEventNotifyInterrupt, at init
    ret, data, dt = timed_quote(k, p, h)
    assert data == test_quote(k.module.report(INBLOB))
    assert dt == SERVICE_NS
    assert h.counters()["interrupts"] == k.notify_irqs == 1
    h.push_fault("service_time", seconds=0.0123)
    assert timed_quote(k, p, h)[2] == 12_300_000


def test_polling_modes_register_no_vector(td):
    for spec in (None, "poll"):
        k, p, h = td("v6.16", spec)
        assert quote_for(k, p)[0] > 0
        assert h.notify_vector is None and not k.notify_registered
        assert h.counters()["interrupts"] == 0


def test_interrupt_kernel_made_before_its_host_registers_before_the_first_getquote(td):
    k, p, h = td("v7.1", "interrupt", host_first=False)
    assert not k.notify_registered and h.notify_vector is None
    ret, data, dt = timed_quote(k, p, h)
    assert data == test_quote(k.module.report(INBLOB)) and dt == SERVICE_NS
    assert k.notify_registered and h.notify_vector == abi.QUOTE_NOTIFY_VECTOR


def test_interrupt_with_no_host_is_eio(td):
    k, p, h = td("v6.16", "interrupt", host=False)
    assert not k.notify_registered
    assert quote_for(k, p)[0] == -abi.EIO


def _read_in_thread(p):
    out = {}

    def run():
        out["ret"] = read_file(p, ITEM + "/outblob")

    t = threading.Thread(target=run)
    t.start()
    return t, out


def _wait_for(cond, what):
    deadline = time.monotonic() + 20
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


@pytest.mark.parametrize("driver", ["v6.7", "v7.1"])
def test_interrupt_no_interrupt_fault_waits_until_a_signal(td, driver):
    k, p, h = td(driver, "interrupt")
    h.push_fault("no_interrupt")
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    t, out = _read_in_thread(p)
    _wait_for(lambda: h.counters()["completed"] == 1, "the host completes the quote")
    time.sleep(0.05)
    assert t.is_alive()            # the quote is done, but nothing wakes the waiter (no timeout)
    assert h.counters()["interrupts"] == 0
    p.signal_pending = True
    t.join(20)
    assert not t.is_alive() and out["ret"][0] == -abi.EINTR
    p.signal_pending = False
    # the buffer is no longer IN_FLIGHT: the next request goes through
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert read_file(p, ITEM + "/outblob")[1] == test_quote(k.module.report(INBLOB))


def test_interrupt_signal_while_in_flight_leaves_the_buffer_to_the_host(td):
    k, p, h = td("v6.16", "interrupt")
    h.push_fault("never")
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    t, out = _read_in_thread(p)
    time.sleep(0.05)
    assert t.is_alive()
    p.signal_pending = True
    t.join(20)
    assert out["ret"][0] == -abi.EINTR
    p.signal_pending = False
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EBUSY


def test_interrupt_an_error_status_still_interrupts(td):
    k, p, h = td("v7.1", "interrupt")
    h.push_fault("error")
    ret, _, dt = timed_quote(k, p, h)
    assert ret == -abi.EIO and dt == SERVICE_NS   # 7.1: status != SUCCESS (P8)
    assert h.counters()["interrupts"] == 1


@pytest.mark.parametrize("spec,want_ns", [(None, 1000 * MS), ("poll", 5 * MS), ("interrupt", SERVICE_NS)])
def test_tdxguest_takes_the_option(backend, spec, want_ns):
    from tdxmodel.client import TdxGuest
    with TdxGuest("v7.1", backend.BACKEND_NAME, quote_completion=spec) as td:
        h = td.attach_host(backend.TestQuoteProducer())
        assert td.kernel.quote_completion == profiles.quote_completion(spec)
        assert td.get_quote(b"x") == test_quote(td.module.report(b"x"))
        assert h.clock.now_ns() == want_ns
        with pytest.raises(ValueError, match="quote_completion"):
            TdxGuest(kernel=td.kernel, quote_completion="poll")
