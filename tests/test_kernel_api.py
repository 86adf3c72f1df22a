"""The guest kernel model's contract (docs/CONTRACT.md "Kernel", "Process"): construction, the user
address space, the file table, bad input, and what the allocators leave in guest memory.

Every body runs against both backends (fixture ``backend``); ``make_kernel`` asserts at teardown that
allocations and locks balance.
"""

import os

import pytest

from tdxmodel import abi, errors, profiles

PAGE = abi.TDX_PAGE_SIZE
REQ = 0x20000
KERNEL_FIRST_PAGE = 16  # CONTRACT: the kernel's allocator owns pages 16..memory_pages-1


def balanced(kernel):
    c = kernel.counters()
    assert c["outstanding"] == c["resident"] and c["locks_held"] == 0, c
    return c


def report_cmd(driver):
    return profiles.get(driver).report.value


def report_offset(driver):
    return profiles.get(driver).report.field("tdreport").offset


def open_device(kernel, pages=2):
    p = kernel.process()
    p.mmap(REQ, pages * PAGE, "rw")
    p.poke(REQ, bytes(range(64)))
    fd = p.open(kernel.device_path)
    assert fd >= 3
    return p, fd


# ------------------------------------------------------------------------------------------ construction
def test_unknown_driver_is_a_value_error(backend, make_module):
    with pytest.raises(ValueError, match="driver"):
        backend.Kernel(make_module(), "v5.19")


def test_kernel_needs_a_module_of_its_backend(backend):
    with pytest.raises(TypeError, match="module"):
        backend.Kernel(object(), "v6.2")


