"""The client of the emulated tdx_guest driver (layer 3): one user-space process speaking to it.

``TdxGuest`` builds a Module, a Kernel with one driver generation and a Process over the selected
backend (or opens a new process on an existing ``kernel=``), and speaks to the driver only through the
syscall-like Process API (open/ioctl/pread/pwrite), exactly as a user-space client would. Two kinds of
calls:

* ``get_report``, ``read_measurement``, ``extend_rtmr`` raise ``tdxmodel.errors`` exceptions
  (``OSError`` subclasses with ``.errno``) through ``errors.check_ret``, the one translator;
* ``ioctl``, ``try_get_report``, ``try_extend``, ``try_read_measurement`` and ``ioctl_batch`` return the
  syscall result (0 / a size, or -errno) instead, for workloads that count errnos (``tdxmodel.bench``,
  ``benchmarks/``), with a per-call fault schedule for the batch (``fail_nth``).

The request layout of every call is the generation's profile (``tdxmodel.profiles``).

>>> with TdxGuest("v6.2", backend="reference") as guest:
...     report = guest.get_report(b"nonce")
>>> report[128:133]
b'nonce'
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np

from tdxmodel import _backend, abi, errors, profiles
from tdxmodel.config import ModuleConfig

PAGE_SIZE = abi.TDX_PAGE_SIZE
#: Where the client maps its request buffer and its measurement buffer (any page-aligned user address).
REQUEST_ADDR = 0x7F0000000000
#: The default ``buffer`` of ``ioctl_batch``.
REQUEST_BUFFER_ADDR = REQUEST_ADDR
_REQUEST_PAGES = 2
_READ_CHUNK = _REQUEST_PAGES * PAGE_SIZE
#: item -> (its configfs-tsm directory, inblob, outblob, and the three as bytes for the core, or None
#: for a name with a NUL), so a quote formats no path (bounded).
_TSM_PATHS: Dict[str, tuple] = {}
_MEASUREMENT_ADDR = REQUEST_ADDR + _REQUEST_PAGES * PAGE_SIZE
#: The ioctl quote paths: the request struct, then the quote buffer (mapped on first use).
_QUOTE_REQ_ADDR = _MEASUREMENT_ADDR + PAGE_SIZE
_QUOTE_BUF_ADDR = _QUOTE_REQ_ADDR + PAGE_SIZE


class _BootTdqe:
    """The producer of a host attached at boot (an ioctl quote path registers its notify vector at
    boot): the emulated platform's TDQE, built on the first quote."""

    def __init__(self, module) -> None:
        self._module = module
        self._producer = None

    def produce(self, payload):
        if self._producer is None:
            from tdxmodel.host import quote_producer
            self._producer = quote_producer(module=self._module)
        return self._producer.produce(payload)

    def __repr__(self) -> str:
        return "<the default TDQE, built on the first quote>"


def _backend_of(kernel):
    """The backend a Kernel belongs to (each backend's classes live in its own package). Its Module
    tells when the kernel is wrapped (a test's proxy forwards ``module``)."""
    for obj in (kernel, getattr(kernel, "module", None)):
        owner = type(obj).__module__
        for name in _backend.BACKENDS:
            if owner.startswith(f"tdxmodel._{name}"):
                return _backend.load(name)
    raise TypeError(f"kernel must be a Kernel of a tdxmodel backend, not {type(kernel).__name__}")


