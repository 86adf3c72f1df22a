"""Fault injection in the kernel's vocabulary (ref §7), observed through the v6.2 and v4 ioctl paths:
the knobs and their defaults, the capability filters, should_fail's check order, fail-nth and the
trace of injectable points (docs/CONTRACT.md "FaultAttr", "Process").
"""

import os

import pytest

from tdxmodel import _backend, abi
from tdxmodel.config import ModuleConfig

PAGE = abi.TDX_PAGE_SIZE
REQ = 0x20000
GET = abi.TDX_CMD_GET_REPORT0
V62_POINTS = ["reportdata:kmalloc", "tdreport:kzalloc", "reportdata:copy_from_user", "tdreport:copy_to_user"]


def setup(make_kernel, driver="v6.2", **kw):
    k = make_kernel(driver, **kw)
    p = k.process()
    p.mmap(REQ, 2 * PAGE, "rw")
    p.poke(REQ, bytes(range(64)))
    fd = p.open(k.device_path)
    return k, p, fd


def call(k, p, fd, cmd=GET):
    ret = p.ioctl(fd, cmd, REQ)
    c = k.counters()
    assert c["outstanding"] == c["resident"] and c["locks_held"] == 0, c
    return ret


def failed_points(p):
    return [point for point, _, failed in p.last_trace() if failed]


# ------------------------------------------------------------------------------------------ knobs
@pytest.mark.parametrize("cap, ignore_gfp_wait, min_order", [
    ("failslab", True, 0), ("fail_page_alloc", True, 1), ("fail_usercopy", False, 0)])
def test_defaults_are_the_kernels(make_kernel, cap, ignore_gfp_wait, min_order):
    attr = make_kernel("v6.2").fault(cap)
    assert (attr.probability, attr.interval, attr.times, attr.space, attr.verbose) == (0, 1, 1, 0, 2)
    assert attr.ignore_gfp_wait is ignore_gfp_wait and attr.min_order == min_order
    assert attr.task_filter is False


def test_fault_returns_the_same_live_object(make_kernel):
    k = make_kernel("v6.2")
    k.fault("failslab").probability = 30
    assert k.fault("failslab") is k.fault("failslab") and k.fault("failslab").probability == 30
    with pytest.raises(ValueError):
        k.fault("fail_function")


@pytest.mark.parametrize("cap, name, value, exc", [
    ("failslab", "probability", 101, ValueError), ("failslab", "probability", -1, ValueError),
    ("failslab", "interval", 0, ValueError), ("failslab", "times", -2, ValueError),
    ("failslab", "space", -1, ValueError), ("failslab", "verbose", 3, ValueError),
    ("failslab", "probability", "50", TypeError), ("failslab", "task_filter", 1, TypeError),
    ("fail_page_alloc", "min_order", -1, ValueError),
    ("failslab", "min_order", 0, ValueError),            # only fail_page_alloc has min-order
    ("fail_usercopy", "ignore_gfp_wait", False, ValueError),  # usercopy has no gfp flags
])
def test_bad_knob_values_are_rejected(make_kernel, cap, name, value, exc):
    attr = make_kernel("v6.2").fault(cap)
    before = getattr(attr, name)
    with pytest.raises(exc):
        setattr(attr, name, value)
    assert getattr(attr, name) == before


# ------------------------------------------------------------------------------------------ filters
def test_ignore_gfp_wait_protects_gfp_kernel_allocations(make_kernel):
    k, p, fd = setup(make_kernel)
    slab = k.fault("failslab")
    slab.probability, slab.times = 100, -1
    assert call(k, p, fd) == 0  # ignore-gfp-wait Y: never failed (ref §7)
    slab.ignore_gfp_wait = False
    assert call(k, p, fd) == -abi.ENOMEM
    assert failed_points(p) == ["reportdata:kmalloc"]


def test_min_order_protects_order_0_pages(make_kernel):
    k, p, fd = setup(make_kernel, "v4-2022-04")
    page = k.fault("fail_page_alloc")
    page.probability, page.times, page.ignore_gfp_wait = 100, -1, False
    assert call(k, p, fd, abi.TDX_CMD_GET_TDREPORT) == 0  # min-order 1: order 0 never failed
    page.min_order = 0
    assert call(k, p, fd, abi.TDX_CMD_GET_TDREPORT) == -abi.ENOMEM
    assert failed_points(p) == ["tdreport:get_zeroed_page"]


