"""The network-facing fuzzer: seeded random HTTP requests at the PCCS server (tdxmodel/host/pccs.py),
sent as raw bytes over loopback so nothing is normalised on the way.

Requests: every method (GET, HEAD, POST, PUT, DELETE, garbage), the served paths and others with
random, repeated, percent-encoded, NUL and non-UTF-8 queries, paths up to 70 KB, header lines
that are huge, many, malformed or missing the colon, Content-Length absent, negative, huge or
shorter than the body, random bodies, HTTP/0.9, 1.0 and 1.1 and nonsense versions, and two requests
pipelined on one connection. Checks: every answer that comes is an HTTP status line with a 3-digit
status; a well-formed GET of a served path answers 200 with the bytes the platform's collateral
gives; the server never raises inside a handler (what ``handle_error`` reports, a client hanging up
early aside); and after the run the server still answers, its thread count back near the start.

``python -m tests.fuzz.net_fuzz --cases N --seed S``; the CI-sized run is test_net_fuzz.py.
"""

from __future__ import annotations

import random
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

from tdxmodel import quote_abi as qa
from tdxmodel.host import pccs

PATHS = (qa.PCS_TDX_TCB_PATH, qa.PCS_TDX_QE_IDENTITY_PATH, qa.PCS_PCK_CRL_PATH, qa.PCS_ROOT_CA_CRL_PATH,
         pccs.ROOT_CRL_DER_PATH, "/", "", "*", "/sgx/certification/v4/pckcert", "/tdx/certification/v4/",
         "//tdx/certification/v4/tcb", "/tdx/certification/v4/tcb/../tcb", "/%2e%2e/%2e%2e/etc/passwd")
