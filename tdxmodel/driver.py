"""A Python convenience layer over the emulated tdx_guest driver (layer 3).

``TdxGuest`` builds a Module, a Kernel with one driver generation and a Process over the selected
backend, and speaks to the driver only through the syscall-like Process API (open/ioctl/pread/pwrite),
exactly as a user-space client would. Failures raise ``tdxmodel.errors`` exceptions (``OSError``
subclasses with ``.errno``) through ``errors.check_ret``, the one translator.

>>> with TdxGuest("v6.2", backend="reference") as guest:
...     report = guest.get_report(b"nonce")
>>> report[128:133]
b'nonce'
"""

from __future__ import annotations

import os
from typing import Optional, Union

from tdxmodel import _backend, abi, errors, profiles
from tdxmodel.config import ModuleConfig

PAGE_SIZE = abi.TDX_PAGE_SIZE
#: Where the client maps its request buffer and its measurement buffer (any page-aligned user address).
REQUEST_ADDR = 0x7F0000000000
_REQUEST_PAGES = 2
_MEASUREMENT_ADDR = REQUEST_ADDR + _REQUEST_PAGES * PAGE_SIZE


class TdxGuest:
    """TdxGuest(driver: str = "v6.2", backend: str | None = None, config: ModuleConfig | None = None)

    One emulated TD with the ``driver`` generation loaded ("v4-2022-04", "v6.2", "v6.16"), on the
    ``backend`` ("core", "reference", or None for the default). ``module``, ``kernel`` and ``process``
    are the backend objects underneath (the pyzmq "sugar over backend" split)."""

    def __init__(self, driver: str = "v6.2", backend: Optional[str] = None,
                 config: Optional[ModuleConfig] = None, *, memory_pages: int = 128) -> None:
        self.profile = profiles.get(driver)
        if config is not None and not isinstance(config, ModuleConfig):
            raise TypeError(f"config must be a ModuleConfig, not {type(config).__name__}")
        self.backend = _backend.load(backend)
        self.driver = driver
        self.module = self.backend.Module(config if config is not None else ModuleConfig(),
                                          memory_pages=memory_pages)
        self.kernel = self.backend.Kernel(self.module, driver)
        self.process = self.kernel.process()
        self.process.mmap(REQUEST_ADDR, _REQUEST_PAGES * PAGE_SIZE, "rw")
        self.process.mmap(_MEASUREMENT_ADDR, PAGE_SIZE, "rw")
        self._fd = errors.check_ret(self.process.open(self.kernel.device_path, os.O_RDWR),
                                    f"open {self.kernel.device_path}")

    def __enter__(self) -> "TdxGuest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the device node (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            errors.check_ret(self.process.close(fd), "close")

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

    def __repr__(self) -> str:
        return f"<TdxGuest {self.driver} on {self.backend.BACKEND_NAME}>"