@pytest.mark.parametrize("kwargs", [{"fail_nth": -1}, {"misaligned_report_buf": True}])
def test_bad_init_arguments_are_value_errors(backend, make_module, kwargs):
    with pytest.raises(ValueError):
        backend.Kernel(make_module(), "v6.2", **kwargs)


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_kernel_owns_private_pages_from_16(make_kernel, driver):
    k = make_kernel(driver, memory_pages=96)
    m = k.module
    assert k.driver == driver and k.module is m
    assert k.device_path == abi.DEVICE_PATHS[driver]
    assert all(m.page_state(i * PAGE) == "unmapped" for i in range(KERNEL_FIRST_PAGE))
    q = profiles.get(driver).quote  # the quote buffer is converted to shared at init (quote.md §2.2)
    shared = range(k.quote_buf_gpa // PAGE, k.quote_buf_gpa // PAGE + (1 << q.buf_order)) if q else ()
    assert all(m.page_state(i * PAGE) == ("shared" if i in shared else "private")
               for i in range(KERNEL_FIRST_PAGE, 96))


@pytest.mark.parametrize("driver, points", [
    ("v4-2022-04", ["reportdata:kmalloc", "tdreport:get_zeroed_page", "reportdata:copy_from_user",
                    "status:put_user", "tdreport:copy_to_user",
                    # TDX_CMD_GEN_QUOTE (ref §2.2, v4 3/3)
                    "quote_req:copy_from_user", "quote_buf:dma_alloc_coherent", "quote_data:copy_from_user",
                    "quote_err:put_user", "quote_data:copy_to_user"]),
    ("intel-downstream", ["reportdata:kmalloc", "tdreport:kzalloc", "reportdata:copy_from_user",
                          "tdreport:copy_to_user", "reportmac:kmalloc", "reportmac:copy_from_user",
                          "err_code:copy_to_user", "rtmr_index:copy_from_user", "extend_data:kmalloc",
                          "extend_data:copy_from_user",
                          # TDX_CMD_GET_QUOTE (quote.md §2.6)
                          "quote_req:copy_from_user", "quote_entry:kmalloc", "quote_buf:dma_alloc_coherent",
                          "quote_data:copy_from_user", "quote_data:copy_to_user"]),
    ("v6.2", ["reportdata:kmalloc", "tdreport:kzalloc", "reportdata:copy_from_user",
              "tdreport:copy_to_user"]),
    ("v6.16", ["report_buf:kzalloc", "tsm_mr_attrs:kzalloc", "tsm_mr_ctx:kzalloc",
               "reportdata:copy_from_user", "tdreport:copy_to_user",
               "kernfs_buf:kmalloc", "measurement:copy_to_user", "measurement:copy_from_user",
               # the quote path (quote.md §2.2-§2.3)
               "quote_buf:alloc_pages", "outblob:kvmemdup", "configfs:copy_from_user", "configfs:copy_to_user"]),
])
def test_injection_points_are_named_as_the_contract_says(make_kernel, driver, points):
    assert make_kernel(driver).injection_points() == points


@pytest.mark.parametrize("driver, init", [
    ("v4-2022-04", []), ("v6.2", []), ("intel-downstream", []),
    ("v6.7", ["quote_buf:alloc_pages"]),                         # quote.md §2.2: the quote buffer
    ("v6.16", ["report_buf:kzalloc", "quote_buf:alloc_pages"]),  # ref §2.5: the report buffer first
])
def test_init_trace_lists_the_points_module_init_passed(backend, make_module, make_kernel, driver, init):
    """init_trace() names what init passed, in order; fail-nth at init fails exactly those points."""
    k = make_kernel(driver)
    trace = k.init_trace()
    names = [pt for pt, _, _ in trace]
    assert [pt for pt in names if pt in init] == init and not any(f for _, _, f in trace)
    assert all(pt in k.injection_points() for pt in names)
    assert all(cap == profiles.POINT_CAPABILITY[pt] for pt, cap, _ in trace)
    for n in range(1, len(trace) + 1):  # each traced point is one init fail-nth can fail
        with pytest.raises(errors.KernelError):
            backend.Kernel(make_module(), driver, fail_nth=n)
    assert backend.Kernel(make_module(), driver, fail_nth=len(trace) + 1).init_trace() == trace


@pytest.mark.parametrize("driver, resident", [("v4-2022-04", 0), ("v6.2", 0), ("v6.16", 4)])  # 6.16: report buffer, tsm-mr's two, quote buffer
def test_counters_after_init(make_kernel, driver, resident):
    c = make_kernel(driver).counters()
    assert set(c) >= {"allocs", "frees", "outstanding", "resident", "slab_allocs", "page_allocs",
                      "locks_taken", "locks_released", "locks_held"}
    assert c["resident"] == resident and c["outstanding"] == resident
    assert c["locks_held"] == 0


# ------------------------------------------------------------------------------------------ address space
def test_mmap_maps_zero_filled_pages_and_poke_ignores_protection(make_kernel):
    p = make_kernel("v6.2").process()
    p.mmap(REQ, 2 * PAGE, "")
    assert p.peek(REQ, 2 * PAGE) == bytes(2 * PAGE)
    p.poke(REQ + PAGE - 2, b"abcd")  # across the page boundary, on pages without permissions
    assert p.peek(REQ + PAGE - 2, 4) == b"abcd"


@pytest.mark.parametrize("args", [
    (REQ + 1, PAGE, "rw"),   # not page-aligned
    (REQ, 0, "rw"),          # empty
    (REQ, -PAGE, "rw"),      # negative length
    (REQ, PAGE, "x"),        # no such protection
    (-PAGE, PAGE, "rw"),     # negative address
    ((1 << 64) - PAGE, 2 * PAGE, "rw"),  # beyond the address space
])
def test_bad_mmap_is_a_value_error(make_kernel, args):
    with pytest.raises(ValueError):
        make_kernel("v6.2").process().mmap(*args)


def test_mmap_overlap_is_a_value_error(make_kernel):
    p = make_kernel("v6.2").process()
    p.mmap(REQ, 2 * PAGE, "rw")
    with pytest.raises(ValueError):
        p.mmap(REQ + PAGE, PAGE, "r")


def test_unmapped_host_access_is_a_value_error(make_kernel):
    p = make_kernel("v6.2").process()
    p.mmap(REQ, PAGE, "rw")
    with pytest.raises(ValueError):
        p.peek(REQ + PAGE - 1, 2)
    with pytest.raises(ValueError):
        p.poke(REQ - 1, b"x")
    with pytest.raises(ValueError):
        p.mprotect(REQ, 2 * PAGE, "r")
    p.munmap(REQ, PAGE)
    with pytest.raises(ValueError):
        p.peek(REQ, 1)


def test_negative_sizes_are_value_errors(make_kernel):
    p = make_kernel("v6.2").process()
    p.mmap(REQ, PAGE, "rw")
    with pytest.raises(ValueError, match="n"):
        p.peek(REQ, -1)
    with pytest.raises(ValueError, match="length"):
        p.munmap(REQ, -PAGE)
    with pytest.raises(ValueError, match="length"):
        p.mprotect(REQ, -1, "r")


def test_wrong_types_are_type_errors(make_kernel):
    p = make_kernel("v6.2").process()
    p.mmap(REQ, PAGE, "rw")
    with pytest.raises(TypeError):
        p.poke(REQ, "text")
    with pytest.raises(TypeError):
        p.ioctl("3", abi.TDX_CMD_GET_REPORT0, REQ)
    with pytest.raises(TypeError):
        p.open(b"/dev/tdx_guest")


# ------------------------------------------------------------------------------------------ file table
@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_open_close_and_bad_fds(make_kernel, driver):
    k = make_kernel(driver)
    p = k.process()
    assert p.open("/dev/nonexistent") == -abi.ENOENT
    other = next(q.device_path for q in profiles.PROFILES if q.device_path != k.device_path)
    assert p.open(other) == -abi.ENOENT  # each generation has its own node (ref §1)
    fd = p.open(k.device_path, os.O_RDWR | os.O_SYNC)  # as the selftest opens it (ref §3)
    assert fd == 3
    fd2 = p.open(k.device_path)
    assert fd2 == 4
    assert p.close(fd) == 0
    assert p.close(fd) == -abi.EBADF
    assert p.open(k.device_path) == 3  # the lowest free number again
    assert p.ioctl(99, report_cmd(driver), REQ) == -abi.EBADF
    assert p.pread(99, REQ, 48, 0) == -abi.EBADF
    assert p.pwrite(99, REQ, 48, 0) == -abi.EBADF
    assert p.close(-1) == -abi.EBADF
    balanced(k)


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_read_and_write_on_the_device_node_are_einval(make_kernel, driver):
    k = make_kernel(driver)
    p, fd = open_device(k)
    assert p.pread(fd, REQ, 64, 0) == -abi.EINVAL
    assert p.pwrite(fd, REQ, 64, 0) == -abi.EINVAL
    assert p.pread(fd, REQ, -1, 0) == -abi.EINVAL


@pytest.mark.parametrize("field, value", [("cmd", 1 << 32), ("cmd", -1), ("arg", 1 << 64), ("arg", -1)])
def test_ioctl_arguments_out_of_range_are_value_errors(make_kernel, field, value):
    k = make_kernel("v6.2")
    p, fd = open_device(k)
    args = {"cmd": abi.TDX_CMD_GET_REPORT0, "arg": REQ}
    args[field] = value
    with pytest.raises(ValueError, match=field):
        p.ioctl(fd, args["cmd"], args["arg"])
    balanced(k)


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_unmapped_argument_is_efault_and_leaks_nothing(make_kernel, driver):
    k = make_kernel(driver)
    p, fd = open_device(k)
    for arg in (0, (1 << 64) - 8, 0xDEAD0000):
        assert p.ioctl(fd, report_cmd(driver), arg) == -abi.EFAULT
        balanced(k)


# ------------------------------------------------------------------------------------------ allocators
def _kernel_memory(k):
    m = k.module
    return m.read_memory(KERNEL_FIRST_PAGE * PAGE, (m.memory_pages - KERNEL_FIRST_PAGE) * PAGE)


# A freed object's first bytes may hold the allocator's free-list link (SLUB keeps it inside free
# objects too), so freed buffers are recognised by their content after the first LINK bytes.
LINK = 8


def find_freed(mem, content, align):
    """GPA offsets (from the kernel's first page) of naturally aligned objects ending in content[LINK:]."""
    hits, start = [], 0
    while True:
        at = mem.find(content[LINK:], start)
        if at < 0:
            return hits
        if (at - LINK) % align == 0:
            hits.append(at - LINK)
        start = at + 1


@pytest.mark.parametrize("driver, align", [("v4-2022-04", PAGE), ("v6.2", abi.TDX_REPORT_LEN)])
def test_report_buffers_are_naturally_aligned(make_kernel, driver, align):
    """The module wrote the report into the kernel's buffer by GPA: get_zeroed_page is page-aligned,
    kzalloc(1024) and kmalloc(64) are aligned to their power-of-two size."""
    k = make_kernel(driver, memory_pages=48)
    p, fd = open_device(k)
    assert p.ioctl(fd, report_cmd(driver), REQ) == 0
    report = p.peek(REQ + report_offset(driver), abi.TDX_REPORT_LEN)
    mem = _kernel_memory(k)
    assert find_freed(mem, report, align)                       # KERNEL_FIRST_PAGE * PAGE is aligned
    assert find_freed(mem, bytes(range(64)), abi.TDX_REPORTDATA_LEN)  # the kmalloc(64) REPORTDATA


def test_kmalloc_is_poisoned_not_zeroed(make_kernel):
    """v6.2: kmalloc(64) succeeds, kzalloc(1024) fails: the REPORTDATA buffer was never written, so
    the slab poison stays in guest memory, 64-aligned, and none of it reached the user."""
    k = make_kernel("v6.2", memory_pages=48)
    p, fd = open_device(k)
    k.fault("failslab").ignore_gfp_wait = False
    p.fail_nth = 2
    before = p.peek(REQ, 2 * PAGE)
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, REQ) == -abi.ENOMEM
    poison = bytes([abi.SLAB_POISON_INUSE]) * abi.TDX_REPORTDATA_LEN
    assert find_freed(_kernel_memory(k), poison, abi.TDX_REPORTDATA_LEN)
    assert p.peek(REQ, 2 * PAGE) == before
    balanced(k)