class TdxGuest:
    """TdxGuest(driver: str = "v6.2", backend: str | None = None, config: ModuleConfig | None = None,
    *, memory_pages: int = 128, kernel=None, quote_completion=None)

    One emulated TD with the ``driver`` generation loaded (a name of ``tdxmodel.profiles.NAMES``), on
    the ``backend`` ("core", "reference", or None for the default); or, with ``kernel``, one more
    process on that existing Kernel (its driver and backend; ``driver``, ``backend``, ``config`` are
    then not given). ``module``, ``kernel`` and ``process`` are the backend objects underneath (the
    pyzmq "sugar over backend" split). One TdxGuest belongs to one thread at a time (a process's
    fail-nth is per task, ref §7). ``quote_completion`` is the Kernel's option (how the configfs-tsm
    provider waits for the host: ``profiles.quote_completion``; None: the generation's default)."""

    #: the VMM behind this TD (attach_host); True while it is the one made at boot for an ioctl quote path
    host = None
    _boot_host = False

    def __init__(self, driver: Optional[str] = None, backend: Optional[str] = None,
                 config: Optional[ModuleConfig] = None, *, memory_pages: int = 128, kernel=None,
                 quote_completion=None) -> None:
        if kernel is not None:
            if driver is not None or backend is not None or config is not None or quote_completion is not None:
                raise ValueError("kernel= opens a process on an existing kernel: give no driver, "
                                 "backend, config or quote_completion")
            driver = kernel.driver
        elif driver is None:
            driver = "v6.2"   # upstream's long-lived generation (ref §2.4)
        self.profile = profiles.get(driver)
        if config is not None and not isinstance(config, ModuleConfig):
            raise TypeError(f"config must be a ModuleConfig, not {type(config).__name__}")
        self.driver = driver
        if kernel is not None:
            self.backend = _backend_of(kernel)
            self.kernel, self.module = kernel, kernel.module
        else:
            self.backend = _backend.load(backend)
            self.module = self.backend.Module(config if config is not None else ModuleConfig(),
                                              memory_pages=memory_pages)
            if self.profile.ioctl_quote is not None:
                # the kernel registers the notify vector at boot (ref §2.2, quote.md §2.6): the VMM
                # exists before the TD boots, its quote service chosen at attach_host()
                self.host = self.backend.Host(self.module, producer=_BootTdqe(self.module))
                self._boot_host = True
            self.kernel = self.backend.Kernel(self.module, driver, quote_completion=quote_completion)
        self.process = self.kernel.process()
        req = self.profile.report
        self.cmd = req.value
        self.reportdata_off = req.field("reportdata").offset
        self.tdreport_off = req.field("tdreport").offset
        self.buffer = REQUEST_ADDR
        self._measurement_fds: Dict[int, int] = {}
        self.process.mmap(REQUEST_ADDR, _REQUEST_PAGES * PAGE_SIZE, "rw")
        self.process.mmap(_MEASUREMENT_ADDR, PAGE_SIZE, "rw")
        self._fd = errors.check_ret(self.process.open(self.kernel.device_path, os.O_RDWR),
                                    f"open {self.kernel.device_path}")

    def __enter__(self) -> "TdxGuest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the device node and any measurement file, detach the host (idempotent)."""
        if getattr(self, "host", None) is not None:
            self.host.close()
            self.host = None
        for fd in self._measurement_fds.values():
            self.process.close(fd)
        self._measurement_fds.clear()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            errors.check_ret(self.process.close(fd), "close")

    # ------------------------------------------------------------------ the quote path (quote.md §1-§2)
    def attach_host(self, producer=None, clock=None):
        """attach_host(producer=None, clock=None) -> Host: the VMM behind this TD (one per module).

        ``producer`` None: the emulated platform's TDQE of the default state directory
        (``tdxmodel.host.quote_producer``); ``clock``: a backend Clock, "virtual" (default) or "real"."""
        if getattr(self, "_boot_host", False):
            # the host attached at boot (an ioctl quote path): it takes the producer; its clock was
            # chosen then (virtual)
            if clock is not None and getattr(clock, "kind", clock) != self.host.clock.kind:
                raise ValueError(f"{self.driver}'s host exists from boot with a {self.host.clock.kind} "
                                 "clock; give no other clock")
            self._boot_host = False
            if producer is not None:
                self.host.producer = producer
            return self.host
        if getattr(self, "host", None) is not None:
            raise ValueError("this TD already has a host")
        if producer is None:
            from tdxmodel.host import quote_producer
            producer = quote_producer(module=self.module)
        self.host = self.backend.Host(self.module, producer=producer, clock=clock)
        return self.host

    def get_quote(self, reportdata=b"", *, item: str = "tdxmodel") -> bytes:
        """get_quote(reportdata: bytes = b"", *, item="tdxmodel") -> bytes: a quote for REPORTDATA
        (zero-padded to 64 bytes) through this generation's quote path, as its profile says:

        * configfs-tsm (``profile.quote``): mkdir, write inblob, close, read outblob to EOF (quote.md
          §1.4-§1.5); an empty outblob is returned as b"" as the kernel does;
        * the get_quote ioctl (``profile.ioctl_quote``: Intel downstream, v4): the TDREPORT from the
          report ioctl, then the 24-byte header and the payload the profile names (libtdx_attest's
          QGS GET_QUOTE_REQ frame, or the raw TDREPORT) in a buffer of ``buf_len`` bytes, the ioctl,
          and the host's reply from the header: ``out_len`` bytes, unframed; b"" when the status is
          not SUCCESS or out_len is 0 (ref §2.2, quote.md §2.6-§2.7).

        The path's errno is the exception's ``.errno`` (tdxmodel.errors). With no host attached,
        ``attach_host()`` gives the TDQE first."""
        profile = self.profile
        if profile.quote is None and profile.ioctl_quote is None:
            raise ValueError(f"{self.driver} has no quote path")
        if not isinstance(reportdata, (bytes, bytearray, memoryview)):
            raise TypeError(f"reportdata must be bytes, not {type(reportdata).__name__}")
        if len(reportdata) > abi.TDX_REPORTDATA_LEN:
            raise ValueError(f"reportdata is {len(reportdata)} bytes; at most {abi.TDX_REPORTDATA_LEN}")
        if self.host is None or self._boot_host:
            self.attach_host()
        if profile.quote is None:
            return self._get_quote_ioctl(bytes(reportdata))
        # The messages are only formatted on failure: next to one ECDSA signature, this Python is what
        # the whole path costs beyond the kernel (benchmarks/RESULTS.md "Whole path").
        p = self.process
        paths = _TSM_PATHS.get(item) if type(item) is str else None
        if paths is None:
            path = f"{profiles.TSM_REPORT_DIR}/{item}"
            paths = (path, path + "/inblob", path + "/outblob")
            if type(item) is str and len(_TSM_PATHS) < 64:
                _TSM_PATHS[item] = paths + ((None,) if "\0" in path else
                                            tuple(x.encode("utf-8", "surrogateescape") for x in paths))
        path, inblob, outblob = paths[0], paths[1], paths[2]
        if type(p) is _NATIVE_PROCESS and len(paths) == 6 and paths[3] is not None:
            # the core: the same syscalls in one C call, the GIL released once (csrc/tdx_batch.h)
            got = _native_tsm_quote(p, paths[3], paths[4], paths[5], REQUEST_ADDR,
                                    reportdata if type(reportdata) is bytes else bytes(reportdata), _READ_CHUNK)
            if type(got) is bytes:
                return got
            step, ret = got
            where = {"mkdir": f"mkdir {path}", "open_in": f"open {inblob}", "write": f"write {inblob}",
                     "open_out": f"open {outblob}", "read": f"read {outblob}"}[step]
            raise errors.errno_exception(-ret, where)
        ret = p.mkdir(path)
        if ret != 0 and ret != -abi.EEXIST:
            errors.check_ret(ret, f"mkdir {path}")
        fd = p.open(inblob, os.O_WRONLY)
        if fd < 0:
            errors.check_ret(fd, f"open {inblob}")
        try:
            p.poke(REQUEST_ADDR, bytes(reportdata).ljust(abi.TDX_REPORTDATA_LEN, b"\0"))
            ret = p.write(fd, REQUEST_ADDR, abi.TDX_REPORTDATA_LEN)
            if ret < 0:
                errors.check_ret(ret, f"write {inblob}")
        finally:
            p.close(fd)  # the commit (its result is not reported, quote.md §1.4)
        fd = p.open(outblob, os.O_RDONLY)
        if fd < 0:
            errors.check_ret(fd, f"open {outblob}")
        out, more = b"", None  # a quote is one read; a list only when it is not
        try:
            while True:
                n = p.read(fd, REQUEST_ADDR, _READ_CHUNK)
                if n < 0:
                    errors.check_ret(n, f"read {outblob}")
                if n == 0:
                    return out if more is None else b"".join(more)
                chunk = p.peek(REQUEST_ADDR, n)
                if more is not None:
                    more.append(chunk)
                elif out:
                    more = [out, chunk]
                else:
                    out = chunk
        finally:
            p.close(fd)

    def _get_quote_ioctl(self, reportdata: bytes) -> bytes:
        iq, cmd = self.profile.ioctl_quote, self.profile.command("get_quote")
        p, fd = self.process, self._fd_or_raise()
        tdreport = self.get_report(reportdata)
        payload = tdreport if iq.payload == "tdreport" else qgs_get_quote_request(tdreport)
        if not getattr(self, "_quote_mapped", False):
            p.mmap(_QUOTE_REQ_ADDR, PAGE_SIZE + iq.buf_len, "rw")
            self._quote_mapped = True
        buf = bytearray(iq.buf_len)
        buf[:abi.QUOTE_HDR_LEN + len(payload)] = struct.pack("<QQII", abi.GET_QUOTE_CMD_VER, 0,
                                                             len(payload), 0) + payload
        p.poke(_QUOTE_BUF_ADDR, bytes(buf))
        req = bytearray(cmd.request_len)
        values = {"buf": _QUOTE_BUF_ADDR, "len": iq.buf_len, "timeout": iq.timeout_ms}
        for f in cmd.fields:
            req[f.offset:f.end] = values[f.name].to_bytes(f.size, "little")
        p.poke(_QUOTE_REQ_ADDR, bytes(req))
        errors.check_ret(p.ioctl(fd, cmd.value, _QUOTE_REQ_ADDR), f"TDX get quote ioctl 0x{cmd.value:08X}")
        _v, status, _in, out_len = struct.unpack("<QQII", p.peek(_QUOTE_BUF_ADDR, abi.QUOTE_HDR_LEN))
        out_len = min(out_len, iq.buf_len - abi.QUOTE_HDR_LEN)  # the host's value, bounded by our buffer
        if status != abi.GET_QUOTE_SUCCESS or out_len == 0:
            return b""
        data = p.peek(_QUOTE_BUF_ADDR + abi.QUOTE_HDR_LEN, out_len)
        return qgs_get_quote_response(data) if iq.payload == "qgs" else data

    def get_quote_batch(self, reportdata) -> Tuple[list, np.ndarray]:
        """get_quote_batch(reportdata: uint8[N, 64]) -> (list of N bytes | None, int32[N] errnos): one
        get_quote per row; a failed row is None with its errno (0 for success)."""
        if not isinstance(reportdata, np.ndarray) or reportdata.dtype != np.uint8 or reportdata.ndim != 2 \
                or reportdata.shape[1] != abi.TDX_REPORTDATA_LEN:
            raise ValueError("reportdata must be a uint8 numpy array of shape (N, 64)")
        quotes: list = []
        errnos = np.zeros(reportdata.shape[0], dtype=np.int32)
        for i in range(reportdata.shape[0]):
            try:
                quotes.append(self.get_quote(reportdata[i].tobytes()))
            except errors.KernelError as e:
                quotes.append(None)
                errnos[i] = e.errno
        return quotes, errnos

    @property
    def fd(self) -> int:
        """The device's file descriptor (-1 once closed)."""
        return -1 if self._fd is None else self._fd

    def _fd_or_raise(self) -> int:
        if self._fd is None:
            raise ValueError("this TdxGuest is closed")
        return self._fd

    def get_report(self, reportdata: Union[bytes, bytearray] = b"") -> bytes:
        """get_report(reportdata: bytes = b"") -> bytes

        The 1024-byte TDREPORT for ``reportdata`` (at most 64 bytes, zero-padded), through the
        driver's ioctl. v4: TDX_CMD_GET_TDREPORT on one in-place buffer (ref §2.2); v6.2+:
        TDX_CMD_GET_REPORT0 on struct tdx_report_req (ref §2.4, §2.5). Errors raise with the
        driver's errno; on v4 a TDCALL failure also carries the status it wrote back (``.status``)."""
        if not isinstance(reportdata, (bytes, bytearray)):
            raise TypeError(f"reportdata must be bytes, not {type(reportdata).__name__}")
        if len(reportdata) > abi.TDX_REPORTDATA_LEN:
            raise ValueError(f"reportdata must be at most {abi.TDX_REPORTDATA_LEN} bytes, "
                             f"got {len(reportdata)}")
        fd = self._fd_or_raise()
        p = self.process
        padded = bytes(reportdata).ljust(abi.TDX_REPORTDATA_LEN, b"\0")
        req = self.profile.report   # its request layout (ref §2.2, §2.4)
        rd_off, report_off = req.field("reportdata").offset, req.field("tdreport").offset
        request = bytearray(req.request_len)
        request[rd_off:rd_off + abi.TDX_REPORTDATA_LEN] = padded
        p.poke(REQUEST_ADDR, bytes(request))
        ret = p.ioctl(fd, req.value, REQUEST_ADDR)
        if ret < 0:
            status = None
            wb = self.profile.status_writeback
            if wb is not None and ret == -self.profile.errno_default:  # ref §2.2 #4: status written back
                status = int.from_bytes(p.peek(REQUEST_ADDR + wb.offset, wb.size), "little") or None
            errors.check_ret(ret, "TDX get report ioctl", status=status)
        return p.peek(REQUEST_ADDR + report_off, abi.TDX_REPORT_LEN)

    def _measurement_path(self, name: str) -> str:
        # a generation without measurement files answers ENOENT at open, for the names others have
        names = [m.name for m in self.profile.measurements] or list(abi.MEASUREMENTS)
        if name not in names:
            raise ValueError(f"name must be one of {', '.join(names)}, not {name!r}")
        dirs = self.profile.measurement_dirs or abi.MEASUREMENT_DIRS
        return f"{dirs[0]}/{name}"

    def read_measurement(self, name: str) -> bytes:
        """read_measurement(name: str) -> bytes

        The 48 bytes of a 6.16 measurement file ("rtmr0:sha384".."rtmr3:sha384", "mrtd:sha384",
        "mrconfigid", "mrowner", "mrownerconfig"; ref §2.5). Other drivers have no such file: ENOENT."""
        path = self._measurement_path(name)
        p = self.process
        fd = errors.check_ret(p.open(path, os.O_RDONLY), f"open {path}")
        try:
            n = errors.check_ret(p.pread(fd, _MEASUREMENT_ADDR, abi.MEASUREMENT_LEN, 0), f"read {name}")
            return p.peek(_MEASUREMENT_ADDR, n)
        finally:
            p.close(fd)

    def extend_rtmr(self, index: int, data: Union[bytes, bytearray]) -> None:
        """extend_rtmr(index: int, data: bytes) -> None

        Extend RTMR[index] with 48 bytes by writing the 6.16 measurement file ``rtmr<index>:sha384``
        (ref §2.5). Other drivers have no such file: ENOENT."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, not {type(index).__name__}")
        if not 0 <= index < abi.TDX_NUM_RTMRS:
            raise ValueError(f"index must be in 0..{abi.TDX_NUM_RTMRS - 1}, got {index}")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if len(data) != abi.TDX_EXTEND_DATA_LEN:
            raise ValueError(f"data must be {abi.TDX_EXTEND_DATA_LEN} bytes, got {len(data)}")
        path = self._measurement_path(f"rtmr{index}:sha384")
        p = self.process
        fd = errors.check_ret(p.open(path, os.O_WRONLY), f"open {path}")
        try:
            p.poke(_MEASUREMENT_ADDR, bytes(data))
            errors.check_ret(p.pwrite(fd, _MEASUREMENT_ADDR, len(data), 0), f"extend RTMR{index}")
        finally:
            p.close(fd)

    # -- raw syscall results, for workloads that count errnos ------------------------------------
    def put_reportdata(self, reportdata) -> None:
        """Write ``reportdata`` (at most 64 bytes, zero-padded) where the request takes it."""
        data = bytes(reportdata)
        if len(data) > abi.TDX_REPORTDATA_LEN:
            raise ValueError(f"reportdata is {len(data)} bytes; at most {abi.TDX_REPORTDATA_LEN}")
        self.process.poke(self.buffer + self.reportdata_off, data.ljust(abi.TDX_REPORTDATA_LEN, b"\0"))

    def ioctl(self) -> int:
        """ioctl() -> int: one report ioctl on the request buffer as it stands (0 or -errno)."""
        return self.process.ioctl(self._fd_or_raise(), self.cmd, self.buffer)

    def read_report(self) -> bytes:
        return self.process.peek(self.buffer + self.tdreport_off, abi.TDX_REPORT_LEN)

    def try_get_report(self, reportdata=b"") -> Tuple[int, Optional[bytes]]:
        """try_get_report(reportdata: bytes = b"") -> (ret, report or None)"""
        self.put_reportdata(reportdata)
        ret = self.ioctl()
        return ret, (self.read_report() if ret == 0 else None)

    def _rtmr_fd(self, index: int) -> int:
        fd = self._measurement_fds.get(index)
        if fd is None:
            if not self.profile.measurements:
                raise ValueError(f"driver {self.driver} has no measurement files (ref §2.5: v6.16+)")
            path = measurement_path(index, self.profile)
            fd = errors.check_ret(self.process.open(path, os.O_RDWR), f"open {path}")
            self._measurement_fds[index] = fd
        return fd

    def try_extend(self, index: int, data: bytes) -> int:
        """try_extend(index: int, data: bytes) -> int: write 48 bytes to ``rtmr<index>:sha384``
        (v6.16): 48 or -errno (ref §2.5)."""
        if len(data) != abi.MEASUREMENT_LEN:
            raise ValueError(f"data is {len(data)} bytes; a measurement write takes {abi.MEASUREMENT_LEN}")
        fd = self._rtmr_fd(index)
        self.process.poke(_MEASUREMENT_ADDR, bytes(data))
        return self.process.pwrite(fd, _MEASUREMENT_ADDR, abi.MEASUREMENT_LEN, 0)

    def try_read_measurement(self, index: int) -> Tuple[int, Optional[bytes]]:
        """try_read_measurement(index: int) -> (ret, 48 bytes or None): ``pread`` of ``rtmr<index>:sha384``."""
        fd = self._rtmr_fd(index)
        ret = self.process.pread(fd, _MEASUREMENT_ADDR, abi.MEASUREMENT_LEN, 0)
        return ret, (self.process.peek(_MEASUREMENT_ADDR, abi.MEASUREMENT_LEN)
                     if ret == abi.MEASUREMENT_LEN else None)

    def ioctl_batch(self, reportdata, fail_nth=None) -> Tuple[np.ndarray, np.ndarray]:
        """ioctl_batch(reportdata: uint8[N, 64], fail_nth: None | int[N]) -> (int64[N], uint8[N, 1024])

        ``ioctl_batch`` on this client's process, device fd, command and request buffer."""
        return ioctl_batch(self.process, self._fd_or_raise(), reportdata, fail_nth, cmd=self.cmd,
                           buffer=self.buffer)

    def __repr__(self) -> str:
        return f"<TdxGuest {self.driver} on {self.backend.BACKEND_NAME}>"


