"""The configfs-tsm tree `tdxmodel serve` serves (DIR/tsm over FUSE, /sys/kernel/config/tsm under the
LD_PRELOAD library): an unmodified client (tests/clients/tsm_client.c, go-configfs-tsm's flow in C)
gets quotes that verify in `tdxmodel quote verify` and in dcap-qvl, and the misuse cases of quote.md
§1 give the emulated kernel's errnos, compared with the same calls on a Process of the same
generation (both backends).

Needs root and /dev/fuse (marker `fuse`)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import dcap_qvl
import pytest

from tdxmodel import abi, profiles
from tdxmodel.pytest_plugin import ServedDevice

pytestmark = pytest.mark.fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)
TSM_REPORT = profiles.TSM_REPORT_DIR
BACKENDS = ("core", "reference")
TRANSPORTS = ("fuse", "preload")


@pytest.fixture(scope="session")
def tsm_client(tmp_path_factory):
    out = tmp_path_factory.mktemp("clients") / "tsm_client"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), os.path.join(ROOT, "tests", "clients", "tsm_client.c")],
                   check=True, timeout=120)
    return str(out)


@pytest.fixture(scope="module")
def served():
    devices = {}

    def get(driver, backend):
        if (driver, backend) not in devices:
            devices[driver, backend] = ServedDevice(driver, backend=backend).start()
        return devices[driver, backend]

    yield get
    for d in devices.values():
        d.stop()


def client(device, transport, tsm_client, *args):
    """Run tsm_client against the served tree: at DIR/tsm/report through FUSE, or at the kernel's
    own path through the preload library (nothing exists there on this host)."""
    if transport == "fuse":
        report_dir, env = str(device.mount / "tsm" / "report"), ENV
    else:
        assert not os.path.exists(TSM_REPORT)
        report_dir, env = TSM_REPORT, device.preload_env(ENV)
    r = subprocess.run([tsm_client, args[0], report_dir, *args[1:]], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def verify_both(path, state):
    """`tdxmodel quote verify` and dcap-qvl on the quote file, with the served platform's collateral."""
    from tdxmodel.host.collateral import Platform
    from tdxmodel.state import StateStore
    r = subprocess.run([sys.executable, "-m", "tdxmodel", "quote", "verify", str(path), "--state", str(state)],
                       capture_output=True, text=True, env=ENV, timeout=60)
    platform = Platform(StateStore(str(state)))
    coll = dcap_qvl.QuoteCollateralV3.from_json(platform.collateral().to_dcap_qvl_json())
    qvl = dcap_qvl.verify_with_root_ca(path.read_bytes(), coll, platform.pki().root_der(), int(time.time()))
    return r, qvl.status


# ------------------------------------------------------------------------------------------------
# What the emulated kernel answers for the same calls (the errnos the served tree must give)
# ------------------------------------------------------------------------------------------------
UBUF = 0x100000


def kernel_misuse(backend_name, driver):
    """The misuse sequence of tsm_client on a Process of the emulated kernel (no transport)."""
    from tdxmodel import _backend
    from tdxmodel.config import ModuleConfig
    from tdxmodel.host_faults import TestQuoteProducer
    b = _backend.load(backend_name)
    m = b.Module(ModuleConfig(), memory_pages=160)
    host = b.Host(m, producer=TestQuoteProducer())
    k = b.Kernel(m, driver)
    p = k.process()
    p.mmap(UBUF, 16 * abi.TDX_PAGE_SIZE, "rw")
    item = TSM_REPORT + "/e"
    assert p.mkdir(item) == 0

    def read_all(path):
        fd = p.open(path, os.O_RDONLY)
        if fd < 0:
            return fd
        n = p.read(fd, UBUF, 4096)
        p.close(fd)
        return n

    def gen():
        fd = p.open(item + "/generation", os.O_RDONLY)
        n = p.read(fd, UBUF, 64)
        p.close(fd)
        return int(p.peek(UBUF, n))

    def write(count):
        fd = p.open(item + "/inblob", os.O_WRONLY)
        r = p.write(fd, UBUF, count)
        p.close(fd)
        return r

    def open_err(name, flags):
        fd = p.open(f"{item}/{name}", flags)
        if fd >= 0:
            p.close(fd)
        return -fd if fd < 0 else 0

    out = {"outblob_before_inblob": -read_all(item + "/outblob")}
    out["oversize"] = -write(65)
    out["generation_after_oversize"] = gen()
    out["zero_length"] = write(0)
    out["generation_after_zero"] = gen()
    out["rdwr_inblob"] = open_err("inblob", os.O_RDWR)
    out["rdwr_outblob"] = open_err("outblob", os.O_RDWR)
    out["rdonly_inblob"] = open_err("inblob", os.O_RDONLY)
    out["wronly_generation"] = open_err("generation", os.O_WRONLY)
    out["mkdir_again"] = -p.mkdir(item)
    out["mkdir_below_item"] = -p.mkdir(item + "/sub")
    out["rmdir_attribute"] = -p.rmdir(item + "/outblob")
    out["rmdir"] = p.rmdir(item)
    host.close()
    return out


