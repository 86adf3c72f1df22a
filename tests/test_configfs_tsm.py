"""configfs-tsm report and the tdx_guest quote provider, row by row, on both backends and every
generation with a quote path: the configfs mechanics (quote.md §1.3-§1.6), the tsm read R1-R8 (§1.5),
the provider P1-P11 and the wait loop (§2.3-§2.4, tdx-abi.md §2.6-§2.7), with the host model's
faults (quote.md §4.1) on the virtual clock.
"""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from tdxmodel import abi, errors, profiles

R = profiles.TSM_REPORT_DIR
ITEM = R + "/q"
QUOTE_GENERATIONS = [p.name for p in profiles.PROFILES if p.quote is not None]
PAGE = abi.TDX_PAGE_SIZE
UBUF = 0x100000              # user memory: 1 MiB window
UPAGES = 64
INBLOB = bytes(range(0x40, 0x80))
SEC = 1_000_000_000


def q(driver):
    return profiles.get(driver).quote


def test_quote(payload):
    return b"tdxmodel-testq-1" + hashlib.sha384(payload).digest() + payload


test_quote.__test__ = False


@pytest.fixture
def tsm(backend, make_module):
    """tsm(driver, **host_kwargs) -> (kernel, process, host) with the user window mapped."""
    made = []

    def factory(driver, host=True, **host_kwargs):
        m = make_module(memory_pages=160)
        host_kwargs.setdefault("producer", backend.TestQuoteProducer())
        h = backend.Host(m, **host_kwargs) if host else None
        k = backend.Kernel(m, driver)
        p = k.process()
        p.mmap(UBUF, UPAGES * PAGE, "rw")
        made.append((k, p, h))
        return k, p, h

    yield factory
    for k, p, h in made:
        c = k.counters()
        assert c["locks_held"] == 0 and c["locks_taken"] == c["locks_released"], c
        if h is not None:
            h.close()


def write_file(p, path, data, flags=os.O_WRONLY):
    fd = p.open(path, flags)
    assert fd >= 3, fd
    p.poke(UBUF, data)
    ret = p.write(fd, UBUF, len(data))
    assert p.close(fd) == 0  # release: the commit's result is ignored
    return ret


def read_file(p, path, count=UPAGES * PAGE):
    fd = p.open(path, os.O_RDONLY)
    assert fd >= 3, fd
    ret = p.read(fd, UBUF, count)
    data = p.peek(UBUF, ret) if ret > 0 else b""
    p.close(fd)
    return ret, data


def generation(p):
    ret, data = read_file(p, ITEM + "/generation")
    assert ret > 0 and data.endswith(b"\n")
    return int(data)


def quote_for(k, p, reportdata=INBLOB):
    assert p.mkdir(ITEM) in (0, -abi.EEXIST)
    assert write_file(p, ITEM + "/inblob", reportdata) == len(reportdata)
    return read_file(p, ITEM + "/outblob")


# ------------------------------------------------------------------------------------------------
# The surface (quote.md §1.2, §1.6)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_mkdir_shows_only_the_four_tdx_attributes(tsm, driver):
    k, p, h = tsm(driver)
    assert p.readdir(R) == []
    assert p.mkdir(ITEM) == 0
    assert p.readdir(R) == ["q"]
    assert p.readdir(ITEM) == sorted(profiles.TSM_ATTRS)
    assert p.stat(ITEM) == {"type": "dir", "mode": 0o755}
    modes = {a: p.stat(f"{ITEM}/{a}")["mode"] for a in profiles.TSM_ATTRS}
    assert modes == {"generation": 0o444, "provider": 0o444, "inblob": 0o200, "outblob": 0o444}
    for hidden in ("auxblob", "privlevel", "privlevel_floor", "manifestblob", "service_provider"):
        assert p.stat(f"{ITEM}/{hidden}") == -abi.ENOENT
        assert p.open(f"{ITEM}/{hidden}", os.O_RDONLY) == -abi.ENOENT
    assert read_file(p, ITEM + "/provider") == (10, b"tdx_guest\n")
    assert generation(p) == 0
    assert p.readdir(R.rsplit("/", 1)[0]) == ["report"]


