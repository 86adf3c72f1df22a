"""Commands do_vfs_ioctl answers on the device node before any driver sees them (ref §1 "Commands the
VFS handles first"; tdxmodel.profiles.VfsCommand), on both backends and every generation."""

import pytest

from tdxmodel import abi, profiles

BUF = 0x10000
PAGE = abi.TDX_PAGE_SIZE


def _open(make_kernel, name):
    prof = profiles.get(name)
    k = make_kernel(name, memory_pages=96)
    p = k.process()
    fd = p.open(prof.device_path)
    assert fd >= 3
    p.mmap(BUF, PAGE, "rw")
    p.mmap(BUF + PAGE, PAGE, "r")    # read-only page after the rw one
    return prof, k, p, fd


@pytest.mark.parametrize("name", profiles.NAMES)
def test_vfs_commands_never_reach_the_driver(make_kernel, name):
    prof, _k, p, fd = _open(make_kernel, name)
    p.poke(BUF, (1).to_bytes(4, "little"))
    for cmd, expected in ((abi.FIOCLEX, 0), (abi.FIONCLEX, 0), (abi.FIONBIO, 0),
                          (abi.FIOQSIZE, -abi.ENOTTY), (abi.FIFREEZE, -abi.EOPNOTSUPP),
                          (abi.FITHAW, -abi.EINVAL), (abi.FS_IOC_FIEMAP, -abi.EOPNOTSUPP),
                          (abi.FIOASYNC, -abi.ENOTTY)):
        assert p.ioctl(fd, cmd, BUF) == expected, hex(cmd)
        assert p.last_trace() == []   # no driver step, no injection point
    # v4 returns 0 for a command it does not know: FIOQSIZE's -ENOTTY is the VFS's, not the driver's
    assert p.ioctl(fd, prof.other_report_cmd(), BUF) == -prof.unknown_cmd_errno


@pytest.mark.parametrize("name", profiles.NAMES)
def test_commands_reading_an_int_fault_on_bad_memory(make_kernel, name):
    _prof, _k, p, fd = _open(make_kernel, name)
    for cmd in (abi.FIONBIO, abi.FIOASYNC):
        assert p.ioctl(fd, cmd, 0) == -abi.EFAULT
        assert p.ioctl(fd, cmd, BUF + 2 * PAGE - 2) == -abi.EFAULT   # straddles the end of the mapping
    p.poke(BUF, bytes(4))
    assert p.ioctl(fd, abi.FIOASYNC, BUF) == 0          # FASYNC stays off: nothing to change
    p.poke(BUF, (7).to_bytes(4, "little"))
    assert p.ioctl(fd, abi.FIOASYNC, BUF) == -abi.ENOTTY  # no fasync in the driver's file operations
    assert p.ioctl(fd, abi.FIONBIO, BUF + PAGE) == 0     # get_user reads a read-only page


@pytest.mark.parametrize("name", profiles.NAMES)
def test_figetbsz_writes_the_block_size(make_kernel, name):
    _prof, _k, p, fd = _open(make_kernel, name)
    p.poke(BUF, b"\xff" * 8)
    assert p.ioctl(fd, abi.FIGETBSZ, BUF) == 0
    assert p.peek(BUF, 8) == PAGE.to_bytes(4, "little") + b"\xff" * 4
    assert p.ioctl(fd, abi.FIGETBSZ, BUF + PAGE) == -abi.EFAULT    # read-only
    assert p.ioctl(fd, abi.FIGETBSZ, BUF + PAGE - 2) == -abi.EFAULT  # put_user: all or nothing
    assert p.peek(BUF + PAGE - 2, 2) == bytes(2)


@pytest.mark.parametrize("name", profiles.NAMES)
def test_ficlone_checks_the_source_fd(make_kernel, name):
    prof, _k, p, fd = _open(make_kernel, name)
    other = p.open(prof.device_path)
    assert p.ioctl(fd, abi.FICLONE, 999) == -abi.EBADF
    assert p.ioctl(fd, abi.FICLONE, fd) == -abi.EINVAL           # same superblock, not a regular file
    assert p.ioctl(fd, abi.FICLONE, other | (1 << 32)) == -abi.EINVAL  # fdget takes the low 32 bits
    if prof.measurements:
        mfd = p.open(f"{prof.measurement_dirs[0]}/{prof.measurements[0].name}", 0)
        assert p.ioctl(fd, abi.FICLONE, mfd) == -abi.EXDEV       # sysfs: another superblock
        p.close(mfd)
    p.poke(BUF, other.to_bytes(8, "little") + bytes(24))
    assert p.ioctl(fd, abi.FICLONERANGE, BUF) == -abi.EINVAL
    assert p.ioctl(fd, abi.FICLONERANGE, BUF + 2 * PAGE - 16) == -abi.EFAULT
    p.close(other)