def qgs_get_quote_request(tdreport: bytes) -> bytes:
    """A QGS GET_QUOTE_REQ frame for ``tdreport`` with no id list, as libtdx_attest builds it for the
    downstream ioctl (quote.md §2.7 step 2, §4.2): a 4-byte big-endian length, then the message."""
    size = abi.QGS_GET_QUOTE_REQ_LEN + len(tdreport)
    msg = struct.pack("<HHIIIII", abi.QGS_MSG_LIB_MAJOR_VER, abi.QGS_MSG_LIB_MINOR_VER,
                      abi.QGS_MSG_GET_QUOTE_REQ, size, 0, len(tdreport), 0) + bytes(tdreport)
    return size.to_bytes(abi.QGS_FRAME_LEN_SIZE, "big") + msg


def qgs_get_quote_response(data: bytes) -> bytes:
    """The quote inside a GET_QUOTE_RESP frame, checked as libtdx_attest does (quote.md §2.7 step 5:
    BE32 length == out_len - 4, then the response header, error_code 0); ValueError otherwise."""
    hdr = abi.QGS_FRAME_LEN_SIZE + abi.QGS_GET_QUOTE_RESP_LEN
    if len(data) < hdr or int.from_bytes(data[:4], "big") != len(data) - abi.QGS_FRAME_LEN_SIZE:
        raise ValueError("the host's reply is not one QGS frame (quote.md §2.7)")
    major, _minor, mtype, size, err, sel, qsize = struct.unpack_from("<HHIIIII", data, 4)
    if major != abi.QGS_MSG_LIB_MAJOR_VER or mtype != abi.QGS_MSG_GET_QUOTE_RESP or err != 0 \
            or size != len(data) - abi.QGS_FRAME_LEN_SIZE or size != abi.QGS_GET_QUOTE_RESP_LEN + sel + qsize:
        raise ValueError(f"the host's reply is not a good GET_QUOTE_RESP (type {mtype}, error_code 0x{err:x})")
    return bytes(data[hdr + sel:hdr + sel + qsize])


