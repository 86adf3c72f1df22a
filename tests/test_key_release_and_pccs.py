"""The key-release example (examples/key_release.py) against the emulated TD, and the PCCS server over
loopback: its PCS v4 paths and headers, and ``quote verify --pccs URL``."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tdxmodel import quote as Q
from tdxmodel import quote_abi as qa
from tdxmodel.cli import main
from tdxmodel.host.collateral import Platform
from tdxmodel.host.pccs import make_server
from tdxmodel.state import StateStore

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_example():
    spec = importlib.util.spec_from_file_location("key_release", ROOT / "examples" / "key_release.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


kr = _load_example()


@pytest.fixture
def platform(tmp_path, backend):
    return Platform(StateStore(tmp_path / "state", backend=backend))


@pytest.fixture
def td(platform, make_module):
    """quote(reportdata) for the platform's TD, from a make_module model."""
    platform.pki()

    def quote(reportdata):
        module = make_module(**platform.store.load().to_dict())
        return platform.quoting_enclave(module=module).produce(module.report(reportdata))
    return quote


def test_key_released_only_for_a_fresh_nonce_and_an_accepted_status(platform, td):
    key = b"K" * 32
    server = kr.KeyServer(key, platform.pki().root_cert, platform.collateral, mrtd=platform.store.load().mrtd)
    nonce = server.challenge()
    quote = td(nonce)
    assert server.release(quote) == key
    with pytest.raises(kr.Refused, match="nonce"):
        server.release(quote)  # replayed
    with pytest.raises(kr.Refused, match="nonce"):
        server.release(td(b"\x00" * 32))  # a nonce the server never gave
    flipped = bytearray(td(server.challenge()))
    flipped[48 + 200] ^= 1
    with pytest.raises(kr.Refused, match="quote_signature"):
        server.release(bytes(flipped))
    platform.set_tcb(status="OutOfDate")
    with pytest.raises(kr.Refused, match="TCB status OutOfDate"):
        server.release(td(server.challenge()))
    lenient = kr.KeyServer(key, platform.pki().root_cert, platform.collateral, accept=("UpToDate", "OutOfDate"))
    assert lenient.release(td(lenient.challenge())) == key
    strict = kr.KeyServer(key, platform.pki().root_cert, platform.collateral, accept=("OutOfDate",),
                          mrtd=b"\x01" * 48)
    with pytest.raises(kr.Refused, match="MRTD"):
        strict.release(td(strict.challenge()))
    with pytest.raises(kr.Refused, match="not a quote"):
        server.release(b"junk")


def test_key_release_example_runs_against_the_emulated_td(tmp_path, backend):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TDXMODEL_BACKEND=backend.BACKEND_NAME)
    env.pop("TDXMODEL_CONFIG", None)
    state = tmp_path / "td"
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], env=env, capture_output=True, text=True,
                                    timeout=120)
    r = run(ROOT / "examples" / "key_release.py", "--state", state)
    assert r.returncode == 0 and r.stdout.startswith("released: "), r.stderr
    assert run("-m", "tdxmodel", "tcb", "--status", "SWHardeningNeeded", "--state", state).returncode == 0
    r = run(ROOT / "examples" / "key_release.py", "--state", state)
    assert r.returncode == 1 and "refused: TCB status SWHardeningNeeded" in r.stdout


