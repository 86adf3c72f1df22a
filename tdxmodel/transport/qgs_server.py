"""``tdxmodel serve --qgs PATH``: Intel's QGS protocol on a Unix socket (layer 4).

A standard-library threading server (``socketserver.ThreadingUnixStreamServer``): one thread per
connection reads what ``tdxmodel.host.qgs.classify`` says the request needs (the first read up to
the server's 4096-byte buffer, then exactly the rest of a frame or of a raw 1024-byte TDREPORT),
hands it to the ``QgsService``, writes the answer and closes, as ``qgs_server.cpp`` does (quote.md
§4.2). A connection that sends nothing usable is closed, after EOF or after ``QGS_TIMEOUT_S``
seconds; nothing a client sends can stop the server (every request's failure is caught, logged at a
bounded rate, and answered with the protocol's error where it has one).

The socket is made as the device socket is: a stale one (nothing listens) is replaced, a live one
or anything that is not a socket is refused, missing parent directories are made (and removed on
stop if still empty), and on stop the socket is removed only if it is still the one we bound.
"""

from __future__ import annotations

import os
import socket
import socketserver
import stat
import sys
import threading
import time
from typing import Any, Callable, List, Optional

from tdxmodel import quote_abi as qa
from tdxmodel.host import qgs


class QgsServerError(Exception):
    """A one-line reason the QGS socket cannot be served."""


class RateLimitedLog:
    """RateLimitedLog(sink, *, burst=10, per_seconds=10.0): at most ``burst`` lines per window; then
    one line saying how many were left out, when the next window opens."""

    def __init__(self, sink: Callable[[str], None], *, burst: int = 10, per_seconds: float = 10.0) -> None:
        self.sink = sink
        self.burst = burst
        self.per = per_seconds
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._n = 0
        self._dropped = 0

    def __call__(self, msg: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.per:
                if self._dropped:
                    self.sink(f"QGS: {self._dropped} more messages were left out")
                self._start, self._n, self._dropped = now, 0, 0
            if self._n >= self.burst:
                self._dropped += 1
                return
            self._n += 1
        self.sink(msg)


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        sock: socket.socket = self.request
        srv = self.server
        deadline = time.monotonic() + srv.timeout_s
        buf = bytearray()
        try:
            while True:
                kind, total = qgs.classify(bytes(buf))
                if kind != qgs.NEED_MORE:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout
                sock.settimeout(left)
                want = qa.QGS_READ_BUFFER - len(buf) if len(buf) < qa.QGS_FIRST_READ_MIN else total - len(buf)
                chunk = sock.recv(max(1, want))
                if not chunk:
                    break  # EOF: the service says what an incomplete request gets (nothing)
                buf += chunk
            if buf:
                reply = srv.service.exchange(bytes(buf))
                if reply is not None:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    sock.sendall(reply)
        except socket.timeout:
            srv.log(f"QGS: no whole request within {srv.timeout_s:g} s")
            if buf:
                srv.service.exchange(bytes(buf))  # counted and logged as incomplete; no answer
        except OSError as e:
            srv.log(f"QGS: connection error: {e.strerror or e}")
        except Exception as e:  # never let one request end the server
            srv.log(f"QGS: internal error on a request (closed): {e!r}")
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128

    def __init__(self, path: str, service: Any, timeout_s: float, log: Callable[[str], None]) -> None:
        self.service = service
        self.timeout_s = timeout_s
        self.log = log
        super().__init__(path, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:  # pragma: no cover - _Handler catches
        self.log(f"QGS: internal error: {sys.exc_info()[1]!r}")


class QgsServer:
    """QgsServer(service, path=quote_abi.QGS_UNIX_SOCKET_PATH, *, mode=0o600, timeout_s=30, log=None)

    ``start()`` binds and serves in a thread; ``stop()`` ends it and removes what it made."""

    def __init__(self, service: Any, path: str = qa.QGS_UNIX_SOCKET_PATH, *, mode: int = 0o600,
                 timeout_s: float = qa.QGS_TIMEOUT_S, log: Optional[Callable[[str], None]] = None) -> None:
        self.service = service
        self.path = os.path.abspath(path)
        self.mode = mode
        self.timeout_s = timeout_s
        sink = log or (lambda m: print(f"tdxmodel serve: {m}", file=sys.stderr, flush=True))
        self.log = RateLimitedLog(sink)
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._made_dirs: List[str] = []
        self._ino: Optional[tuple] = None

    def _prepare(self) -> None:
        if len(os.fsencode(self.path)) >= 108:
            raise QgsServerError(f"--qgs {self.path}: a Unix socket path must be shorter than 108 bytes")
        parent = os.path.dirname(self.path)
        missing = []
        p = parent
        while p and not os.path.lexists(p):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o755)
            except OSError as e:
                raise QgsServerError(f"--qgs {self.path}: cannot make {d}: {e.strerror}") from None
            self._made_dirs.append(d)
        if not os.path.isdir(parent) or os.path.islink(parent):
            raise QgsServerError(f"--qgs {self.path}: {parent} is not a directory")
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise QgsServerError(f"--qgs {self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(2)
            probe.connect(self.path)
        except OSError:
            self.log(f"QGS: removing stale socket {self.path}")
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise QgsServerError(f"--qgs {self.path} is served by a running QGS")

    def start(self) -> "QgsServer":
        try:
            self._prepare()
            try:
                self._server = _Server(self.path, self.service, self.timeout_s, self.log)
            except OSError as e:
                raise QgsServerError(f"cannot listen on --qgs {self.path}: {e.strerror}") from None
            st = os.lstat(self.path)
            self._ino = (st.st_dev, st.st_ino)
            os.chmod(self.path, self.mode)
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="tdxmodel-qgs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join(5)
            self._server.server_close()
            self._server = None
            self._thread = None
        if self._ino is not None:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._ino:
                    os.unlink(self.path)
            except OSError:
                pass
            self._ino = None
        for d in reversed(self._made_dirs):  # deepest first
            try:
                os.rmdir(d)
            except OSError:
                break
        self._made_dirs = []

    def __enter__(self) -> "QgsServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def preload_env(qgs_socket: str, vsock_port: Optional[int], workdir: Any) -> dict:
    """The LD_PRELOAD library's QGS variables (csrc/preload/tdx_preload.c): ``TDXMODEL_QGS_SOCKET``
    (AF_VSOCK connects to CID 2 and ``TDXMODEL_QGS_PORT`` reach it) and, with a port, a file
    ``WORKDIR/tdx-attest.conf`` saying ``port=N`` that fopen of /etc/tdx-attest.conf opens instead
    (``TDXMODEL_TDX_ATTEST_CONF``), so libtdx_attest asks the QGS over vsock (quote.md §2.7 step 3)."""
    out = {"TDXMODEL_QGS_SOCKET": str(qgs_socket),
           "TDXMODEL_QGS_PORT": str(vsock_port if vsock_port is not None else qa.QGS_VSOCK_PORT)}
    if vsock_port is not None:
        conf = os.path.join(str(workdir), "tdx-attest.conf")
        with open(conf, "w") as f:
            f.write(f"port={int(vsock_port)}\n")
        out["TDXMODEL_TDX_ATTEST_CONF"] = conf
    return out