@pytest.mark.parametrize("path,errno_", [
    (ITEM, -abi.EEXIST), (ITEM + "/sub", -abi.EPERM), (R.rsplit("/", 1)[0] + "/x", -abi.EPERM),
    (R + "/nope/x", -abi.ENOENT), (ITEM + "/outblob", -abi.EEXIST), (ITEM + "/outblob/x", -abi.ENOTDIR),
    (R + "/" + "n" * 256, -abi.ENAMETOOLONG), ("/sys/kernel/config/nothere/x", -abi.ENOENT),
])
def test_mkdir_errors(tsm, path, errno_):
    k, p, h = tsm("v6.16")
    assert p.mkdir(ITEM) == 0
    assert p.mkdir(path) == errno_


def test_rmdir(tsm):
    k, p, h = tsm("v6.7")
    assert p.mkdir(ITEM) == 0
    assert p.rmdir(ITEM + "/outblob") == -abi.ENOTDIR
    assert p.rmdir(R) == -abi.EPERM
    assert p.rmdir(R + "/other") == -abi.ENOENT
    ret, _ = quote_for(k, p)
    assert ret > 0
    before = k.counters()["outstanding"]
    fd = p.open(ITEM + "/outblob", os.O_RDONLY)
    assert p.rmdir(ITEM) == 0
    assert p.readdir(R) == [] and p.stat(ITEM) == -abi.ENOENT
    assert p.read(fd, UBUF, 100) == -abi.ENOENT  # frag_dead: the item went away under the fd
    assert k.counters()["outstanding"] == before  # the item (and its outblob) lives until close
    assert p.close(fd) == 0
    assert k.counters()["outstanding"] == before - 1


@pytest.mark.parametrize("path,flags,want", [
    (ITEM + "/inblob", os.O_RDONLY, -abi.EACCES), (ITEM + "/inblob", os.O_RDWR, -abi.EACCES),
    (ITEM + "/outblob", os.O_WRONLY, -abi.EACCES), (ITEM + "/outblob", os.O_RDWR, -abi.EACCES),
    (ITEM + "/generation", os.O_WRONLY, -abi.EACCES), (ITEM + "/provider", os.O_RDWR, -abi.EACCES),
    (ITEM, os.O_WRONLY, -abi.EISDIR), (R + "/other/inblob", os.O_WRONLY, -abi.ENOENT),
    (ITEM + "/outblob/x", os.O_RDONLY, -abi.ENOTDIR),
])
def test_open_checks_modes_and_paths(tsm, path, flags, want):
    # one fd can never both read and write a TDX attribute: configfs's -ETXTBSY is out of reach
    k, p, h = tsm("v6.16")
    assert p.mkdir(ITEM) == 0
    assert p.open(path, flags) == want


def test_directory_fd_and_file_fd_misuse(tsm):
    k, p, h = tsm("v6.16")
    assert p.mkdir(ITEM) == 0
    d = p.open(ITEM, os.O_RDONLY)
    assert d >= 3 and p.read(d, UBUF, 10) == -abi.EISDIR and p.write(d, UBUF, 10) == -abi.EBADF
    assert p.ioctl(d, abi.TDX_CMD_GET_REPORT0, UBUF) == -abi.ENOTTY
    assert p.readdir(ITEM + "/inblob") == -abi.ENOTDIR
    assert p.close(d) == 0
    fd = p.open(ITEM + "/outblob", os.O_RDONLY)
    assert p.write(fd, UBUF, 1) == -abi.EBADF and p.read(fd, UBUF, -1) == -abi.EINVAL
    p.close(fd)