# ------------------------------------------------------------------ PCCS over loopback
@pytest.fixture
def pccs(platform):
    platform.collateral()
    server = make_server(platform, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_pccs_answers_the_pcs_v4_paths_with_issuer_chains(pccs, platform):
    c, fmspc = platform.collateral(), platform.meta()["fmspc"]
    status, body, h = _get(f"{pccs}{qa.PCS_TDX_TCB_PATH}?fmspc={fmspc}")
    assert status == 200 and json.loads(body)["tcbInfo"]["id"] == "TDX"
    assert urllib.parse.unquote(h["TCB-Info-Issuer-Chain"]) == c.tcb_info_issuer_chain
    status, body, h = _get(f"{pccs}{qa.PCS_TDX_QE_IDENTITY_PATH}")
    assert status == 200 and json.loads(body)["enclaveIdentity"]["id"] == "TD_QE"
    assert "BEGIN CERTIFICATE" in urllib.parse.unquote(h["SGX-Enclave-Identity-Issuer-Chain"])
    status, body, h = _get(f"{pccs}{qa.PCS_PCK_CRL_PATH}?ca=platform&encoding=der")
    assert status == 200 and body == c.pck_crl
    assert urllib.parse.unquote(h["SGX-PCK-CRL-Issuer-Chain"]) == c.pck_crl_issuer_chain
    status, body, _ = _get(f"{pccs}{qa.PCS_PCK_CRL_PATH}?ca=platform")
    assert status == 200 and body.startswith(b"-----BEGIN X509 CRL-----")
    assert _get(f"{pccs}{qa.PCS_ROOT_CA_CRL_PATH}")[1] == c.root_ca_crl.hex().encode()
    assert _get(f"{pccs}/tdxmodel/IntelSGXRootCA.der")[1] == c.root_ca_crl
    assert _get(f"{pccs}{qa.PCS_TDX_TCB_PATH}?fmspc=000000000000")[0] == 404
    assert _get(f"{pccs}{qa.PCS_PCK_CRL_PATH}?ca=processor")[0] == 404
    assert _get(f"{pccs}/nothing")[0] == 404


def test_collateral_fetched_from_pccs_verifies(pccs, platform, td, tmp_path, monkeypatch, capsys):
    raw = td(b"n")
    fetched = Q.fetch_collateral(pccs, raw)
    assert fetched.tcb_info == platform.collateral().tcb_info
    assert Q.verify(raw, fetched, platform.pki().root_cert).status == "UpToDate"
    (tmp_path / "q.bin").write_bytes(raw)
    monkeypatch.setenv("TDXMODEL_STATE", str(platform.store.directory))
    assert main(["quote", "verify", str(tmp_path / "q.bin"), "--pccs", pccs, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "UpToDate"
    platform.set_tcb(revoked=True)  # the server hands out the re-issued CRL
    assert main(["quote", "verify", str(tmp_path / "q.bin"), "--pccs", pccs]) == 1
    assert ": pck_chain: " in capsys.readouterr().err


def test_verify_with_an_unreachable_pccs_is_bad_input(platform, td, tmp_path, monkeypatch, capsys):
    (tmp_path / "q.bin").write_bytes(td(b""))
    monkeypatch.setenv("TDXMODEL_STATE", str(platform.store.directory))
    assert main(["quote", "verify", str(tmp_path / "q.bin"), "--pccs", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.startswith("tdxmodel: collateral: ")


def test_pccs_command_serves_until_sigterm(tmp_path, backend):
    import signal
    env = dict(os.environ, PYTHONPATH=str(ROOT), TDXMODEL_BACKEND=backend.BACKEND_NAME)
    env.pop("TDXMODEL_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "tdxmodel", "pccs", "--listen", "127.0.0.1:0", "--state",
                             str(tmp_path / "s")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("tdxmodel pccs: serving http://127.0.0.1:"), line
        url = line.split()[-1]
        status, body, _ = _get(f"{url}{qa.PCS_TDX_QE_IDENTITY_PATH}")
        assert status == 200 and b"TD_QE" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        proc.stderr.close()
    r = subprocess.run([sys.executable, "-m", "tdxmodel", "pccs", "--listen", "nohost"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("tdxmodel: --listen")


def test_dcap_qvl_fetches_from_our_pccs_and_verifies(pccs, platform, td):
    """dcap-qvl's own collateral client (get_collateral) against the server, over loopback."""
    import asyncio
    import time

    import dcap_qvl

    raw = td(b"pccs")

    async def fetch():
        return await dcap_qvl.get_collateral(pccs, raw)

    collateral = asyncio.run(fetch())
    report = dcap_qvl.verify_with_root_ca(raw, collateral, platform.pki().root_der(), int(time.time()))
    assert report.status == "UpToDate"