def test_filters_hide_points_from_fail_nth(make_kernel):
    """With the defaults the two allocations are filtered before should_fail, so fail-nth 1 lands on
    the first user copy; the trace still lists every point passed."""
    k, p, fd = setup(make_kernel)
    p.fail_nth = 1
    assert call(k, p, fd) == -abi.EFAULT
    assert p.last_trace() == [("reportdata:kmalloc", "failslab", False),
                              ("tdreport:kzalloc", "failslab", False),
                              ("reportdata:copy_from_user", "fail_usercopy", True)]
    assert p.fail_nth == 0


def test_min_order_hides_the_v4_page_from_fail_nth(make_kernel):
    k, p, fd = setup(make_kernel, "v4-2022-04")
    for cap in ("failslab", "fail_page_alloc"):
        k.fault(cap).ignore_gfp_wait = False
    p.fail_nth = 2
    assert call(k, p, fd, abi.TDX_CMD_GET_TDREPORT) == -abi.EFAULT
    assert failed_points(p) == ["reportdata:copy_from_user"]
    k.fault("fail_page_alloc").min_order = 0
    p.fail_nth = 2
    assert call(k, p, fd, abi.TDX_CMD_GET_TDREPORT) == -abi.ENOMEM
    assert failed_points(p) == ["tdreport:get_zeroed_page"]


# ------------------------------------------------------------------------------------------ fail-nth
@pytest.mark.parametrize("n, ret", [(1, -abi.ENOMEM), (2, -abi.ENOMEM), (3, -abi.EFAULT), (4, -abi.EFAULT)])
def test_fail_nth_sweep_fails_exactly_the_nth_point(make_kernel, n, ret):
    k, p, fd = setup(make_kernel)
    k.fault("failslab").ignore_gfp_wait = False
    before = p.peek(REQ, 2 * PAGE)
    p.fail_nth = n
    assert call(k, p, fd) == ret
    assert p.last_trace() == [(pt, cap, i + 1 == n) for i, (pt, cap) in
                              enumerate(zip(V62_POINTS, ["failslab", "failslab", "fail_usercopy",
                                                         "fail_usercopy"]))][:n]
    assert p.fail_nth == 0  # read back: 0 once fired
    if n < 4:  # nothing reached the user before the copy-out
        assert p.peek(REQ, 2 * PAGE) == before


def test_fail_nth_stays_pending_when_the_call_has_fewer_points(make_kernel):
    k, p, fd = setup(make_kernel)
    k.fault("failslab").ignore_gfp_wait = False
    p.fail_nth = 10
    assert call(k, p, fd) == 0
    assert p.fail_nth == 6  # four points counted; still pending
    assert call(k, p, fd) == 0
    assert p.fail_nth == 2
    assert call(k, p, fd) == -abi.ENOMEM  # the 10th point overall is the next call's 2nd
    assert failed_points(p) == ["tdreport:kzalloc"]


def test_fail_nth_bypasses_probability_and_times_and_consumes_times(make_kernel):
    k, p, fd = setup(make_kernel)
    usercopy = k.fault("fail_usercopy")
    assert usercopy.probability == 0 and usercopy.times == 1
    p.fail_nth = 1
    assert call(k, p, fd) == -abi.EFAULT
    assert usercopy.times == 0  # every failure decrements times, fail-nth ones too (ref §7)


def test_bad_fail_nth_is_rejected(make_kernel):
    p = make_kernel("v6.2").process()
    with pytest.raises(ValueError):
        p.fail_nth = -1
    with pytest.raises(TypeError):
        p.fail_nth = 1.5


# ------------------------------------------------------------------------------------------ should_fail
def test_times_limits_failures(make_kernel):
    k, p, fd = setup(make_kernel)
    uc = k.fault("fail_usercopy")
    uc.probability, uc.times = 100, 2
    assert [call(k, p, fd) for _ in range(3)] == [-abi.EFAULT, -abi.EFAULT, 0]
    assert uc.times == 0
    uc.times = -1
    assert [call(k, p, fd) for _ in range(3)] == [-abi.EFAULT] * 3
    assert uc.times == -1


def test_interval_fails_every_nth_eligible_call(make_kernel):
    k, p, fd = setup(make_kernel)
    slab = k.fault("failslab")
    slab.probability, slab.times, slab.ignore_gfp_wait, slab.interval = 100, -1, False, 2
    for _ in range(2):  # kmalloc is the 1st/3rd eligible call, kzalloc the 2nd/4th
        assert call(k, p, fd) == -abi.ENOMEM
        assert failed_points(p) == ["tdreport:kzalloc"]


