"""What an emulated platform and TD are made of (layer 0: pure data, no behaviour).

``ModuleConfig`` holds every input of the TDX module model. It builds the exact bytes both backends
start from (TEE_TCB_INFO, TDINFO, the MAC key), so the C core and the pure-Python reference cannot
disagree about them. A config comes from keyword arguments, a dict, or a TOML file
(``ModuleConfig.from_toml``); byte fields are hex strings there.

Default measurements (documented in README.md): MRTD = SHA-384(b"tdxmodel default MRTD"), RTMRs and the
owner fields zero (a new state directory replaces the RTMRs by its boot event log's replay,
tdxmodel.state / tdxmodel.eventlog), ATTRIBUTES = SEPT_VE_DISABLE (bit 28), XFAM = 0xE7, TDX module 1.5, TEE_TCB_SVN
03 MM 01 00.. with MM the module's major version (01 for 1.5, 00 for 1.0; quote.md §5.5 step 4).

A TOML file is read only if it is a regular file of at most ``MAX_CONFIG_BYTES`` (a FIFO, a device or
an endless file is a ConfigError, never a hang or an exhausted memory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import stat
import tomllib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from tdxmodel import abi

SHA384 = abi.TDX_SHA384_LEN

#: TDX module versions the model knows (ref §4): "1.0" and "1.5".
VERSIONS = ("1.0", "1.5")

#: The largest configuration file read (a real one is about 1 KiB).
MAX_CONFIG_BYTES = 1 << 20

ATTRIBUTES_DEBUG = 1 << 0            # ref §4.4
ATTRIBUTES_SEPT_VE_DISABLE = 1 << 28  # ref §4.4 (and §4.3 step 3b: pending pages exit instead of #VE)


def _zero48() -> bytes:
    return bytes(SHA384)


def _default_mrtd() -> bytes:
    return hashlib.sha384(b"tdxmodel default MRTD").digest()


def _default_mrseam() -> bytes:
    return hashlib.sha384(b"tdxmodel default MRSEAM").digest()


class ConfigError(ValueError):
    """A configuration value is malformed; the message names the field."""


@dataclass
class ModuleConfig:
    # --- platform (TEE_TCB_INFO, CPUSVN, MAC key) ---
    version: str = "1.5"
    seed: Optional[int] = None          # derives the MAC key reproducibly; None + mac_key None: random
    mac_key: Optional[bytes] = None     # 32 bytes; overrides seed
    cpusvn: bytes = bytes([1, 2] + [0] * 14)
    tee_tcb_svn: Optional[bytes] = None  # None: default_tee_tcb_svn(version)
    mrseam: bytes = field(default_factory=_default_mrseam)
    mrsignerseam: bytes = field(default_factory=_zero48)  # 0 for Intel modules (ref §4.4)
    seam_attributes: int = 0
    tee_tcb_svn2: bytes = bytes(16)     # 1.5 only (ref §4.4)
    # --- TD (TDINFO) ---
    attributes: int = ATTRIBUTES_SEPT_VE_DISABLE
    xfam: int = 0xE7
    mrtd: bytes = field(default_factory=_default_mrtd)
    mrconfigid: bytes = field(default_factory=_zero48)
    mrowner: bytes = field(default_factory=_zero48)
    mrownerconfig: bytes = field(default_factory=_zero48)
    rtmr: Tuple[bytes, bytes, bytes, bytes] = field(default_factory=lambda: (_zero48(),) * 4)
    servtd_hash: bytes = field(default_factory=_zero48)  # 1.5 only; nonzero = a service TD is bound

    _BYTE_FIELDS = {"mac_key": 32, "cpusvn": 16, "tee_tcb_svn": 16, "mrseam": 48, "mrsignerseam": 48,
                    "tee_tcb_svn2": 16, "mrtd": 48, "mrconfigid": 48, "mrowner": 48,
                    "mrownerconfig": 48, "servtd_hash": 48}
    _INT_FIELDS = {"seam_attributes": 64, "attributes": 64, "xfam": 64}

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        if not isinstance(self.version, str) or self.version not in VERSIONS:
            raise ConfigError(f"version must be one of {', '.join(VERSIONS)}, not {self.version!r}")
        if self.tee_tcb_svn is None:
            self.tee_tcb_svn = default_tee_tcb_svn(self.version)
        for name, size in self._BYTE_FIELDS.items():
            value = getattr(self, name)
            if value is None and name == "mac_key":
                continue
            if isinstance(value, str):
                value = _hex(name, value)
                setattr(self, name, value)
            if not isinstance(value, (bytes, bytearray)) or len(value) != size:
                raise ConfigError(f"{name} must be {size} bytes")
            setattr(self, name, bytes(value))
        for name, bits in self._INT_FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    value = int(value, 0)
                except ValueError:
                    raise ConfigError(f"{name}: not an integer: {value[:40]!r}") from None
                setattr(self, name, value)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
                raise ConfigError(f"{name} must be an integer in [0, 2**{bits})")
        # the seed is hashed as 8 bytes (resolved_mac_key)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < (1 << 64)):
            raise ConfigError("seed must be an integer in [0, 2**64)")
        if not isinstance(self.rtmr, (tuple, list)):
            raise ConfigError("rtmr must be 4 values of 48 bytes")
        rtmr = tuple(_hex("rtmr", r) if isinstance(r, str) else r for r in self.rtmr)
        if len(rtmr) != abi.TDX_NUM_RTMRS or any(not isinstance(r, (bytes, bytearray)) or len(r) != SHA384
                                                  for r in rtmr):
            raise ConfigError("rtmr must be 4 values of 48 bytes")
        self.rtmr = tuple(bytes(r) for r in rtmr)  # type: ignore[assignment]

    # ------------------------------------------------------------------ derived bytes
    @property
    def version_minor(self) -> int:
        return 0 if self.version == "1.0" else 5

    @property
    def servtd_bound(self) -> bool:
        """1.5: REPORTTYPE.VERSION is 1 when a service TD is bound (ref §4.3); we take a nonzero
        SERVTD_HASH to mean one is."""
        return self.version == "1.5" and any(self.servtd_hash)

    def resolved_mac_key(self) -> bytes:
        """The platform MAC key (ref §4.5 design choice): given, derived from the seed, or random."""
        if self.mac_key is not None:
            return self.mac_key
        if self.seed is not None:
            return hashlib.sha256(b"tdxmodel platform mac key\0" + self.seed.to_bytes(8, "little")).digest()
        key = os.urandom(abi.TDX_MAC_KEY_LEN)
        self.mac_key = key  # one platform, one key: later calls must agree
        return key

    def tee_tcb_info(self) -> bytes:
        """TEE_TCB_INFO as it appears at TDREPORT 256..494 (239 bytes, ref §4.4)."""
        b = bytearray(abi.TDX_TEE_TCB_INFO_LEN)
        valid = abi.TDX_TCB_VALID_1_5 if self.version == "1.5" else abi.TDX_TCB_VALID_1_0
        base = abi.TDR_OFF_TEE_TCB_INFO
        b[0:8] = valid.to_bytes(8, "little")
        b[abi.TDR_OFF_TEE_TCB_SVN - base:abi.TDR_OFF_TEE_TCB_SVN - base + 16] = self.tee_tcb_svn
        b[abi.TDR_OFF_MRSEAM - base:abi.TDR_OFF_MRSEAM - base + 48] = self.mrseam
        b[abi.TDR_OFF_MRSIGNERSEAM - base:abi.TDR_OFF_MRSIGNERSEAM - base + 48] = self.mrsignerseam
        b[abi.TDR_OFF_SEAM_ATTRIBUTES - base:abi.TDR_OFF_SEAM_ATTRIBUTES - base + 8] = self.seam_attributes.to_bytes(8, "little")
        if self.version == "1.5":
            b[abi.TDR_OFF_TEE_TCB_SVN2 - base:abi.TDR_OFF_TEE_TCB_SVN2 - base + 16] = self.tee_tcb_svn2
        return bytes(b[: abi.TDX_TEE_TCB_INFO_LEN])

    def tdinfo(self) -> bytes:
        """TDINFO_STRUCT as it appears at TDREPORT 512..1023 (512 bytes, ref §4.4)."""
        b = bytearray(abi.TDX_TDINFO_LEN)
        base = abi.TDR_OFF_TDINFO

        def put(off: int, data: bytes) -> None:
            b[off - base: off - base + len(data)] = data

        put(abi.TDR_OFF_ATTRIBUTES, self.attributes.to_bytes(8, "little"))
        put(abi.TDR_OFF_XFAM, self.xfam.to_bytes(8, "little"))
        put(abi.TDR_OFF_MRTD, self.mrtd)
        put(abi.TDR_OFF_MRCONFIGID, self.mrconfigid)
        put(abi.TDR_OFF_MROWNER, self.mrowner)
        put(abi.TDR_OFF_MROWNERCONFIG, self.mrownerconfig)
        for i, r in enumerate(self.rtmr):
            put(abi.TDR_OFF_RTMR0 + SHA384 * i, r)
        if self.version == "1.5":
            put(abi.TDR_OFF_SERVTD_HASH, self.servtd_hash)
        return bytes(b)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        """JSON/TOML-friendly: bytes as hex, the resolved MAC key included."""
        d: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "mac_key":
                v = self.resolved_mac_key()
            if isinstance(v, bytes):
                v = v.hex()
            elif f.name == "rtmr":
                v = [r.hex() for r in v]
            if v is not None:
                d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModuleConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration is a table of fields, not {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        if "rtmr" in kw:
            kw["rtmr"] = tuple(kw["rtmr"])
        return cls(**kw)

    @classmethod
    def from_toml(cls, path: "os.PathLike[str] | str") -> "ModuleConfig":
        """Read a TOML file: top-level keys are the field names; a [platform] and a [td] table are
        also accepted and merged."""
        p = pathlib.Path(path)
        return cls.from_toml_bytes(read_config_bytes(p), p)

    @classmethod
    def from_toml_bytes(cls, raw: bytes, path: "os.PathLike[str] | str" = "<config>") -> "ModuleConfig":
        """The TOML text ``raw`` (as read by ``read_config_bytes``); errors name ``path``."""
        p = pathlib.Path(path)
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: not valid TOML: {' '.join(str(e).split())}") from None
        except RecursionError:
            raise ConfigError(f"{p}: not valid TOML: nested too deeply") from None
        merged: Dict[str, Any] = {}
        for k, v in data.items():
            if k in ("platform", "td") and isinstance(v, dict):
                merged.update(v)
            elif k == "eventlog":
                continue  # the boot event log's [[eventlog.event]] tables: tdxmodel.eventlog reads them
            else:
                merged[k] = v
        return cls.from_dict(merged)


def default_tee_tcb_svn(version: str) -> bytes:
    """default_tee_tcb_svn(version) -> 16 bytes: 03 MM 01 00.., MM the module's major version in the
    byte verifiers name the module by (quote.md §5.5 step 4)."""
    svn = bytearray([3, 0, 1] + [0] * 13)
    svn[abi.TDX_TEE_TCB_SVN_MODULE_MAJOR_BYTE] = (abi.TDX_MODULE_MAJOR_1_0 if version == "1.0"
                                                  else abi.TDX_MODULE_MAJOR_1_5)
    return bytes(svn)


def read_config_bytes(path: "os.PathLike[str] | str", limit: int = MAX_CONFIG_BYTES) -> bytes:
    """read_config_bytes(path, limit=MAX_CONFIG_BYTES) -> bytes: the file's content, if it is a regular
    file of at most ``limit`` bytes; else ConfigError naming it. Opened non-blocking, so a FIFO is
    refused rather than waited on."""
    p = pathlib.Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{p}: not a regular file")
        if st.st_size > limit:
            raise ConfigError(f"{p}: larger than {limit} bytes; not a configuration file")
        data = read_fd_bounded(fd, limit)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{p}: larger than {limit} bytes; not a configuration file")
    return data


def read_fd_bounded(fd: int, limit: int) -> bytes:
    """Read fd to its end, but never more than limit + 1 bytes (so a caller can tell "too large")."""
    chunks, size = [], 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _hex(name: str, text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{name}: not a hex string") from None
