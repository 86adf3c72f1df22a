"""Intel's libtdx_attest, built unmodified from ../shared/clients/libtdx_attest (never copied here),
with Intel's own sample program and our small client (tests/clients/tdx_attest_client.c), against
the intel-downstream generation through FUSE (`tdxmodel run`) and through the LD_PRELOAD library
(`tdxmodel run --preload`).

The report (TDX_CMD_GET_REPORT0), the extends (TDX_CMD_EXTEND_RTMR; RTMR 2 and 3 only, the driver
answering -EINVAL for 0 and 1), and quotes the way the library finds them (quote.md §2.7): over vsock
to the QGS when /etc/tdx-attest.conf names a port (the preload library maps the connect onto the
daemon's QGS socket, `run --preload --vsock-port N`), and with no port configured through the legacy
TDX_CMD_GET_QUOTE, through FUSE and through preload (the daemon's host answers the library's QGS
frame framed, quote.md §2.6-§2.7). Every quote verifies in `tdxmodel quote verify`
and in dcap-qvl, and carries the REPORTDATA and RTMRs of the TD that asked.

On the upstream configfs-tsm generations (v6.16, v7.1) the library's first choice after vsock is
configfs (quote.md §2.7): the item DCAP_TDX_QUOTE_CONFIGFS_PATH names, else its own
`report/com.intel.dcap`, which it makes; through FUSE (`tdxmodel run` binds the tree at
/sys/kernel/config/tsm) and through preload. Upstream never had TDX_CMD_EXTEND_RTMR (the driver
answers -ENOTTY), so there every tdx_att_extend of RTMR 0-3 is TDX_ATTEST_ERROR_EXTEND_FAILURE and
changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import dcap_qvl
import pytest

from tdxmodel import abi
from tdxmodel import quote as Q
from tdxmodel.host.collateral import Platform
from tdxmodel.report import TdReport, verify
from tdxmodel.state import StateStore

pytestmark = pytest.mark.fuse

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = pathlib.Path(__file__).resolve().parents[2] / "shared" / "clients" / "libtdx_attest" / \
    "QuoteGeneration" / "quote_wrapper"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
# tdx_attest.h return codes (quote.md §2.7)
SUCCESS, INVALID_PARAMETER, EXTEND_FAILURE, QUOTE_FAILURE, INVALID_RTMR_INDEX = 0, 2, 6, 8, 0x0B


@pytest.fixture(scope="session")
def libtdx_attest(tmp_path_factory):
    """Build the library as its Makefiles do, without the SGX SDK (shared/clients/README.md):
    libqgs_msg.a from qgs_msg_lib.cpp, libtdx_attest.so.1 linked with it and -lstdc++, Intel's
    test_tdx_attest and our client against it."""
    if not SRC.is_dir():
        pytest.fail(f"libtdx_attest sources missing at {SRC} (shared/clients/README.md)")
    out = tmp_path_factory.mktemp("libtdx_attest")

    def sh(*cmd):
        r = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(map(str, cmd))}: {r.stderr}"

    qgs, att = SRC / "qgs_msg_lib", SRC / "tdx_attest"
    sh("g++", "-std=c++14", "-O2", "-fPIC", "-c", qgs / "qgs_msg_lib.cpp", "-I", qgs / "inc", "-o", "qgs_msg_lib.o")
    sh("ar", "rcs", "libqgs_msg.a", "qgs_msg_lib.o")
    sh("gcc", "-O2", "-fPIC", "-c", att / "tdx_attest.c", "-I", att / "linux", "-I", qgs / "inc", "-o", "tdx_attest.o")
    sh("gcc", "-shared", "-o", "libtdx_attest.so.1", "-Wl,-soname=libtdx_attest.so.1",
       f"-Wl,--version-script={att / 'linux' / 'tdx_attest.lds'}", "tdx_attest.o", "libqgs_msg.a", "-lstdc++")
    os.symlink("libtdx_attest.so.1", out / "libtdx_attest.so")
    for name, src in (("test_tdx_attest", att / "test_tdx_attest.c"),
                      ("tdx_attest_client", ROOT / "tests" / "clients" / "tdx_attest_client.c")):
        sh("gcc", "-O2", src, "-I", att, f"-L{out}", "-ltdx_attest", f"-Wl,-rpath,{out}", "-o", name)
    return out


def run(args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "tdxmodel", "run", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


def chain(value, *data):
    for d in data:
        value = hashlib.sha384(value + d).digest()
    return value


@pytest.mark.parametrize("preload", [False, True], ids=["fuse", "preload"])
def test_our_client_reports_and_extends_rtmr_2_and_3(libtdx_attest, tmp_path, backend, preload):
    state = str(tmp_path / "st")
    args = ["--driver", "intel-downstream", "--backend", backend.BACKEND_NAME, "--state", state]
    if preload:
        args.append("--preload")
    r = run(args + ["--", str(libtdx_attest / "tdx_attest_client"), "r1.bin", "r2.bin"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    codes = json.loads(r.stdout)
    assert codes == {"report1": SUCCESS, "extend2": SUCCESS, "extend3": SUCCESS,
                     "extend1": INVALID_RTMR_INDEX, "extend0": INVALID_RTMR_INDEX,
                     "extend4": INVALID_PARAMETER, "report2": SUCCESS}
    r1, r2 = (tmp_path / "r1.bin").read_bytes(), (tmp_path / "r2.bin").read_bytes()
    store = StateStore(state, backend=backend)
    for raw in (r1, r2):
        assert verify(raw, store.module())[0]  # genuine on this platform
    a, b = TdReport.from_bytes(r1), TdReport.from_bytes(r2)
    assert a.reportdata.startswith(b"tdxmodel libtdx_attest client")
    assert b.rtmr[2] == chain(a.rtmr[2], b"\x02" * 48) and b.rtmr[3] == chain(a.rtmr[3], b"\x03" * 48)
    assert (b.rtmr[0], b.rtmr[1]) == (a.rtmr[0], a.rtmr[1])  # the refused extends changed nothing


def verifies_everywhere(state, raw, tmp_path, backend):
    """The quote verifies in `tdxmodel quote verify` (exit 0, UpToDate) and in dcap-qvl against the
    platform's collateral and root."""
    import time
    path = tmp_path / "verify-me.bin"
    path.write_bytes(raw)
    r = subprocess.run([sys.executable, "-m", "tdxmodel", "quote", "verify", str(path), "--state", state],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "UpToDate", r.stderr
    platform = Platform(StateStore(state, backend=backend))
    coll = dcap_qvl.QuoteCollateralV3.from_json(platform.collateral().to_dcap_qvl_json())
    assert dcap_qvl.verify_with_root_ca(raw, coll, platform.pki().root_der(), int(time.time())).status == "UpToDate"
    return Q.parse_quote(raw)


#: How the library reaches a quote, and the run arguments that make it take that path (quote.md §2.7).
QUOTE_PATHS = {
    "vsock-preload": ["--driver", "intel-downstream", "--preload", "--vsock-port", "4050"],
    "ioctl-fuse": ["--driver", "intel-downstream"],
    "ioctl-preload": ["--driver", "intel-downstream", "--preload"],
    # configfs-tsm at the library's default item (it makes report/com.intel.dcap)
    "configfs-fuse": ["--driver", "v7.1"],
    "configfs-preload": ["--driver", "v7.1", "--preload"],
    # configfs-tsm at the item DCAP_TDX_QUOTE_CONFIGFS_PATH names (made before the program runs)
    "configfs-env-fuse": ["--driver", "v6.16"],
    "configfs-env-preload": ["--driver", "v6.16", "--preload"],
}
TSM_REPORT = "/sys/kernel/config/tsm/report"
ENV_ITEM = "attest-item"


def command(path, program):
    """The command `run` starts: the program itself, or for a configfs path the program inside a
    shell that (for an env path) makes the named item first, and after the program writes each
    report item's name and generation to items.txt, so the test sees which item the quote used."""
    if not path.startswith("configfs"):
        return program
    pre = f'mkdir {TSM_REPORT}/{ENV_ITEM} && export DCAP_TDX_QUOTE_CONFIGFS_PATH={TSM_REPORT}/{ENV_ITEM} && ' \
        if "-env-" in path else ""
    return ["sh", "-c", pre + '"$@"; rc=$?; for d in ' + TSM_REPORT + '/*; do '
            'echo "${d##*/} $(cat "$d/generation")"; done > items.txt; exit $rc', "sh", *program]


def check_items(path, tmp_path, quotes):
    """A configfs path's quotes went through the item the library should have used, one generation
    each (quote.md §1: one write of inblob, one generation)."""
    if path.startswith("configfs"):
        item = ENV_ITEM if "-env-" in path else "com.intel.dcap"
        assert (tmp_path / "items.txt").read_text().split() == [item, str(quotes)]


def upstream(path):
    return path.startswith("configfs")


@pytest.mark.parametrize("path", list(QUOTE_PATHS))
def test_intels_sample_gets_its_quote_and_extends(libtdx_attest, tmp_path, backend, path):
    """Intel's test_tdx_attest, start to end: report.dat is a genuine TDREPORT of the emulated
    platform, quote.dat a quote of that TD that verifies, then RTMR 2 and 3 are extended (the values
    they reach are checked with our client, whose second report shows them); on the upstream
    generations the extends fail as the library reports them there."""
    state = str(tmp_path / "st")
    r = run(QUOTE_PATHS[path] + ["--backend", backend.BACKEND_NAME, "--state", state, "--",
                                 *command(path, [str(libtdx_attest / "test_tdx_attest")])], cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "Successfully get the TD Quote" in r.stdout
    for i in (2, 3):
        assert (f"Failed to extend rtmr[{i}]" if upstream(path) else f"Successfully extended rtmr[{i}]") in r.stderr
    check_items(path, tmp_path, 1)
    report = (tmp_path / "report.dat").read_bytes()
    store = StateStore(state, backend=backend)
    assert len(report) == abi.TDX_REPORT_LEN and verify(report, store.module())[0]
    q = verifies_everywhere(state, (tmp_path / "quote.dat").read_bytes(), tmp_path, backend)
    rep = TdReport.from_bytes(report)
    assert q.reportdata == rep.reportdata
    assert [q.fields[f"rtmr{i}"] for i in range(4)] == list(rep.rtmr)  # the TD before the extends


@pytest.mark.parametrize("path", list(QUOTE_PATHS))
def test_our_client_quotes_after_its_extends(libtdx_attest, tmp_path, backend, path):
    state = str(tmp_path / "st")
    program = [str(libtdx_attest / "tdx_attest_client"), "r1.bin", "r2.bin", "q.bin"]
    r = run(QUOTE_PATHS[path] + ["--backend", backend.BACKEND_NAME, "--state", state, "--",
                                 *command(path, program)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    codes = json.loads(r.stdout)
    assert codes["quote"] == SUCCESS
    r1 = TdReport.from_bytes((tmp_path / "r1.bin").read_bytes())
    r2 = TdReport.from_bytes((tmp_path / "r2.bin").read_bytes())
    if upstream(path):
        # no TDX_CMD_EXTEND_RTMR upstream: -ENOTTY, which the library reports as EXTEND_FAILURE
        # (only -EINVAL becomes INVALID_RTMR_INDEX); index 4 it refuses before the device
        assert codes == {"report1": SUCCESS, "extend2": EXTEND_FAILURE, "extend3": EXTEND_FAILURE,
                         "extend1": EXTEND_FAILURE, "extend0": EXTEND_FAILURE,
                         "extend4": INVALID_PARAMETER, "report2": SUCCESS, "quote": SUCCESS}
        assert r2.rtmr == r1.rtmr
    else:
        assert codes["extend2"] == codes["extend3"] == SUCCESS
        assert r2.rtmr[2] == chain(r1.rtmr[2], b"\x02" * 48) and r2.rtmr[3] == chain(r1.rtmr[3], b"\x03" * 48)
    check_items(path, tmp_path, 1)
    q = verifies_everywhere(state, (tmp_path / "q.bin").read_bytes(), tmp_path, backend)
    assert q.reportdata == r2.reportdata and [q.fields[f"rtmr{i}"] for i in range(4)] == list(r2.rtmr)


@pytest.mark.parametrize("driver", ["v6.16", "v7.1"])
def test_upstream_answers_librarys_extend_ioctl_enotty(make_kernel, driver):
    """The exact command libtdx_attest sends for tdx_att_extend (_IOR('T', 3, 49 bytes)) is an
    unknown ioctl upstream: -ENOTTY, and the RTMRs stay as they were."""
    k = make_kernel(driver)
    p = k.process()
    p.mmap(0x10000, 4096, "rw")
    req = b"\x02" * 48 + bytes([2])
    p.poke(0x10000, req)
    fd = p.open("/dev/tdx_guest")
    before = [bytes(k.module.rtmr(i)) for i in range(4)]
    assert p.ioctl(fd, abi.TDX_CMD_EXTEND_RTMR, 0x10000) == -abi.ENOTTY
    assert [bytes(k.module.rtmr(i)) for i in range(4)] == before
    assert p.peek(0x10000, len(req)) == req
    assert p.close(fd) == 0
