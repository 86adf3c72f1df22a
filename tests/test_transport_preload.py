"""The LD_PRELOAD library reaches the daemon's socket at the real node path.

The machine has no /dev/tdx_guest: every open of it below is intercepted, or fails with ENOENT.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys

import pytest

from tdxmodel import abi, profiles
from tdxmodel.cli.serve import PRELOAD_LIBRARY
from tdxmodel.pytest_plugin import ServedDevice

pytestmark = pytest.mark.fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_client(tmp_path_factory, name):
    out = tmp_path_factory.mktemp("clients") / name
    subprocess.run(["cc", "-O2", "-Wall", "-I", os.path.join(ROOT, "csrc"), "-o", str(out),
                    os.path.join(ROOT, "tests", "clients", f"{name}.c")], check=True, timeout=120)
    return str(out)


@pytest.fixture(scope="module")
def selftest_client(tmp_path_factory):
    return compile_client(tmp_path_factory, "selftest")


@pytest.fixture(scope="module")
def served():
    devices = {}

    def get(driver, backend="core"):
        if (driver, backend) not in devices:
            devices[driver, backend] = ServedDevice(driver, backend=backend).start()
        return devices[driver, backend]

    yield get
    for d in devices.values():
        d.stop()


def test_preload_path_prints_the_built_library():
    r = subprocess.run([sys.executable, "-m", "tdxmodel", "preload-path"], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0
    path = r.stdout.strip()
    assert os.path.isabs(path) and os.path.isfile(path) and path.endswith("libtdxmodel_preload.so")


@pytest.mark.parametrize("backend", ["core", "reference"])
@pytest.mark.parametrize("driver", abi.DRIVERS)
def test_c_selftest_through_preload(served, selftest_client, driver, backend):
    d = served(driver, backend)
    layout = profiles.get(driver).report.client_layout
    r = subprocess.run([selftest_client, d.device_node, layout], capture_output=True, text=True,
                       timeout=30, env=d.preload_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_unknown_command_through_preload(served, selftest_client):
    d = served("v6.2")
    r = subprocess.run([selftest_client, d.device_node, "v6", "c0a00401"], capture_output=True,
                       text=True, timeout=30, env=d.preload_env())
    assert r.stdout.split() == ["-1", str(errno.ENOTTY)]


def test_every_open_entry_point_is_interposed(served, tmp_path_factory):
    client = compile_client(tmp_path_factory, "open_variants")
    d = served("v6.2")
    r = subprocess.run([client, d.device_node], capture_output=True, text=True, timeout=30,
                       env=d.preload_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line.split()[1] for line in r.stdout.splitlines()] == ["ok"] * 11


PY_CLIENT = r"""
import ctypes, fcntl, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)   # the global scope: the preloaded ioctl comes first
path, cmd, size, tdr, rd = sys.argv[1], *map(int, sys.argv[2:])
page = mmap.PAGESIZE
fd = os.open(path, os.O_RDWR | os.O_SYNC)
assert fd > 0
req = bytearray(size); req[:64] = bytes(range(64))
fcntl.ioctl(fd, cmd, req)
print(req[tdr + rd:tdr + rd + 64] == bytes(range(64)), req[:64] == bytes(range(64)))
# a struct with only 512 accessible bytes: the kernel copies 64 in, then faults 448 bytes into the
# TDREPORT copy-out (ref §2.4 rows 3 and 5; §7 partial copy)
m = mmap.mmap(-1, 3 * page)
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
start = base + page - 512
ctypes.memmove(start, bytes(range(64)) + bytes(448), 512)
assert libc.mprotect(ctypes.c_void_p(base + page), 2 * page, 0) == 0
r = libc.ioctl(fd, ctypes.c_ulong(cmd), ctypes.c_void_p(start))
print(r, ctypes.get_errno(), ctypes.string_at(start + tdr, 512 - tdr) == bytes(req[tdr:512]))
print(os.close(fd))
"""


@pytest.mark.parametrize("backend", ["core", "reference"])
def test_python_client_through_preload_with_exact_partial_copy(served, backend):
    d = served("v6.2", backend)
    args = [str(v) for v in (abi.TDX_CMD_GET_REPORT0, abi.TDX_REPORT_REQ_LEN,
                             abi.TDX_REPORT_REQ_OFF_TDREPORT, abi.TDR_OFF_REPORTDATA)]
    r = subprocess.run([sys.executable, "-c", PY_CLIENT, d.device_node, *args],
                       capture_output=True, text=True, timeout=30, env=d.preload_env())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "True True"
    assert lines[1] == f"-1 {errno.EFAULT} True"  # -EFAULT, and the 448-byte prefix was written
    assert lines[2] == "None"
    c = d.counters()["kernel"]
    assert c["outstanding"] == c["resident"]


def test_without_a_daemon_nothing_is_intercepted(selftest_client, tmp_path):
    env = dict(os.environ, TDXMODEL_SOCKET=str(tmp_path / "nothing"),
               LD_PRELOAD=str(PRELOAD_LIBRARY))
    r = subprocess.run([selftest_client, abi.DEVICE_PATHS["v6.2"], "v6"], capture_output=True,
                       text=True, timeout=30, env=env)
    assert r.returncode == 1
    assert f"errno {errno.ENOENT}" in r.stderr  # the real open: this machine has no TDX device


STAT_ENTRY_POINTS = ["stat", "lstat", "fstatat", "fstatat_nofollow", "stat64", "lstat64", "fstatat64",
                     "__xstat", "__lxstat", "__fxstatat", "__xstat64", "__lxstat64", "statx",
                     "fstat", "fstat64", "__fxstat", "fstatat_empty", "statx_empty"]


@pytest.mark.parametrize("driver", ["v6.2", "v4-2022-04"])
def test_every_stat_and_access_entry_point_sees_a_character_device(tmp_path_factory, driver):
    """A client that checks the node before opening it (stat, access, the glibc-internal __xstat
    family, statx, fstat of the fd) sees a character device with the daemon's mode and a misc device
    number, not ENOENT (this machine has no TDX device)."""
    client = compile_client(tmp_path_factory, "stat_variants")
    with ServedDevice(driver, mode=0o660) as d:
        r = subprocess.run([client, d.device_node], capture_output=True, text=True, timeout=30,
                           env=d.preload_env())
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    major, minor = abi.DEVICE_RDEV
    expected = f"mode={stat.S_IFCHR | 0o660:o} rdev={major}:{minor}"
    assert {name: lines.get(name) for name in STAT_ENTRY_POINTS} == {name: expected
                                                                      for name in STAT_ENTRY_POINTS}
    ok = "0 0"
    assert [lines[n] for n in ("access_rw", "faccessat", "faccessat_eaccess", "euidaccess")] == [ok] * 4
    assert lines["access_x"] == f"-1 {errno.EACCES}"  # no x bit: not even root may execute it


PY_STAT = r"""
import os, stat, sys
path = sys.argv[1]
print(os.path.exists(path), stat.S_ISCHR(os.stat(path).st_mode), stat.S_ISCHR(os.lstat(path).st_mode))
st = os.stat(path)
print(oct(stat.S_IMODE(st.st_mode)), os.major(st.st_rdev), os.minor(st.st_rdev), st.st_uid, st.st_size)
print(os.access(path, os.R_OK | os.W_OK), os.access(path, os.X_OK),
      os.access(path, os.R_OK, effective_ids=True))