def test_space_budget_is_consumed_before_failures(make_kernel):
    k, p, fd = setup(make_kernel)
    slab = k.fault("failslab")
    slab.probability, slab.times, slab.ignore_gfp_wait, slab.space = 100, -1, False, 100
    assert call(k, p, fd) == -abi.ENOMEM  # kmalloc(64) eats 64 of the 100 bytes; kzalloc(1024) fails
    assert failed_points(p) == ["tdreport:kzalloc"]
    assert slab.space == 36


def test_task_filter_fails_only_make_it_fail_tasks(make_kernel):
    k, p, fd = setup(make_kernel)
    uc = k.fault("fail_usercopy")
    uc.probability, uc.times, uc.task_filter = 100, -1, True
    assert call(k, p, fd) == 0
    p.make_it_fail = True
    assert call(k, p, fd) == -abi.EFAULT


def test_probability_zero_never_fails(make_kernel):
    k, p, fd = setup(make_kernel)
    for cap in ("failslab", "fail_usercopy"):
        k.fault(cap).times = -1
    k.fault("failslab").ignore_gfp_wait = False
    assert all(call(k, p, fd) == 0 for _ in range(5))


def _draw_pattern(backend, seed, calls=40):
    m = backend.Module(ModuleConfig(seed=1), memory_pages=24)
    k = backend.Kernel(m, "v6.2", seed=seed)
    p = k.process()
    p.mmap(REQ, 2 * PAGE, "rw")
    fd = p.open(k.device_path)
    uc = k.fault("fail_usercopy")
    uc.probability, uc.times = 50, -1
    out = []
    for _ in range(calls):
        out.append(p.ioctl(fd, GET, REQ))
    c = k.counters()
    assert c["outstanding"] == c["resident"]
    return out


def test_random_draws_are_seeded(backend):
    a, b = _draw_pattern(backend, 7), _draw_pattern(backend, 7)
    assert a == b
    assert set(a) == {0, -abi.EFAULT}  # probability 50 both fails and passes
    assert _draw_pattern(backend, 8) != a


def test_random_draws_agree_across_backends():
    names = os.environ.get("TDXMODEL_TEST_BACKENDS")
    names = names.split(",") if names else list(_backend.BACKENDS)
    patterns = {n: _draw_pattern(_backend.load(n), 1234) for n in names}
    assert len({tuple(v) for v in patterns.values()}) == 1, patterns


# ------------------------------------------------------------------------------------------ user copies
def test_injected_usercopy_fault_copies_nothing(make_kernel):
    k, p, fd = setup(make_kernel)
    before = p.peek(REQ, 2 * PAGE)
    p.fail_nth = 2  # the copy-out (allocations are filtered by default)
    assert call(k, p, fd) == -abi.EFAULT
    assert failed_points(p) == ["tdreport:copy_to_user"]
    assert p.peek(REQ, 2 * PAGE) == before


def test_partial_to_user_leaves_an_exact_prefix(make_kernel):
    k, p, fd = setup(make_kernel)
    assert call(k, p, fd) == 0
    full = p.peek(REQ + 64, abi.TDX_REPORT_LEN)
    p.poke(REQ + 64, bytes(abi.TDX_REPORT_LEN))
    p.fault_user_copy("partial_to_user", at=333)
    assert call(k, p, fd) == -abi.EFAULT
    assert p.peek(REQ + 64, abi.TDX_REPORT_LEN) == full[:333] + bytes(abi.TDX_REPORT_LEN - 333)
    assert call(k, p, fd) == 0  # one shot


def test_bad_fault_user_copy_is_rejected(make_kernel):
    p = make_kernel("v6.2").process()
    with pytest.raises(ValueError):
        p.fault_user_copy("partial_from_user")
    with pytest.raises(ValueError):
        p.fault_user_copy("partial_to_user", at=-1)


def test_page_space_budget_counts_pages_not_bytes(make_kernel):
    """fail_page_alloc's space is consumed 1 << order at a time (mm/fail_page_alloc.c, ref §7):
    one order-0 page per v4 call. should_fail lets a call through while space > size, so space=3
    lets two calls through (3 -> 2 -> 1) and fails the third (1 is not > 1)."""
    k, p, fd = setup(make_kernel, driver="v4-2022-04")
    pages = k.fault("fail_page_alloc")
    pages.probability, pages.times, pages.ignore_gfp_wait, pages.min_order = 100, -1, False, 0
    pages.space = 3
    for _ in range(2):
        p.poke(REQ, bytes(range(64)))
        assert p.ioctl(fd, abi.TDX_CMD_GET_TDREPORT, REQ) == 0
    assert pages.space == 1
    assert p.ioctl(fd, abi.TDX_CMD_GET_TDREPORT, REQ) == -abi.ENOMEM
    assert failed_points(p) == ["tdreport:get_zeroed_page"]