# ------------------------------------------------------------------------------------------------
# The Go-style flow
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_go_style_flow_gets_a_quote_real_verifiers_accept(served, tsm_client, tmp_path, backend, transport):
    device = served("v6.16", backend)
    quote = tmp_path / "quote.bin"
    nonce = os.urandom(64)
    rc, out = client(device, transport, tsm_client, "flow", str(quote), nonce.hex())
    assert rc == 0, out
    assert out["write"] == 0 and out["close"] == 0
    g0 = out["generations"][0]
    assert out["generations"] == [g0, g0 + 1, g0 + 1] and out["generation_ok"]
    assert out["provider"] == "tdx_guest"
    assert out["outblob"] == quote.stat().st_size > 1020   # libtdx_attest's QUOTE_MIN_SIZE (quote.md §2.7)
    assert out["unlink_errno"] == errno.EISDIR and out["rmdir"] == 0 and out["gone"]   # os.RemoveAll
    from tdxmodel.quote import parse_quote
    assert parse_quote(quote.read_bytes()).fields["reportdata"] == nonce
    r, qvl_status = verify_both(quote, device.state)
    assert r.returncode == 0 and r.stdout.strip() == "UpToDate", r.stderr
    assert qvl_status == "UpToDate"
    assert os.listdir(device.mount / "tsm" / "report") == []  # the temporary item went away


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_misuse_cases_give_the_kernels_errnos(served, tsm_client, backend, transport):
    device = served("v6.16", backend)
    rc, out = client(device, transport, tsm_client, "misuse")
    assert rc == 0, out
    want = kernel_misuse(backend, "v6.16")
    assert want["outblob_before_inblob"] == errno.EINVAL         # R1: no inblob yet (quote.md §1.5)
    assert want["oversize"] == errno.EFBIG                        # §1.4 step 1
    assert want["zero_length"] == -errno.EFAULT                   # §1.4 step 2
    assert want["rdwr_inblob"] == want["rdwr_outblob"] == errno.EACCES   # no TDX attribute reads and writes
    if transport == "fuse":
        # A zero-length write(2) never reaches a FUSE daemon: the kernel's FUSE module answers it
        # with 0 (fs/fuse/file.c, generic_write_checks), so nothing is marked and nothing commits.
        assert out.pop("zero_length") == 0
        assert out.pop("generation_after_zero") == out["generation_after_oversize"]
        want.pop("zero_length"), want.pop("generation_after_zero")
    assert out.pop("unlink_errno") == errno.EISDIR   # the VFS: unlink of a directory
    assert {k: out[k] for k in want} == want


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_empty_outblob_under_a_host_fault_reads_as_eof(served, tsm_client, transport):
    """A host that answers GetQuote with an ERROR status: up to 7.0 the provider returns success with
    an empty outblob, which configfs reads as EOF (quote.md §1.5), twice (an empty blob is cached);
    from 7.1 the read fails with -EIO, uncached (§1.7)."""
    cases = [next(p.name for p in profiles.PROFILES if p.quote and not p.quote.status_check),
             next(p.name for p in profiles.PROFILES if p.quote and p.quote.status_check)]
    for driver in cases:  # status unchecked (6.7-7.0), a non-SUCCESS status is -EIO (7.1)
        device = served(driver, "core")
        (device.mount / "debug" / "host_fault").write_text("error\n")
        rc, out = client(device, transport, tsm_client, "empty")
        assert rc == 0 and out["write"] == 0 and out["rmdir"] == 0, out
        if not profiles.get(driver).quote.status_check:
            assert out["outblob"] == out["outblob_again"] == 0
        else:  # the error is not cached: the second read asks the host again, which has no fault left
            assert out["outblob"] == -errno.EIO and out["outblob_again"] > 1020
        # the fault was used up: the next quote is a quote again
        rc, out = client(device, transport, tsm_client, "empty")
        assert out["outblob"] > 1020, out