fd = os.open(path, os.O_RDWR)
print(stat.S_ISCHR(os.fstat(fd).st_mode), os.fstat(fd).st_rdev == st.st_rdev)
os.close(fd)
# other paths pass through
print(os.path.exists("/"), os.path.exists(path + "-not-there"), os.path.isdir(os.path.dirname(path) or "/"))
"""


def test_python_sees_the_node_under_preload(served):
    d = served("v6.2")
    r = subprocess.run([sys.executable, "-c", PY_STAT, d.device_node], capture_output=True, text=True,
                       timeout=30, env=d.preload_env())
    assert r.returncode == 0, r.stderr
    major, minor = abi.DEVICE_RDEV
    assert r.stdout.splitlines() == [
        "True True True",
        f"0o600 {major} {minor} 0 0",
        "True False True",
        "True True",
        "True False True",
    ]


def test_without_a_daemon_stat_passes_through(tmp_path):
    env = dict(os.environ, TDXMODEL_SOCKET=str(tmp_path / "nothing"), LD_PRELOAD=str(PRELOAD_LIBRARY))
    r = subprocess.run([sys.executable, "-c", "import os, sys; print(os.path.exists(sys.argv[1]))",
                        abi.DEVICE_PATHS["v6.2"]], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "False"


PY_VFS = """
import errno, fcntl, os, sys
dev, regular = sys.argv[1], sys.argv[2]
FIOCLEX, FIONCLEX, FIONBIO, FIOASYNC, FIOQSIZE, FIGETBSZ, FICLONE, UUID = map(int, sys.argv[3:11])