@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_many_calls_do_not_exhaust_a_small_kernel(make_kernel, driver):
    q = profiles.get(driver).quote  # plus the quote buffer, naturally aligned (quote.md §2.2)
    n = 1 << q.buf_order if q else 0
    k = make_kernel(driver, memory_pages=KERNEL_FIRST_PAGE + 2 * n + 2)
    p, fd = open_device(k)
    for _ in range(20):
        assert p.ioctl(fd, report_cmd(driver), REQ) == 0
    c = balanced(k)
    assert c["allocs"] - c["frees"] == c["resident"]


# ------------------------------------------------------------------------------------------ force_* knobs
def test_force_tdcall_count_and_leaf(make_kernel):
    k = make_kernel("v6.2")
    p, fd = open_device(k)
    k.force_tdcall(abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR, count=2)
    assert [p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, REQ) for _ in range(3)] == [-abi.EIO, -abi.EIO, 0]
    k.force_tdcall(abi.TDX_OPERAND_INVALID, leaf=abi.TDG_MR_RTMR_EXTEND)  # not the leaf issued
    assert p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, REQ) == 0
    balanced(k)


@pytest.mark.parametrize("kwargs", [{"status": -1}, {"status": 1 << 64}, {"status": 0, "count": 0}])
def test_bad_force_tdcall_is_a_value_error(make_kernel, kwargs):
    with pytest.raises(ValueError):
        make_kernel("v6.2").force_tdcall(**kwargs)


