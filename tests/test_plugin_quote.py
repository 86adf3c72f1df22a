"""The quote side of `tdxmodel serve` and of the pytest plugin: `serve --qgs PATH` answers Intel's QGS
protocol on a Unix socket, backed by the state directory's TDQE; `tdx_device.quote()` gets a quote as
libtdx_attest's vsock path does (report through the device file, GET_QUOTE_REQ to the QGS), which
verifies in `tdxmodel quote verify` and in dcap-qvl against `collateral()` and `pccs_url`;
`host_fault` reaches the VMM; and the README's five-line downstream example runs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import dcap_qvl
import pytest

from tdxmodel import quote as Q
from tdxmodel import quote_abi as qa
from tdxmodel.host import qgs
from tdxmodel.pytest_plugin import ServedDevice
from tdxmodel.state import StateStore

pytestmark = pytest.mark.fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


@pytest.fixture(params=["v6.2", "v4-2022-04", "intel-downstream"])
def device(request, backend):
    with ServedDevice(request.param, backend=backend.BACKEND_NAME) as d:
        yield d


def test_quote_verifies_in_our_verifier_dcap_qvl_and_the_cli(device, tmp_path):
    nonce = b"plugin quote"
    raw = device.quote(nonce)
    q = Q.parse_quote(raw)
    assert q.reportdata == nonce.ljust(64, b"\0")
    assert q.fields["rtmr0"] == device.rtmr(0) and q.fields["rtmr3"] == device.rtmr(3)  # this TD
    coll = device.collateral()
    assert Q.verify(raw, coll, x509_root(device.root_ca)).ok
    async def fetch():  # dcap-qvl's own PCCS client, against pccs_url
        return await dcap_qvl.get_collateral(device.pccs_url, raw)

    collateral = asyncio.run(fetch())
    assert dcap_qvl.verify_with_root_ca(raw, collateral, device.root_ca, int(time.time())).status == "UpToDate"
    (tmp_path / "q.bin").write_bytes(raw)
    r = subprocess.run([sys.executable, "-m", "tdxmodel", "quote", "verify", str(tmp_path / "q.bin"),
                        "--state", str(device.state), "--pccs", device.pccs_url],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "UpToDate", r.stderr
    c = device.host_counters()["qgs"]
    assert c["quotes"] == 1 and c["error_responses"] == 0


def x509_root(der):
    from cryptography import x509
    return x509.load_der_x509_certificate(der)


def test_serve_qgs_socket_answers_the_protocol_and_its_errors(device):
    path = device.qgs_socket
    report = device.report(b"over the socket".ljust(64, b"\0"))

    def talk(data):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        s.close()
        return out

    framed = talk(qgs.frame(qgs.get_quote_request(report)))
    quote = qgs.inflate_get_quote_response(qgs.unframe(framed))[1]
    assert talk(report)[:48] == quote[:48]  # raw mode: the raw quote, same header
    bad = bytearray(report)
    bad[230] ^= 1  # the MAC: the TDQE refuses
    assert qgs.unframe(talk(qgs.frame(qgs.get_quote_request(bytes(bad))))) == \
        qgs.error_response(qa.QGS_MSG_ERROR_UNEXPECTED)
    assert talk(bytes(bad)) == b""
    assert talk(b"\xff" * 40) == b""
    assert qgs.unframe(talk(qgs.frame(qgs.get_quote_request(report))))[:16] == framed[4:20]
    assert device.proc.poll() is None  # still serving
    c = device.host_counters()["qgs"]
    assert (c["quotes"], c["raw_quotes"], c["error_responses"], c["closed_unanswered"]) == (2, 1, 1, 2)


def test_host_fault_names_are_checked(device):
    device.host_fault("service_time", seconds=29.5)
    device.host_fault(None)
    for bad in (("nonsense",), ("service_time",)):  # unknown; service_time without seconds
        with pytest.raises(ValueError, match="refused"):
            device.host_fault(*bad)
    with pytest.raises(ValueError, match="refused"):
        device.host_fault("error", colour=3)


def test_serve_refuses_a_qgs_path_that_is_not_a_socket(tmp_path):
    plain = tmp_path / "qgs"
    plain.write_text("mine")
    r = subprocess.run([sys.executable, "-m", "tdxmodel", "serve", "--driver", "v6.2", "--mount",
                        str(tmp_path / "m"), "--state", str(tmp_path / "s"), "--qgs", str(plain)],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("tdxmodel: --qgs") and "not a socket" in r.stderr
    assert plain.read_text() == "mine" and not os.path.ismount(tmp_path / "m")


README_EXAMPLE = '''
import time, dcap_qvl

def test_my_verifier_accepts_an_emulated_quote(tdx_device):
    quote = tdx_device.quote(b"my nonce")                                   # as a TD gets one
    collateral = dcap_qvl.QuoteCollateralV3.from_json(tdx_device.collateral().to_dcap_qvl_json())
    verdict = dcap_qvl.verify_with_root_ca(quote, collateral, tdx_device.root_ca, int(time.time()))
    assert verdict.status == "UpToDate"
'''


def _readme_block():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index("def test_my_verifier_accepts_an_emulated_quote")
    return text[start:text.index("```", start)].strip()


def test_the_readme_quote_example_runs_as_a_downstream_suite(tmp_path):
    assert _readme_block() == README_EXAMPLE.split("\n\n", 1)[1].strip()  # the README shows this test
    (tmp_path / "test_downstream_quote.py").write_text(README_EXAMPLE)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:tdxmodel", "-p", "tdxmodel.pytest_plugin",
                        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                       capture_output=True, text=True, timeout=180, env=ENV, cwd=tmp_path)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr


VSOCK_CLIENT = r'''
import fcntl, json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from tdxmodel import abi
from tdxmodel.host import qgs
req = bytearray(abi.TDX_REPORT_REQ_LEN); req[:5] = b"vsock"
fd = os.open("/dev/tdx_guest", os.O_RDWR)                       # the preload library's device
fcntl.ioctl(fd, abi.TDX_CMD_GET_REPORT0, req); os.close(fd)
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.connect((2, int(sys.argv[2])))                                 # VMADDR_CID_HOST, the QGS port
s.sendall(qgs.frame(qgs.get_quote_request(bytes(req[abi.TDX_REPORT_REQ_OFF_TDREPORT:]))))
reply = b""
while chunk := s.recv(65536): reply += chunk
s.close()
other = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
try:
    other.connect((2, int(sys.argv[2]) + 1))                     # not the QGS: the kernel's answer
    refused = 0
except OSError as e:
    refused = e.errno
print(json.dumps({"quote": qgs.inflate_get_quote_response(qgs.unframe(reply))[1].hex(), "other": refused}))
'''


def test_a_python_vsock_client_under_the_preload_library_reaches_the_qgs(tmp_path, backend):
    with ServedDevice("v6.2", backend=backend.BACKEND_NAME) as d:
        script = tmp_path / "client.py"
        script.write_text(VSOCK_CLIENT)
        r = subprocess.run([sys.executable, str(script), ROOT, "5123"], capture_output=True, text=True,
                           timeout=120, env=d.preload_env(ENV, vsock_port=5123), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        raw = bytes.fromhex(out["quote"])
        assert Q.parse_quote(raw).reportdata.startswith(b"vsock")
        assert Q.verify(raw, d.collateral(), x509_root(d.root_ca)).ok
        assert out["other"] != 0  # another port is not mapped: the kernel refuses it
        assert d.host_counters()["qgs"]["quotes"] == 1
