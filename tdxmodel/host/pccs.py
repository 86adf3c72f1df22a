"""A PCCS-compatible HTTP server for the emulated platform's collateral (host layer).

``tdxmodel pccs [--listen 127.0.0.1:8081] [--state DIR]`` answers the PCS v4 paths verifiers fetch
(quote.md §6), with the standard library's ``ThreadingHTTPServer`` (no hand-written HTTP parsing):

| path | body | issuer-chain header |
|---|---|---|
| ``/tdx/certification/v4/tcb?fmspc=F`` | ``{"tcbInfo": ..., "signature": hex}`` | ``TCB-Info-Issuer-Chain`` |
| ``/tdx/certification/v4/qe/identity`` | ``{"enclaveIdentity": ..., "signature": hex}`` | ``SGX-Enclave-Identity-Issuer-Chain`` |
| ``/sgx/certification/v4/pckcrl?ca=platform[&encoding=der]`` | the PCK CRL, DER or PEM | ``SGX-PCK-CRL-Issuer-Chain`` |
| ``/sgx/certification/v4/rootcacrl`` | the root CA CRL as hex (as PCCS serves it) | |
| ``/tdxmodel/IntelSGXRootCA.der`` | the root CA CRL, DER (the root's CRL distribution point) | |

Issuer chains are PEM, URL-encoded, as Intel's PCS sends them. Another FMSPC or ``ca=processor`` is
404 (the platform has one FMSPC and a Platform CA). Collateral is asked for per request, so it is
re-issued on expiry like everything else (``Platform.collateral``).
"""

from __future__ import annotations

import signal
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tdxmodel import quote_abi as qa

ROOT_CRL_DER_PATH = "/tdxmodel/IntelSGXRootCA.der"


def _routes(platform: Any, path: str, query: Dict[str, str]) -> Tuple[int, bytes, str, Dict[str, str]]:
    """(status, body, content type, headers) for one GET."""
    c = platform.collateral()
    if path == qa.PCS_TDX_TCB_PATH:
        fmspc = query.get("fmspc", "")
        if fmspc.upper() != platform.meta()["fmspc"].upper():
            return 404, b"no TCB info for this FMSPC\n", "text/plain", {}
        body = '{"tcbInfo":%s,"signature":"%s"}' % (c.tcb_info, c.tcb_info_signature.hex())
        return 200, body.encode(), "application/json", {qa.HDR_TCB_INFO_ISSUER_CHAIN: c.tcb_info_issuer_chain}
    if path == qa.PCS_TDX_QE_IDENTITY_PATH:
        body = '{"enclaveIdentity":%s,"signature":"%s"}' % (c.qe_identity, c.qe_identity_signature.hex())
        return 200, body.encode(), "application/json", {qa.HDR_QE_IDENTITY_ISSUER_CHAIN: c.qe_identity_issuer_chain}
    if path == qa.PCS_PCK_CRL_PATH:
        if query.get("ca", "").lower() != "platform":
            return 404, b"this platform's PCK certificates are issued by the Platform CA (ca=platform)\n", \
                "text/plain", {}
        headers = {qa.HDR_PCK_CRL_ISSUER_CHAIN: c.pck_crl_issuer_chain}
        if query.get("encoding", "").lower() == "der":
            return 200, c.pck_crl, "application/pkix-crl", headers
        pem = x509.load_der_x509_crl(c.pck_crl).public_bytes(serialization.Encoding.PEM)
        return 200, pem, "application/x-pem-file", headers
    if path == qa.PCS_ROOT_CA_CRL_PATH:
        return 200, c.root_ca_crl.hex().encode(), "text/plain", {}
    if path == ROOT_CRL_DER_PATH:
        return 200, c.root_ca_crl, "application/pkix-crl", {}
    return 404, b"not found\n", "text/plain", {}


def make_server(platform: Any, host: str = "127.0.0.1", port: int = 8081) -> ThreadingHTTPServer:
    """A bound server (``port=0`` picks a free port: ``server.server_address``); the caller runs
    ``serve_forever`` and ``shutdown``/``server_close``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "tdxmodel-pccs"
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's spelling)
            url = urllib.parse.urlsplit(self.path)
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            try:
                status, body, ctype, headers = _routes(platform, url.path, query)
            except Exception as e:  # a broken state directory: answer, never drop the connection
                status, body, ctype, headers = 500, f"{' '.join(str(e).split())}\n".encode(), "text/plain", {}
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, urllib.parse.quote(v, safe=""))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write("tdxmodel pccs: %s %s\n" % (self.address_string(), fmt % args))

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(platform: Any, host: str, port: int, ready: Optional[threading.Event] = None) -> int:
    """Serve until SIGINT/SIGTERM; returns 0. Prints the URL on stderr once listening."""
    platform.collateral()  # make the platform and its collateral before the first request
    server = make_server(platform, host, port)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        addr = server.server_address
        print(f"tdxmodel pccs: serving http://{addr[0]}:{addr[1]}", file=sys.stderr, flush=True)
        if ready is not None:
            ready.set()
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        for s, h in old.items():
            signal.signal(s, h)
    return 0