def call(fd, cmd, arg):
    try:
        return fcntl.ioctl(fd, cmd, arg)
    except OSError as e:
        return -e.errno

fd = os.open(dev, os.O_RDWR)
other = os.open(dev, os.O_RDWR)
reg = os.open(regular, os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETFD, 0)
print(call(fd, FIOCLEX, 0), fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
print(call(fd, FIONCLEX, 0), fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
one = (1).to_bytes(4, "little")
print(call(fd, FIONBIO, one) == one, fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
print(call(fd, FIOASYNC, bytes(4)) == bytes(4), call(fd, FIOASYNC, one))
print(call(fd, FIOQSIZE, bytes(8)))
print(int.from_bytes(call(fd, FIGETBSZ, bytes(4)), "little"))
print(call(fd, FICLONE, other), call(fd, FICLONE, reg), call(fd, FICLONE, 987))
u = call(fd, UUID, bytes(17))
print(u if isinstance(u, int) else u.hex())
"""


@pytest.mark.parametrize("backend", ["core", "reference"])
@pytest.mark.parametrize("driver", ["v6.2", "v6.16"])
def test_vfs_commands_through_preload(served, backend, driver, tmp_path):
    """FIOCLEX acts on the client's fd, FIONBIO does not make the daemon's socket nonblocking, FICLONE
    names the client's fds, the rest are the daemon's emulated VFS (docs/CONTRACT.md)."""
    d = served(driver, backend)
    regular = tmp_path / "plain"
    regular.write_bytes(b"x")
    args = [str(v) for v in (abi.FIOCLEX, abi.FIONCLEX, abi.FIONBIO, abi.FIOASYNC, abi.FIOQSIZE,
                             abi.FIGETBSZ, abi.FICLONE, abi.FS_IOC_GETFSUUID)]
    r = subprocess.run([sys.executable, "-c", PY_VFS, d.device_node, str(regular), *args],
                       capture_output=True, text=True, timeout=30, env=d.preload_env())
    assert r.returncode == 0, r.stderr
    prof = profiles.get(driver)
    lines = r.stdout.splitlines()
    assert lines[:6] == ["0 1", "0 0", "True 0", f"True {-errno.ENOTTY}", str(-errno.ENOTTY),
                         str(abi.TDX_PAGE_SIZE)]
    assert lines[6] == f"{-errno.EINVAL} {-errno.EXDEV} {-errno.EBADF}"
    if prof.vfs_command(abi.FS_IOC_GETFSUUID):
        assert len(bytes.fromhex(lines[7])) == abi.FSUUID2_LEN and lines[7][:2] == "10"
    else:
        assert lines[7] == str(-errno.ENOTTY)