def test_force_misaligned_targets(make_kernel):
    with pytest.raises(ValueError):
        make_kernel("v6.2").force_misaligned("quote")
    with pytest.raises(ValueError):  # 6.16 allocates nothing per call (ref §2.5)
        make_kernel("v6.16").force_misaligned("tdreport")


@pytest.mark.parametrize("driver", ["v4-2022-04", "v6.2"])
def test_mr_lock_exists_only_in_6_16(make_kernel, driver):
    k = make_kernel(driver)
    with pytest.raises(ValueError):
        k.mr_lock_try()
    with pytest.raises(ValueError):
        k.mr_lock_release()


def test_mr_lock_release_without_hold_is_a_value_error(make_kernel):
    k = make_kernel("v6.16")
    with pytest.raises(ValueError):
        k.mr_lock_release()
    assert k.mr_lock_try() is True
    assert k.mr_lock_try() is False
    k.mr_lock_release()
    c = balanced(k)
    assert c["locks_taken"] == c["locks_released"] >= 1


def test_td_exit_propagates_and_frees(make_kernel):
    """If the host unmaps the kernel's own pages, REPORT exits to the VMM: the exception reaches the
    caller and the driver has still freed its buffers."""
    k = make_kernel("v6.2", memory_pages=40)
    p, fd = open_device(k)
    k.module.set_page_state(KERNEL_FIRST_PAGE * PAGE, 40 - KERNEL_FIRST_PAGE, "unmapped")
    with pytest.raises(errors.TdExit):
        p.ioctl(fd, abi.TDX_CMD_GET_REPORT0, REQ)
    balanced(k)


@pytest.mark.parametrize("driver", ["v6.16", "v6.2"])
def test_set_rtmr_is_host_side_sync_and_leaves_no_stale_measurement(make_kernel, driver):
    """Kernel.set_rtmr (the daemon following the state directory): the module's RTMR changes and a
    6.16 measurement read shows it at once, its tsm-mr cache refreshed as after an extend
    (ref §2.5), where Module.set_rtmr alone would leave the cached value."""
    k = make_kernel(driver)
    value = bytes(range(48))
    if not profiles.get(driver).measurements:
        k.set_rtmr(2, value)
        assert k.module.rtmr(2) == value
        return
    p = k.process()
    p.mmap(0x10000, 4096, "rw")
    fd = p.open(f"{abi.MEASUREMENT_DIRS[0]}/rtmr2:sha384", os.O_RDONLY)
    assert fd >= 0
    try:
        assert p.pread(fd, 0x10000, 48, 0) == 48 and p.peek(0x10000, 48) == bytes(48)  # cached
        k.set_rtmr(2, value)
        assert k.module.rtmr(2) == value
        assert p.pread(fd, 0x10000, 48, 0) == 48 and p.peek(0x10000, 48) == value
        with pytest.raises(ValueError):
            k.set_rtmr(4, value)
    finally:
        p.close(fd)