# ------------------------------------------------------------------------------------------------
# --bind-tsm
# ------------------------------------------------------------------------------------------------
def mountinfo():
    with open("/proc/self/mountinfo") as f:
        return f.read()


def test_bind_tsm_makes_a_missing_path_in_an_overlay_and_undoes_it(tmp_path, tsm_client):
    base = tmp_path / "host"
    base.mkdir()
    (base / "keep").write_text("host file")
    target = base / "kernel" / "config" / "tsm"
    before = mountinfo()
    d = ServedDevice("v6.16", extra_args=("--bind-tsm", str(target))).start()
    try:
        assert os.listdir(target) == ["report"]
        r = subprocess.run([tsm_client, "flow", str(target / "report"), str(tmp_path / "q"), "00"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and json.loads(r.stdout)["outblob"] > 1020, r.stdout + r.stderr
        assert (base / "keep").read_text() == "host file"
    finally:
        rc = d.stop()
    assert rc == 0
    assert sorted(os.listdir(base)) == ["keep"]   # nothing was made in the real directory
    assert mountinfo().count(str(tmp_path)) == before.count(str(tmp_path)) == 0


def test_bind_tsm_default_path_in_a_private_namespace(tmp_path, tsm_client):
    """--bind-tsm alone: /sys/kernel/config/tsm (no configfs on this host: an overlay makes the path),
    in an `unshare -m` namespace; after SIGTERM the path is gone again."""
    script = f"""
set -e
mount --make-rprivate /
{sys.executable} -m tdxmodel serve --driver v6.16 --mount {tmp_path}/mnt --state {tmp_path}/st --bind-tsm > {tmp_path}/out &
pid=$!
for i in $(seq 100); do grep -q ready {tmp_path}/out 2>/dev/null && break; sleep 0.1; done
{tsm_client} flow {TSM_REPORT} {tmp_path}/q 00
kill -TERM $pid; wait $pid
ls {TSM_REPORT} 2>/dev/null && exit 9 || true
"""
    had = os.path.exists("/sys/kernel/config/tsm")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout.splitlines()[0])["generation_ok"]
    assert os.path.exists("/sys/kernel/config/tsm") == had


def test_bind_tsm_refuses_an_ioctl_only_generation(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tdxmodel", "serve", "--driver", "v6.2", "--mount",
                        str(tmp_path / "m"), "--bind-tsm"], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no configfs-tsm" in r.stderr


# ------------------------------------------------------------------------------------------------
# A Python client (stat, listdir, access, seek, the measurement files) through both transports
# ------------------------------------------------------------------------------------------------
PY_CLIENT = r"""
import json, os, stat, sys
tsm, meas = sys.argv[1], sys.argv[2]
R = tsm + "/report"
def err(f):
    try:
        f()
        return 0
    except OSError as e:
        return e.errno
out = {"tsm": os.listdir(tsm)}
os.mkdir(R + "/py")
out["attrs"] = sorted(os.listdir(R + "/py"))
out["modes"] = {n: oct(stat.S_IMODE(os.stat(f"{R}/py/{n}").st_mode)) for n in out["attrs"]}
out["sizes"] = {n: os.stat(f"{R}/py/{n}").st_size for n in out["attrs"]}
out["isdir"] = [os.path.isdir(R + "/py"), os.path.isdir(R + "/py/inblob")]
out["access"] = [os.access(R + "/py/outblob", os.R_OK), os.access(R + "/py/outblob", os.X_OK),
                 os.access(R + "/nope", os.F_OK)]
out["unlink"] = err(lambda: os.unlink(R + "/py/inblob"))
out["missing"] = err(lambda: os.stat(R + "/nope"))
out["create"] = err(lambda: open(R + "/py/newfile", "w"))
out["rmdir_report"] = err(lambda: os.rmdir(R))
fd = os.open(R + "/py/inblob", os.O_WRONLY)
os.write(fd, b"z" * 64)
os.close(fd)
out["generation"] = open(R + "/py/generation").read()
with open(R + "/py/outblob", "rb") as f:
    head = f.read(10)
    f.seek(0)
    whole = f.read()
    out["fstat_size"] = os.fstat(f.fileno()).st_size
out["seek"] = whole[:10] == head and len(whole) > 1020
before = open(meas + "/rtmr3:sha384", "rb").read()
fd = os.open(meas + "/rtmr3:sha384", os.O_WRONLY)
out["extend"] = os.write(fd, b"\x01" * 48)
os.close(fd)
out["rtmr3_changed"] = open(meas + "/rtmr3:sha384", "rb").read() != before
out["readonly_measurement"] = err(lambda: os.open(meas + "/mrtd:sha384", os.O_WRONLY))
os.rmdir(R + "/py")
out["gone"] = not os.path.exists(R + "/py")
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_python_client_sees_the_same_tree_through_fuse_and_preload(served, backend):
    device = served("v6.16", backend)
    seen = {}
    for transport in TRANSPORTS:
        if transport == "fuse":
            args, env = [str(device.mount / "tsm"), str(device.mount / "measurements")], ENV
        else:
            args, env = ["/sys/kernel/config/tsm", "/sys/class/misc/tdx_guest/measurements"], device.preload_env(ENV)
        r = subprocess.run([sys.executable, "-c", PY_CLIENT, *args], capture_output=True, text=True, env=env,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        seen[transport] = json.loads(r.stdout)
    assert seen["fuse"] == seen["preload"]
    out = seen["fuse"]
    assert out["tsm"] == ["report"] and out["attrs"] == sorted(profiles.TSM_ATTRS)
    assert out["modes"] == {"generation": "0o444", "inblob": "0o200", "outblob": "0o444", "provider": "0o444"}
    assert out["sizes"] == {"generation": abi.TSM_TEXT_ATTR_SIZE, "provider": abi.TSM_TEXT_ATTR_SIZE,
                            "inblob": abi.TSM_BIN_ATTR_SIZE, "outblob": abi.TSM_BIN_ATTR_SIZE}
    assert out["isdir"] == [True, False] and out["access"] == [True, False, False]
    assert (out["unlink"], out["missing"], out["create"], out["rmdir_report"]) == \
        (errno.EPERM, errno.ENOENT, errno.EACCES, errno.EPERM)
    assert out["generation"] == "1\n" and out["seek"] and out["fstat_size"] == abi.TSM_BIN_ATTR_SIZE
    assert out["extend"] == abi.MEASUREMENT_LEN and out["rtmr3_changed"]
    assert out["readonly_measurement"] == errno.EACCES and out["gone"]


def test_hello_names_the_forwarded_paths(served):
    from tdxmodel.transport import protocol
    info = protocol.hello_info(served("v6.16", "core").socket)
    assert set(info.maps) == {("/sys/kernel/config/tsm", "tsm", False),
                              ("/sys/firmware/acpi/tables/CCEL", "acpi/tables/CCEL", True),
                              ("/sys/firmware/acpi/tables/data/CCEL", "acpi/tables/data/CCEL", True),
                              ("/sys/class/misc/tdx_guest/measurements", "measurements", False),
                              ("/sys/devices/virtual/misc/tdx_guest/measurements", "measurements", False)}