def test_generations_without_a_quote_path_have_no_configfs(backend, make_kernel):
    k = make_kernel("v6.2")
    p = k.process()
    assert p.mkdir(ITEM) == -abi.ENOENT and p.open(ITEM + "/inblob", os.O_WRONLY) == -abi.ENOENT
    assert p.readdir(R) == -abi.ENOENT and p.stat(R) == -abi.ENOENT
    with pytest.raises(ValueError):
        k.tsm_unregister()


# ------------------------------------------------------------------------------------------------
# write(inblob) (quote.md §1.3, §1.4)
# ------------------------------------------------------------------------------------------------
def test_writes_are_buffered_until_close(tsm):
    k, p, h = tsm("v7.1")
    assert p.mkdir(ITEM) == 0
    fd = p.open(ITEM + "/inblob", os.O_WRONLY)
    p.poke(UBUF, INBLOB)
    assert p.write(fd, UBUF, 32) == 32 and p.write(fd, UBUF + 32, 32) == 32  # appends
    assert generation(p) == 0            # nothing committed yet
    assert p.close(fd) == 0
    assert generation(p) == 1
    ret, data = read_file(p, ITEM + "/outblob")
    assert data == test_quote(k.module.report(INBLOB))


def test_write_past_64_is_efbig_and_what_was_buffered_commits(tsm):
    k, p, h = tsm("v6.11")
    assert p.mkdir(ITEM) == 0
    fd = p.open(ITEM + "/inblob", os.O_WRONLY)
    p.poke(UBUF, bytes(100))
    assert p.write(fd, UBUF, 65) == -abi.EFBIG
    assert p.write(fd, UBUF, 60) == 60
    assert p.write(fd, UBUF, 5) == -abi.EFBIG
    assert p.pwrite(fd, UBUF, 1, 64) == -abi.EFBIG
    assert p.close(fd) == 0
    assert generation(p) == 1
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EINVAL  # P3: 60 bytes, not 64


def test_zero_length_write_is_efault_and_commits_an_empty_inblob(tsm):
    k, p, h = tsm("v6.7")
    assert quote_for(k, p)[0] > 0
    fd = p.open(ITEM + "/inblob", os.O_WRONLY)
    assert p.write(fd, UBUF, 0) == -abi.EFAULT
    assert p.close(fd) == 0
    assert generation(p) == 2
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EINVAL  # R1: inblob_len 0


def test_write_from_unmapped_memory_is_efault(tsm):
    k, p, h = tsm("v6.16")
    assert p.mkdir(ITEM) == 0
    fd = p.open(ITEM + "/inblob", os.O_WRONLY)
    assert p.write(fd, 0x7000_0000, 64) == -abi.EFAULT
    p.close(fd)


def test_wrap_guard_busy_is_lost_at_close(tsm):
    k, p, h = tsm("v7.0")
    assert p.mkdir(ITEM) == 0
    top = (1 << 64) - 1
    k._tsm_set_generations("q", top - 1, top)  # write_gen == read_gen - 1
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64  # close() says 0 all the same
    assert generation(p) == top - 1
    k._tsm_set_generations("q", top, 5)
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert generation(p) == 0  # wraps


# ------------------------------------------------------------------------------------------------
# read(outblob): R1-R8 (quote.md §1.5)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_quote_round_trip(tsm, driver):
    k, p, h = tsm(driver)
    ret, data = quote_for(k, p)
    assert ret == len(data) == 16 + 48 + 1024
    assert data == test_quote(k.module.report(INBLOB))
    assert h.clock.now_ns() == SEC  # one 1 s poll (quote.md §2.4): the host needed 4.7 ms
    hdr = k.module.read_memory(k.quote_buf_gpa, 24)
    assert struct.unpack("<QQII", hdr) == (1, 0, 1024, len(data))
    c = k.counters()
    assert c["outstanding"] == c["resident"] + 1  # the cached outblob