@pytest.mark.parametrize("name", profiles.NAMES)
def test_fideduperange_bounds_then_refuses(make_kernel, name):
    _prof, _k, p, fd = _open(make_kernel, name)
    count_at = BUF + abi.FILE_DEDUPE_RANGE_OFF_COUNT
    p.poke(count_at, (1).to_bytes(2, "little"))
    assert p.ioctl(fd, abi.FIDEDUPERANGE, BUF) == -abi.EINVAL       # copied, then not a regular file
    p.poke(count_at, (128).to_bytes(2, "little"))                   # 24 + 32 * 128 > PAGE_SIZE
    assert p.ioctl(fd, abi.FIDEDUPERANGE, BUF) == -abi.ENOMEM
    p.poke(count_at, (127).to_bytes(2, "little"))                   # 4088 bytes: fits the two pages
    assert p.ioctl(fd, abi.FIDEDUPERANGE, BUF) == -abi.EINVAL
    # 4088 bytes from 64 B into the last page run past the mapping: memdup_user faults
    p.poke(BUF + PAGE + 64 + abi.FILE_DEDUPE_RANGE_OFF_COUNT, (127).to_bytes(2, "little"))
    assert p.ioctl(fd, abi.FIDEDUPERANGE, BUF + PAGE + 64) == -abi.EFAULT
    assert p.ioctl(fd, abi.FIDEDUPERANGE, 0) == -abi.EFAULT


@pytest.mark.parametrize("name", profiles.NAMES)
def test_fsuuid_and_sysfs_path_follow_the_kernel_version(make_kernel, name):
    prof, k, p, fd = _open(make_kernel, name)
    has_uuid = prof.vfs_command(abi.FS_IOC_GETFSUUID) is not None
    has_path = prof.vfs_command(abi.FS_IOC_GETFSSYSFSPATH) is not None
    unknown = -prof.unknown_cmd_errno
    if has_uuid:
        assert p.ioctl(fd, abi.FS_IOC_GETFSUUID, BUF) == 0
        data = p.peek(BUF, abi.FSUUID2_LEN)
        assert data[0] == 16 and data[1:] == profiles.devtmpfs_uuid(0)
        assert data[7] >> 4 == 4 and data[9] >> 6 == 2   # version 4, RFC 4122 variant
        assert p.ioctl(fd, abi.FS_IOC_GETFSUUID, BUF + PAGE - 8) == -abi.EFAULT
        assert p.peek(BUF + PAGE - 8, 8) == data[:8]     # copy_to_user leaves the prefix
    else:
        assert p.ioctl(fd, abi.FS_IOC_GETFSUUID, BUF) == unknown   # the driver's answer
    assert p.ioctl(fd, abi.FS_IOC_GETFSSYSFSPATH, BUF) == (-abi.ENOTTY if has_path else unknown)


def test_the_uuid_is_the_seeds(backend, make_module):
    uuids = []
    for seed in (0, 1):
        k = backend.Kernel(make_module(), "v6.16", seed=seed)
        p = k.process()
        fd = p.open(profiles.get("v6.16").device_path)
        p.mmap(BUF, PAGE, "rw")
        assert p.ioctl(fd, abi.FS_IOC_GETFSUUID, BUF) == 0
        uuids.append(p.peek(BUF + 1, 16))
        p.close(fd)
    assert uuids == [profiles.devtmpfs_uuid(0), profiles.devtmpfs_uuid(1)] and uuids[0] != uuids[1]


@pytest.mark.parametrize("name", profiles.NAMES)
def test_fionread_and_fileattr_commands_reach_the_driver(make_kernel, name):
    """On a character device FIONREAD and the fileattr ioctls fall through to the driver (abi.py)."""
    prof, _k, p, fd = _open(make_kernel, name)
    for cmd in (0x541B, 0x80086601, 0x801C581F):   # FIONREAD, FS_IOC_GETFLAGS, FS_IOC_FSGETXATTR
        assert prof.vfs_command(cmd) is None
        assert p.ioctl(fd, cmd, BUF) == -prof.unknown_cmd_errno


def test_vfs_commands_on_a_closed_fd_are_ebadf(make_kernel):
    _prof, _k, p, fd = _open(make_kernel, "v6.2")
    p.close(fd)
    assert p.ioctl(fd, abi.FIOCLEX, 0) == -abi.EBADF