def measurement_path(index: int, profile: Optional[profiles.Profile] = None) -> str:
    """The measurement file of RTMR ``index`` (ref §2.5), in ``profile``'s first directory (default:
    the generation that has measurement files)."""
    if not 0 <= index < abi.TDX_NUM_RTMRS:
        raise ValueError(f"RTMR index must be 0..{abi.TDX_NUM_RTMRS - 1}, got {index}")
    dirs = profile.measurement_dirs if profile is not None and profile.measurement_dirs \
        else abi.MEASUREMENT_DIRS
    return f"{dirs[0]}/rtmr{index}:sha384"


def ioctl_batch(process, fd: int, reportdata, fail_nth=None, *, cmd: int = abi.TDX_CMD_GET_REPORT0,
                buffer: int = REQUEST_BUFFER_ADDR) -> Tuple[np.ndarray, np.ndarray]:
    """ioctl_batch(process, fd: int, reportdata: uint8[N, 64], fail_nth: None | int[N], *, cmd: int = TDX_CMD_GET_REPORT0, buffer: int) -> (int64[N], uint8[N, 1024])

    The driver-path batch: one ``ioctl(fd, cmd, buffer)`` per row of ``reportdata``. ``buffer`` is a
    user address the process has mapped writable for the request: ``struct tdx_report_req`` (1088
    bytes: REPORTDATA at 0, TDREPORT at 64, ref §2.4), or for v4's ``TDX_CMD_GET_TDREPORT`` one
    in-place 1024-byte buffer (ref §2.2). Before row i's call its REPORTDATA is written there and, when
    ``fail_nth[i] > 0``, the process's fail-nth is armed with it (ref §7) for that call only (disarmed
    after it, fired or not); 0 leaves it unarmed. ``rets[i]`` is the ioctl's result (0 or -errno);
    ``reports[i]`` the TDREPORT read back when ``rets[i] == 0``, else zeros.

    On the core this is one C loop with the GIL released (csrc/tdx_batch.c); on the reference, the same
    steps through ``Process.poke`` / ``ioctl`` / ``peek``. A TD exit raises as ``Process.ioctl`` does.
    """
    rows = check_reportdata(reportdata)
    n = rows.shape[0]
    schedule = None
    if fail_nth is not None:
        schedule = np.asarray(fail_nth)
        if schedule.shape != (n,) or schedule.dtype.kind not in "iu":
            raise ValueError(f"fail_nth must be an integer array of shape ({n},), got "
                             f"{schedule.shape} {schedule.dtype}")
        if n and (schedule.min() < 0 or schedule.max() > 0x7FFFFFFF):
            raise ValueError("fail_nth values must be in 0..2**31-1")
    req = profiles.report_command(cmd)   # the request layout that number names (ref §2.2, §2.4)
    reportdata_off, tdreport_off = req.field("reportdata").offset, req.field("tdreport").offset
    native = _native_ioctl_batch(process)
    if native is not None:  # the core: one nogil C loop (csrc/tdx_batch.c)
        return native(process, fd, cmd, buffer, reportdata_off, tdreport_off, rows, schedule)
    rets = np.zeros(n, dtype=np.int64)
    reports = np.zeros((n, abi.TDX_REPORT_LEN), dtype=np.uint8)
    rd_addr, tr_addr = buffer + reportdata_off, buffer + tdreport_off
    for i in range(n):
        process.poke(rd_addr, rows[i].tobytes())
        armed = schedule is not None and schedule[i] != 0
        if armed:
            process.fail_nth = int(schedule[i])
        ret = process.ioctl(fd, cmd, buffer)
        if armed:
            process.fail_nth = 0  # a schedule entry is for its own row only
        rets[i] = ret
        if ret == 0:
            reports[i] = np.frombuffer(process.peek(tr_addr, abi.TDX_REPORT_LEN), dtype=np.uint8)
    return rets, reports