def test_r1_no_inblob_is_einval(tsm):
    k, p, h = tsm("v6.16")
    assert p.mkdir(ITEM) == 0
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EINVAL
    assert h.counters()["get_quotes"] == 0


def test_r2_cached_copy_until_inblob_is_rewritten(tsm):
    k, p, h = tsm("v6.7")
    first = quote_for(k, p)
    assert read_file(p, ITEM + "/outblob") == first and h.counters()["get_quotes"] == 1
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64   # same bytes, new generation
    assert read_file(p, ITEM + "/outblob") == first and h.counters()["get_quotes"] == 2


def test_reads_in_chunks_then_eof_from_the_fds_buffer(tsm):
    k, p, h = tsm("v7.1")
    whole = quote_for(k, p)[1]
    fd = p.open(ITEM + "/outblob", os.O_RDONLY)
    got = b""
    while True:
        n = p.read(fd, UBUF, 500)
        assert n >= 0
        if n == 0:
            break
        got += p.peek(UBUF, n)
    assert got == whole
    assert p.pread(fd, UBUF, 10, 5) == 10 and p.peek(UBUF, 10) == whole[5:15]
    assert p.read(fd, UBUF, 0) == 0  # at EOF
    p.close(fd)


def test_zero_count_read_is_efault_after_the_quote(tsm):
    k, p, h = tsm("v6.16")
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    fd = p.open(ITEM + "/outblob", os.O_RDONLY)
    assert p.read(fd, UBUF, 0) == -abi.EFAULT  # copy_to_iter copied nothing
    assert h.counters()["get_quotes"] == 1     # the provider ran all the same
    p.close(fd)


def test_read_into_unmapped_memory_is_efault(tsm):
    k, p, h = tsm("v6.16")
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    fd = p.open(ITEM + "/outblob", os.O_RDONLY)
    assert p.read(fd, 0x7000_0000, 100) == -abi.EFAULT
    assert p.read(fd, UBUF, 100) == 100  # the buffer was filled
    p.close(fd)


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_paths_resolve_as_the_vfs_reads_them(tsm, driver):
    """A run of slashes is one; "." and ".." are never item names (filename_create, do_rmdir)."""
    k, p, h = tsm(driver)
    assert p.mkdir(R + "//a") == 0 and p.readdir(R) == ["a"]
    assert p.stat("/" + R + "///a/") == {"type": "dir", "mode": p.stat(R + "/a")["mode"]}
    assert write_file(p, R + "//a//inblob", INBLOB) == 64
    fd = p.open(R + "/a//outblob", os.O_RDONLY)
    assert fd >= 3 and p.close(fd) == 0
    assert p.mkdir(R + "/.") == -abi.EEXIST and p.mkdir(R + "/../") == -abi.EEXIST
    assert p.rmdir(R + "/a/.") == -abi.EINVAL and p.rmdir(R + "/a/..") == -abi.ENOTEMPTY
    assert p.readdir(R) == ["a"] and p.rmdir(R + "//a") == 0 and p.readdir(R) == []


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_r3_no_provider(tsm, driver):
    k, p, h = tsm(driver)
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    k.tsm_unregister()
    assert read_file(p, ITEM + "/outblob")[0] == -q(driver).no_provider_errno  # ENOTTY <= 6.15, ENXIO
    assert p.mkdir(R + "/other") == -abi.ENXIO                                 # quote.md §1.6
    fd = p.open(ITEM + "/provider", os.O_RDONLY)
    if q(driver).provider_gone_enxio:
        assert p.read(fd, UBUF, 100) == -abi.ENXIO
        assert p.pread(fd, UBUF, 100, 0) == -abi.ENXIO
    else:  # <= 6.15 dereferences the NULL provider (quote.md §1.7), whichever read reaches it
        with pytest.raises(errors.KernelOops):
            p.read(fd, UBUF, 100)
        with pytest.raises(errors.KernelOops):
            p.pread(fd, UBUF, 100, 0)
    p.close(fd)
    # 6.16+ refuses to register while items exist
    assert k.tsm_register() == (-abi.EBUSY if q(driver).counts_items else 0)
    assert p.rmdir(ITEM) == 0
    if q(driver).counts_items:
        assert k.tsm_register() == 0
    assert k.tsm_register() == -abi.EBUSY  # already registered


