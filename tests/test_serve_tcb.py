"""`tdxmodel tcb --level/--status` beside a running `tdxmodel serve`: the daemon follows the state
directory's TCB position as it follows extends (its generation), so the next report carries the new
TEE_TCB_SVN and the next quote the new position's PCK certificate and QE report, without a restart;
through FUSE and through the LD_PRELOAD library, on both backends. A TDREPORT made before the move is
still quoted by the position it was made under (every quote is of one position).

Needs root and /dev/fuse (marker `fuse`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import dcap_qvl
import numpy as np
import pytest

from tdxmodel import abi, profiles
from tdxmodel.pytest_plugin import ServedDevice
from tdxmodel.quote import parse_quote
from tdxmodel.report import verify as verify_report

pytestmark = pytest.mark.fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


@pytest.fixture(scope="session")
def tsm_client(tmp_path_factory):
    out = tmp_path_factory.mktemp("clients") / "tsm_client"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), os.path.join(ROOT, "tests", "clients", "tsm_client.c")],
                   check=True, timeout=120)
    return str(out)


def tdxmodel(*args):
    return subprocess.run([sys.executable, "-m", "tdxmodel", *args], capture_output=True, text=True,
                          env=ENV, timeout=120)


def configfs_quote(device, transport, tsm_client, path):
    """One quote through the served configfs-tsm tree (go-configfs-tsm's flow, quote.md §2.8)."""
    if transport == "fuse":
        report_dir, env = str(device.mount / "tsm" / "report"), ENV
    else:
        report_dir, env = profiles.TSM_REPORT_DIR, device.preload_env(ENV)
    r = subprocess.run([tsm_client, "flow", report_dir, str(path), os.urandom(64).hex()],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return path.read_bytes()


def qgs_quote(device, report):
    """The daemon's quote service asked for a quote of REPORT (the vsock client's way, quote.md §4.2)."""
    from tdxmodel.host import qgs
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(device.qgs_socket)
    s.sendall(qgs.frame(qgs.get_quote_request(report)))
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    return qgs.inflate_get_quote_response(qgs.unframe(reply))[1]


def statuses(device, raw, tmp_path):
    """(tdxmodel quote verify's answer, dcap-qvl's status) for the quote, against the platform's
    collateral as it is now."""
    from tdxmodel.host.collateral import Platform
    from tdxmodel.state import StateStore
    path = tmp_path / "verify-me.bin"
    path.write_bytes(raw)
    r = tdxmodel("quote", "verify", str(path), "--state", str(device.state))
    assert r.returncode == 0, r.stderr
    platform = Platform(StateStore(str(device.state)))
    coll = dcap_qvl.QuoteCollateralV3.from_json(platform.collateral().to_dcap_qvl_json())
    qvl = dcap_qvl.verify_with_root_ca(raw, coll, platform.pki().root_der(), int(time.time()))
    return r.stdout.split()[0], qvl.status


def tee_tcb_svn(report):
    return report[abi.TDR_OFF_TEE_TCB_SVN:abi.TDR_OFF_TEE_TCB_SVN + 16]


@pytest.mark.parametrize("transport", ["fuse", "preload"])
def test_tcb_status_while_serving_reaches_the_next_quote(tsm_client, tmp_path, backend, transport):
    with ServedDevice("v6.16", backend=backend.BACKEND_NAME) as device:
        before = device.report(b"before the move")
        q1 = configfs_quote(device, transport, tsm_client, tmp_path / "q1.bin")
        assert statuses(device, q1, tmp_path) == ("UpToDate", "UpToDate")

        r = tdxmodel("tcb", "--status", "OutOfDate", "--json", "--state", str(device.state))
        assert r.returncode == 0, r.stderr
        pos = json.loads(r.stdout)
        new_svn = bytes.fromhex(pos["levels"][pos["level"]]["tdx_svn"])
        assert pos["status"] == "OutOfDate" and new_svn != tee_tcb_svn(before)

        q2 = configfs_quote(device, transport, tsm_client, tmp_path / "q2.bin")
        assert parse_quote(q2).fields["tee_tcb_svn"] == new_svn
        assert statuses(device, q2, tmp_path) == ("OutOfDate", "OutOfDate")
        # the device's report ioctl and the quote service see the same position
        after = device.report(b"after the move")
        assert tee_tcb_svn(after) == new_svn
        assert statuses(device, qgs_quote(device, after), tmp_path) == ("OutOfDate", "OutOfDate")
        # a report made before the move is quoted by its own position's QE (its PCK, its status)
        q_old = qgs_quote(device, before)
        assert parse_quote(q_old).fields["tee_tcb_svn"] == tee_tcb_svn(before)
        assert statuses(device, q_old, tmp_path) == ("UpToDate", "UpToDate")

        # and back: --level 0 is UpToDate again, without a restart
        assert tdxmodel("tcb", "--level", "0", "--state", str(device.state)).returncode == 0
        q3 = configfs_quote(device, transport, tsm_client, tmp_path / "q3.bin")
        assert statuses(device, q3, tmp_path) == ("UpToDate", "UpToDate")
        assert parse_quote(q3).fields["tee_tcb_svn"] == tee_tcb_svn(before)


@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_module_set_tee_tcb_info_reaches_every_later_report(make_module, version):
    """Module.set_tee_tcb_info (the daemon following `tdxmodel tcb`): every later TDREPORT has the
    new TEE_TCB_INFO and its hash (ref §4.4-§4.5) with a valid MAC; TDINFO and TEE_INFO_HASH stay;
    a wrong length is refused and changes nothing."""
    import hashlib
    m = make_module(version=version)
    r0 = m.report(b"x")
    new = bytearray(m.tee_tcb_info())
    o = abi.TDR_OFF_TEE_TCB_SVN - abi.TDR_OFF_TEE_TCB_INFO
    new[o:o + 16] = bytes(range(1, 17))
    new = bytes(new)
    m.set_tee_tcb_info(new)
    assert m.tee_tcb_info() == new
    for r1 in (m.report(b"x"), bytes(m.report_batch(np.zeros((1, 64), np.uint8))[0][0])):
        assert r1[abi.TDR_OFF_TEE_TCB_INFO:abi.TDR_OFF_TEE_TCB_INFO + abi.TDX_TEE_TCB_INFO_LEN] == new
        assert tee_tcb_svn(r1) == bytes(range(1, 17))
        assert r1[abi.TDR_OFF_TEE_TCB_INFO_HASH:][:48] == hashlib.sha384(new).digest()
        assert r1[abi.TDR_OFF_TEE_INFO_HASH:][:48] == r0[abi.TDR_OFF_TEE_INFO_HASH:][:48]
        assert r1[abi.TDR_OFF_TDINFO:] == r0[abi.TDR_OFF_TDINFO:]
        assert verify_report(r1, m)[0]
    with pytest.raises(ValueError):
        m.set_tee_tcb_info(new[:-1])
    assert m.tee_tcb_info() == new


def test_reports_racing_a_tcb_move_are_never_a_mix(make_module):
    """Reports on other threads while the position moves back and forth: each TDREPORT's
    TEE_TCB_INFO_HASH is the hash of its own TEE_TCB_INFO (never one of each), its MAC verifies, and
    the RTMR lock is balanced after (make_module's teardown)."""
    import hashlib
    import threading
    m = make_module(version="1.5")
    a = m.tee_tcb_info()
    b = bytearray(a)
    b[abi.TDR_OFF_TEE_TCB_SVN - abi.TDR_OFF_TEE_TCB_INFO] ^= 0xFF
    b = bytes(b)
    stop, bad, seen = threading.Event(), [], set()

    def reporter():
        while not stop.is_set():
            try:
                r = m.report(b"race")
            except Exception as e:  # BUSY while the move publishes is the module's answer
                if getattr(e, "status", None) is None:
                    bad.append(repr(e))
                continue
            info = r[abi.TDR_OFF_TEE_TCB_INFO:abi.TDR_OFF_TEE_TCB_INFO + abi.TDX_TEE_TCB_INFO_LEN]
            seen.add(info)
            if r[abi.TDR_OFF_TEE_TCB_INFO_HASH:][:48] != hashlib.sha384(info).digest() or not verify_report(r, m)[0]:
                bad.append("mixed report")

    threads = [threading.Thread(target=reporter) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(300):
        m.set_tee_tcb_info(b if i % 2 == 0 else a)
    stop.set()
    for t in threads:
        t.join()
    assert bad == [] and seen <= {a, b} and seen