def _native_tsm_functions() -> Tuple[Optional[type], Optional[Callable]]:
    """(the core's Process type, its one-call configfs-tsm quote) when the core is built, else Nones."""
    try:
        from tdxmodel._core import _ext as ext
    except ImportError:
        return None, None
    fn = getattr(ext, "_tsm_quote", None)
    return (ext.Process, fn) if fn is not None else (None, None)


_NATIVE_PROCESS, _native_tsm_quote = _native_tsm_functions()


def _native_ioctl_batch(process) -> Optional[Callable]:
    """The core's nogil driver-path batch when ``process`` is a core Process, else None."""
    try:
        from tdxmodel._core import _ext as ext
    except ImportError:
        return None
    fn = getattr(ext, "_ioctl_batch", None)
    if fn is None or not isinstance(process, ext.Process):
        return None
    return fn


def check_reportdata(reportdata) -> np.ndarray:
    if not isinstance(reportdata, np.ndarray):
        raise TypeError("reportdata must be a numpy array of shape (N, 64) and dtype uint8")
    if reportdata.dtype != np.uint8 or reportdata.ndim != 2 or reportdata.shape[1] != abi.TDX_REPORTDATA_LEN:
        raise ValueError(f"reportdata must have shape (N, 64) and dtype uint8, got {reportdata.shape} "
                         f"{reportdata.dtype}")
    return np.ascontiguousarray(reportdata)