def test_r6_the_old_report_is_freed_before_the_provider_fails(tsm):
    k, p, h = tsm("v7.1")
    assert quote_for(k, p)[0] > 0
    held = k.counters()["outstanding"]
    h.push_fault("error")
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EIO
    assert k.counters()["outstanding"] == held - 1
    assert read_file(p, ITEM + "/outblob")[0] > 0  # errors are not cached: the next read retries


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_r8_sticky_efbig(tsm, driver):
    k, p, h = tsm(driver)
    limit = q(driver).outblob_max
    if q(driver).out_len_once:
        # 7.0+: out_len is bounded by the 128 KiB buffer (P9), far below the 16 MiB limit, so R8's
        # -EFBIG cannot be reached; P9's is not cached
        h.push_fault("oversize_out_len", out_len=q(driver).max_out_len + 1)
        assert quote_for(k, p)[0] == -abi.EFBIG
        assert read_file(p, ITEM + "/outblob")[0] > 0 and h.counters()["get_quotes"] == 2
        return
    h.push_fault("oversize_out_len", out_len=limit + 1)
    assert quote_for(k, p)[0] == -abi.EFBIG
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EFBIG  # cached: no new request
    assert h.counters()["get_quotes"] == 1
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert read_file(p, ITEM + "/outblob")[0] > 0


# ------------------------------------------------------------------------------------------------
# The provider: P1-P11 (quote.md §2.3)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_p1_quote_lock_interruptible(tsm, driver):
    k, p, h = tsm(driver)
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert k.quote_lock_try()
    p.signal_pending = True
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EINTR
    p.signal_pending = False
    k.quote_lock_release()
    assert read_file(p, ITEM + "/outblob")[0] > 0


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_p2_leftover_in_flight_is_ebusy(tsm, driver):
    k, p, h = tsm(driver)
    h.push_fault("service_time", seconds=100)  # beyond the 30 polls; QEMU's timer ends it at 30 s
    ret, _ = quote_for(k, p)
    # the loop exits after sleep 30 with i == 30 exactly when the timer fired then (§2.4 row 3)
    assert ret == -abi.ETIMEDOUT
    h.push_fault("never")
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    ret, data = read_file(p, ITEM + "/outblob")
    if q(driver).status_check:
        assert ret == -abi.EIO              # v7.1: still IN_FLIGHT after 31 checks
    else:
        assert (ret, data) == (0, b"")      # a real timeout reads as an empty success
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EBUSY  # the host still owns the buffer


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_p3_inblob_must_be_64_bytes(tsm, driver):
    k, p, h = tsm(driver)
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB[:63]) == 63
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EINVAL
    assert h.counters()["get_quotes"] == 0


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
@pytest.mark.parametrize("status", [abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RCX,
                                    abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR, 0xC000100000000000])
def test_p5_report_failure(tsm, driver, status):
    k, p, h = tsm(driver)
    k.force_tdcall(status, leaf=abi.TDG_MR_REPORT)
    assert quote_for(k, p)[0] == -profiles.get(driver).status_errno(status)
    assert h.counters()["get_quotes"] == 0
    c = k.counters()
    assert c["outstanding"] == c["resident"]  # the temporaries (<= 6.15) were freed


_ALLOC_POINTS = ("reportdata:kmalloc", "tdreport:kzalloc", "outblob:kvmemdup")  # P5 (<= 6.15), P10


@pytest.mark.parametrize("driver,point", [(d, pt) for d in QUOTE_GENERATIONS for pt in _ALLOC_POINTS
                                          if pt in profiles.get(d).points])