METHODS = ("GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get", "G\x00T", "", "X" * 300)
VERSIONS = ("HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "", "HTTP/2.0", "HTTP/1.1111", "HTTP/x", "http/1.1")
TIMEOUT = 10.0


def _query(r: random.Random, fmspc: str) -> str:
    parts = []
    for _ in range(r.choice((0, 1, 1, 2, 5))):
        key = r.choice(("fmspc", "ca", "encoding", "x", "", "fmspc%00", "%ff", "ca"))
        val = r.choice((fmspc, fmspc.lower(), "00" * 6, "platform", "processor", "der", "pem", "",
                        "%00", "%zz", "\u00e9".encode().decode("latin-1"), "A" * r.choice((1, 300, 9000))))
        parts.append(f"{key}={val}" if r.random() < 0.9 else key)
    return "&".join(parts)


def request(r: random.Random, fmspc: str) -> Tuple[bytes, Optional[str]]:
    """(raw request bytes, the served path when the request is a well-formed GET of one, else None)."""
    method = r.choice(METHODS)
    path = r.choice(PATHS)
    if r.random() < 0.05:
        path = "/" + "a" * r.choice((1000, 70_000))
    q = _query(r, fmspc)
    target = path + ("?" + q if q or r.random() < 0.1 else "")
    version = r.choice(VERSIONS)
    headers = [("Host", "127.0.0.1")] if r.random() < 0.9 else []
    for _ in range(r.choice((0, 0, 1, 3, 120))):
        headers.append(r.choice((("X-A", "b" * r.choice((1, 100, 70_000))), ("Connection", "close"),
                                 ("Connection", "keep-alive"), ("Transfer-Encoding", "chunked"),
                                 ("Expect", "100-continue"), ("Content-Type", "\x00\xff"), ("", "x"),
                                 ("NoColon", None))))
    body = b""
    if r.random() < 0.3:
        body = r.randbytes(r.choice((0, 1, 100, 5000)))
        cl = r.choice((str(len(body)), str(len(body)), "-1", "99999999999999999999", "abc", str(len(body) + 10), None))
        if cl is not None:
            headers.append(("Content-Length", cl))
    lines = [f"{method} {target} {version}".rstrip() if r.random() < 0.97 else method]
    for k, v in headers:
        lines.append(k if v is None else f"{k}: {v}")
    head = "\r\n".join(lines) + ("\r\n\r\n" if r.random() < 0.95 else "\r\n")
    raw = head.encode("latin-1", "replace") + body
    if r.random() < 0.05:  # random bytes, or a request cut short
        raw = r.randbytes(r.randrange(1, 300)) if r.random() < 0.5 else raw[:r.randrange(len(raw))]
    good = None
    if method == "GET" and version in ("HTTP/1.1", "HTTP/1.0") and not body and len(headers) <= 3 \
            and raw.startswith(b"GET /") and raw.endswith(b"\r\n\r\n") and len(target) < 8000 \
            and all(v is not None and k and len(v) < 8000 and k != "Transfer-Encoding" and k != "Expect"
                    for k, v in headers):
        good = target
    return raw, good


def _expected(platform: Any, target: str) -> Tuple[int, bytes]:
    if target.startswith("//"):  # http.server makes a leading run of slashes one (gh-87389)
        target = "/" + target.lstrip("/")
    url = urllib.parse.urlsplit(target)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
    status, body, _, _ = pccs._routes(platform, url.path, query)
    return status, body


def _exchange(addr, raw: bytes, pipelined: bool) -> Tuple[List[bytes], Optional[str]]:
    """Send ``raw`` (twice if pipelined), read until the server closes or goes quiet; the status lines
    seen and the whole answer."""
    out = b""
    with socket.create_connection(addr, timeout=TIMEOUT) as s:
        try:
            s.sendall(raw + (raw if pipelined else b""))
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed first (a request it refused): what it sent is still read
        s.settimeout(TIMEOUT)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except socket.timeout:
            return [], "no answer and no close within the timeout"
        except ConnectionResetError:
            pass
    return out, None


def _statuses(answer: bytes) -> List[bytes]:
    return [line for line in answer.split(b"\r\n") if line.startswith(b"HTTP/")]


def campaign(seed: int, n: int, platform: Any = None) -> List[Dict[str, Any]]:
    """``n`` requests of stream ``seed`` at a fresh server; the cases with problems."""
    from tdxmodel.host.collateral import Platform
    from tdxmodel.state import StateStore
    tmp = None
    if platform is None:
        tmp = tempfile.TemporaryDirectory(prefix="tdxmodel-netfuzz-")
        platform = Platform(StateStore(tmp.name + "/state"))
    platform.collateral()
    fmspc = platform.meta()["fmspc"]
    server = pccs.make_server(platform, "127.0.0.1", 0)
    errors: List[str] = []

    def handle_error(request, client_address):  # http.server's hook for a handler that raised
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")

    server.handle_error = handle_error
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    threads_before = threading.active_count()
    thread.start()
    addr = server.server_address[:2]
    r = random.Random(seed)
    bad: List[Dict[str, Any]] = []
    import contextlib
    import io
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the server's access log
            for i in range(n):
                raw, good = request(r, fmspc)
                pipelined = r.random() < 0.1
                answer, problem = _exchange(addr, raw, pipelined)
                problems = [problem] if problem else []
                lines = _statuses(answer)
                # a request line http.server cannot read is answered as HTTP/0.9: its error page alone
                bare = answer.startswith(b"<!DOCTYPE HTML>") and re.search(rb"Error code: (4|5)\d\d", answer)
                # a request line without a version is HTTP/0.9: the answer is the body alone
                simple = len(raw.split(b"\r\n", 1)[0].split()) == 2
                if answer and not answer.startswith(b"HTTP/1.") and not bare and not simple:
                    problems.append(f"answer does not start with a status line: {answer[:60]!r}")
                if bare and good is not None:
                    problems.append("a well-formed GET answered without a status line")
                if any(len(ln.split(b" ")) < 2 or not ln.split(b" ")[1].isdigit() or len(ln.split(b" ")[1]) != 3
                       for ln in lines):
                    problems.append(f"malformed status line in {lines[:3]!r}")
                if good is not None and not problems:
                    status, body = _expected(platform, good)
                    head, _, got = answer.partition(b"\r\n\r\n")
                    if not lines or lines[0].split(b" ")[1] != str(status).encode() or not got.startswith(body):
                        problems.append(f"GET {good[:80]} answered {lines[:1]!r}, not {status} with the "
                                        f"collateral's {len(body)} bytes")
                if errors:
                    problems += errors
                    errors.clear()
                if problems:
                    bad.append({"index": i, "request": raw[:200], "problems": problems})
            time.sleep(0.2)
            answer, problem = _exchange(addr, f"GET {pccs.ROOT_CRL_DER_PATH} HTTP/1.1\r\nHost: x\r\n"
                                              "Connection: close\r\n\r\n".encode(), False)
        if problem or not answer.startswith(b"HTTP/1.1 200"):
            bad.append({"index": n, "request": b"the final clean GET", "problems": [problem or answer[:80]]})
        deadline = time.monotonic() + 5
        while threading.active_count() > threads_before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        if threading.active_count() > threads_before + 1:
            bad.append({"index": n, "request": b"", "problems": [
                f"{threading.active_count() - threads_before - 1} handler threads still alive"]})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        if tmp is not None:
            tmp.cleanup()
    return bad


def main(argv: Optional[List[str]] = None) -> int:
    from tests.fuzz import seeded_cli
    return seeded_cli.main(argv, prog="python -m tests.fuzz.net_fuzz", doc=__doc__, default_cases=2000,
                           campaign=campaign, what="net fuzz (PCCS)", unit="requests")


if __name__ == "__main__":
    sys.exit(main())