def test_p5_p10_allocation_failures(tsm, driver, point):
    k, p, h = tsm(driver)
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    k.fault("failslab").ignore_gfp_wait = False
    fd = p.open(ITEM + "/outblob", os.O_RDONLY)
    n = [pt for pt in profiles.get(driver).points if pt in ("reportdata:kmalloc", "tdreport:kzalloc",
                                                           "outblob:kvmemdup")].index(point) + 1
    p.fail_nth = n
    assert p.read(fd, UBUF, 4096) == -abi.ENOMEM
    assert [t for t in p.last_trace() if t[2]] == [(point, "failslab", True)]
    p.close(fd)
    c = k.counters()
    assert c["outstanding"] == c["resident"]


def test_p5_6_16_mr_lock_interruptible(tsm):
    k, p, h = tsm("v6.16")
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert k.mr_lock_try()
    p.signal_pending = True
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EINTR
    p.signal_pending = False
    k.mr_lock_release()


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_p6_getquote_failure_is_eio(tsm, driver):
    k, p, h = tsm(driver)
    h.push_fault("retry")
    assert quote_for(k, p)[0] == -abi.EIO
    h.close()
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EIO  # no VMM: SUBFUNC_UNSUPPORTED


# The wait loop (quote.md §2.4, tdx-abi.md §2.7): (service seconds, sleeps, ret <= 7.0, ret 7.1)
WAIT_ROWS = [
    ("cleared before the first check", 0, 0, "ok", "ok"),
    ("during sleep 1", 0.5, 1, "ok", "ok"),
    ("during sleep 29", 28.5, 29, "ok", "ok"),
    ("during sleep 30: -ETIMEDOUT although ready", 29.5, 30, -abi.ETIMEDOUT, -abi.ETIMEDOUT),
    ("never: success after check 31", None, 30, "empty", -abi.EIO),
]


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
@pytest.mark.parametrize("name,service,sleeps,old,new", WAIT_ROWS, ids=[r[0] for r in WAIT_ROWS])
def test_p7_wait_loop_off_by_one_both_ways(tsm, driver, name, service, sleeps, old, new):
    k, p, h = tsm(driver)
    if service is None:
        h.push_fault("never")
    else:
        h.push_fault("service_time", seconds=service)
    ret, data = quote_for(k, p)
    assert h.clock.now_ns() == sleeps * SEC
    want = new if q(driver).status_check else old
    if want == "ok":
        assert data == test_quote(k.module.report(INBLOB))
    elif want == "empty":
        assert (ret, data) == (0, b"")
    else:
        assert ret == want


def test_p7_signal_during_the_wait_leaves_the_host_owning_the_buffer(tsm):
    k, p, h = tsm("v6.16")
    h.push_fault("service_time", seconds=5)
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    p.signal_pending = True
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EINTR
    p.signal_pending = False
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EBUSY  # still IN_FLIGHT
    h.clock.advance_ns(5 * SEC)
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert read_file(p, ITEM + "/outblob")[0] > 0


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
@pytest.mark.parametrize("fault", ["error", "service_unavailable", "no_in_flight"])
def test_p8_non_success_status(tsm, driver, fault):
    k, p, h = tsm(driver)
    h.push_fault(fault)
    ret, data = quote_for(k, p)
    if fault == "no_in_flight":   # status 0 at the first check: empty "success" even on 7.1
        assert (ret, data) == (0, b"")
    elif q(driver).status_check:
        assert ret == -abi.EIO
    else:                         # before 7.1: success with a zero-length outblob
        assert (ret, data) == (0, b"")


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_p9_oversize_out_len(tsm, driver):
    k, p, h = tsm(driver)
    size = q(driver).buf_size
    h.push_fault("oversize_out_len", out_len=size - 24 + 1000)
    ret, data = quote_for(k, p)
    if q(driver).out_len_once:
        assert ret == -abi.EFBIG
    else:  # the copy runs 1000 bytes past the buffer into adjacent kernel memory: disclosed
        assert ret == size - 24 + 1000
        assert data[:1088] == test_quote(k.module.report(INBLOB))
        assert data[1088:size - 24] == bytes(size - 24 - 1088)  # the rest of the zeroed buffer


def test_p9_bytes_past_the_buffer_are_fresh_poison_not_an_earlier_quote(tsm):
    """6.16 (unbounded out_len): the over-read reaches the pages kvmemdup just took for the new
    outblob (this model places them right after the 8 KiB buffer); unzeroed pages hold the slab
    poison on both backends, never the bytes of the outblob freed before (docs/CONTRACT.md)."""
    k, p, h = tsm("v6.16")
    size = q("v6.16").buf_size
    for _ in range(2):
        h.push_fault("oversize_out_len", out_len=size - 24 + 1000)
        ret, data = quote_for(k, p)
        assert ret == size - 24 + 1000
        assert data[size - 24:] == bytes([abi.SLAB_POISON_INUSE]) * 1000
        assert p.rmdir(ITEM) == 0


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_p9_out_len_changes_between_the_two_reads(tsm, driver):
    k, p, h = tsm(driver)
    h.push_fault("out_len_changes", out_len=3000)
    ret, data = quote_for(k, p)
    if q(driver).out_len_once:
        assert data == test_quote(k.module.report(INBLOB))  # read once
    else:  # kvmemdup copied 1088 bytes, outblob_len says 3000: the read runs past the allocation
        assert ret == 3000 and data[:1088] == test_quote(k.module.report(INBLOB))


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_quote_buffer_is_shared_and_sized_per_generation(tsm, driver):
    k, p, h = tsm(driver)
    gpa = k.quote_buf_gpa
    assert k.quote_buf_size == q(driver).buf_size and gpa % (PAGE << q(driver).buf_order) == 0
    for i in range(q(driver).buf_size // PAGE):
        assert k.module.page_state(gpa + i * PAGE) == "shared"
    ret, data = quote_for(k, p)
    hdr = struct.unpack("<QQII", k.module.read_memory(gpa, 24))
    assert hdr[0] == 1 and hdr[2] == 1024


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_init_quote_buffer_allocation_and_conversion_failures(backend, make_module, driver):
    prof = profiles.get(driver)
    with pytest.raises(errors.KernelError) as e:
        # init's points in order: 6.16+ the report buffer first, then the quote buffer
        backend.Kernel(make_module(memory_pages=160), driver, fail_nth=2 if prof.cached_report_buf else 1)
    assert e.value.errno == abi.ENOMEM
    with pytest.raises(errors.KernelError) as e:
        backend.Kernel(make_module(memory_pages=160), driver, fail_decrypt=True)
    assert e.value.errno == abi.ENOMEM and e.value.leaked_pages == 1 << prof.quote.buf_order


def test_notify_vector_is_not_used_by_upstream(tsm):
    k, p, h = tsm("v7.1")
    k.module.tdvmcall(abi.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, 0x40)
    assert quote_for(k, p)[0] > 0
    assert h.counters()["interrupts"] == 1  # the host injects; the guest polls all the same
    assert h.clock.now_ns() == SEC


# ------------------------------------------------------------------------------------------------
# The wait loop's clock: a signal at each sleep, the poll limit, the real clock (quote.md §2.4)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", ["v6.7", "v7.1"])
@pytest.mark.parametrize("sleep", [1, 2, 15, 30])
def test_p7_signal_during_sleep_k_cuts_it_short(tsm, driver, sleep):
    k, p, h = tsm(driver)
    h.push_fault("never")
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    p.signal_at_ns = (sleep - 1) * SEC + SEC // 4   # a quarter into sleep k
    assert p.signal_at_ns == (sleep - 1) * SEC + SEC // 4
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EINTR
    assert h.clock.now_ns() == (sleep - 1) * SEC + SEC // 4   # msleep_interruptible returned there
    assert p.signal_pending and p.signal_at_ns is None
    p.signal_pending = False
    assert write_file(p, ITEM + "/inblob", INBLOB) == 64
    assert read_file(p, ITEM + "/outblob")[0] == -abi.EBUSY  # the host still owns the buffer


def test_p7_a_signal_due_after_the_quote_is_not_delivered(tsm):
    k, p, h = tsm("v6.16")
    assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
    p.signal_at_ns = 5 * SEC
    ret, data = read_file(p, ITEM + "/outblob")
    assert data == test_quote(k.module.report(INBLOB)) and not p.signal_pending
    assert p.signal_at_ns == 5 * SEC
    p.signal_at_ns = None
    assert p.signal_at_ns is None
    for bad, exc in ((-1, ValueError), (1 << 64, ValueError), ("1", TypeError)):
        with pytest.raises(exc):
            p.signal_at_ns = bad


# (service seconds, sleeps, ret <= 7.0, ret 7.1) with a 5-poll limit: the same off-by-one at poll 5
WAIT_ROWS_5 = [
    ("during sleep 4", 3.5, 4, "ok", "ok"),
    ("during sleep 5: -ETIMEDOUT although ready", 4.5, 5, -abi.ETIMEDOUT, -abi.ETIMEDOUT),
    ("never: success after check 6", None, 5, "empty", -abi.EIO),
]


@pytest.mark.parametrize("driver", ["v6.11", "v7.0", "v7.1"])
@pytest.mark.parametrize("name,service,sleeps,old,new", WAIT_ROWS_5, ids=[r[0] for r in WAIT_ROWS_5])
def test_p7_poll_limit_is_configurable(tsm, driver, name, service, sleeps, old, new):
    k, p, h = tsm(driver)
    assert k.getquote_timeout == abi.GETQUOTE_TIMEOUT
    k.getquote_timeout = 5
    h.push_fault("never") if service is None else h.push_fault("service_time", seconds=service)
    ret, data = quote_for(k, p)
    assert h.clock.now_ns() == sleeps * SEC
    want = new if q(driver).status_check else old
    if want == "ok":
        assert data == test_quote(k.module.report(INBLOB))
    elif want == "empty":
        assert (ret, data) == (0, b"")
    else:
        assert ret == want
    with pytest.raises(ValueError):
        k.getquote_timeout = -1


def test_p7_real_clock_polls_sleep_in_wall_time(tsm):
    import time
    k, p, h = tsm("v7.1", clock="real")
    k.getquote_timeout = 2
    h.push_fault("service_time", seconds=1.5)   # ready during sleep 2: -ETIMEDOUT (the off-by-one)
    start = time.monotonic()
    ret, _ = quote_for(k, p)
    wall = time.monotonic() - start
    assert ret == -abi.ETIMEDOUT
    assert wall >= 2 * abi.GETQUOTE_POLL_MS / 1000   # two 1 s sleeps really slept
    assert h.clock.now_ns() >= 2 * SEC


def test_interrupt_wait_ends_at_a_signal_due_before_the_completion(backend, make_module):
    m = make_module(memory_pages=160)
    h = backend.Host(m, producer=backend.TestQuoteProducer())
    try:
        k = backend.Kernel(m, "v7.1", quote_completion="interrupt")
        p = k.process()
        p.mmap(UBUF, UPAGES * PAGE, "rw")
        h.push_fault("never")
        p.signal_at_ns = 7 * SEC    # wait_for_completion_interruptible has no timeout: only this ends it
        assert p.mkdir(ITEM) == 0 and write_file(p, ITEM + "/inblob", INBLOB) == 64
        assert read_file(p, ITEM + "/outblob")[0] == -abi.EINTR
        assert h.clock.now_ns() == 7 * SEC and p.signal_pending
        c = k.counters()
        assert c["locks_held"] == 0
    finally:
        h.close()
