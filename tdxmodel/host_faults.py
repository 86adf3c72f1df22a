"""The host fault menu as data (layer 0): parse a fault spec into the (kind, service_ns, out_len) both
backends' hosts take.

A spec is ``None`` (QEMU's behaviour), a name from ``abi.HOST_FAULTS``, or a dict
``{"fault": name or None, "seconds": service time, "out_len": value}``. ``seconds`` (default
``abi.HOST_SERVICE_TIME_US``, quote.md §2.5) is how long the quote takes under every fault that
completes; ``out_len`` is the value ``oversize_out_len`` writes and the second value
``out_len_changes`` shows (default 0: the buffer size, just beyond the buffer).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Optional, Tuple

from tdxmodel import abi

DEFAULT_SERVICE_NS = abi.HOST_SERVICE_TIME_US * 1000
_MAX_NS = (1 << 64) - 2  # UINT64_MAX means "never" inside the core


def fault_kind(name: Optional[str]) -> int:
    if name is None:
        return abi.HOST_FAULT_NONE
    if not isinstance(name, str) or name not in abi.HOST_FAULTS:
        raise ValueError(f"unknown host fault {name!r}; choose one of {', '.join(abi.HOST_FAULTS)} or None")
    return abi.VALUES["HOST_FAULT_" + name.upper()]


def fault_name(kind: int) -> Optional[str]:
    return None if kind == abi.HOST_FAULT_NONE else abi.HOST_FAULTS[kind - 1]


def parse(spec: Any = None, **params) -> Tuple[int, int, int]:
    """parse(spec=None, **params) -> (kind, service_ns, out_len); ValueError/TypeError on bad input."""
    if isinstance(spec, dict):
        if params:
            raise TypeError("give a fault spec as a dict or as keywords, not both")
        params = dict(spec)
        spec = params.pop("fault", None)
    kind = fault_kind(spec)
    unknown = set(params) - {"seconds", "out_len"}
    if unknown:
        raise ValueError(f"unknown host fault parameter(s): {', '.join(sorted(unknown))}")
    seconds = params.get("seconds")
    if seconds is None:
        if kind == abi.HOST_FAULT_SERVICE_TIME:
            raise ValueError("the service_time fault needs seconds=")
        service_ns = DEFAULT_SERVICE_NS
    else:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be finite and >= 0, got {seconds}")
        service_ns = min(int(round(seconds * 1e9)), _MAX_NS)
    out_len = params.get("out_len", 0)
    if isinstance(out_len, bool) or not isinstance(out_len, int):
        raise TypeError(f"out_len must be an int, not {type(out_len).__name__}")
    if not 0 <= out_len <= 0xFFFFFFFF:
        raise ValueError(f"out_len is a u32, got {out_len}")
    return kind, service_ns, out_len


#: The longest spinning end of a real-clock sleep (csrc/vmm_clock.h VMM_CLOCK_MAX_SPIN_NS).
CLOCK_MAX_SPIN_US = 1_000_000


def clock_spin_ns(kind: str, spin_us: Any) -> int:
    """The spinning end of every sleep of a ``kind`` clock, in ns, from ``spin_us`` (a number of
    microseconds, 0 to CLOCK_MAX_SPIN_US; real clocks only). TypeError/ValueError on bad input."""
    if isinstance(spin_us, bool) or not isinstance(spin_us, (int, float)):
        raise TypeError(f"spin_us must be a number, not {type(spin_us).__name__}")
    if not math.isfinite(spin_us) or not 0 <= spin_us <= CLOCK_MAX_SPIN_US:
        raise ValueError(f"spin_us must be between 0 and {CLOCK_MAX_SPIN_US:,}, got {spin_us}")
    if spin_us and kind != "real":
        raise ValueError("spin_us needs a real clock: a virtual clock's sleeps take no time")
    return int(round(spin_us * 1000))


class TestQuoteProducer:
    """TestQuoteProducer(): a TEST quote producer. Its bytes are NOT a DCAP quote.

    ``produce(payload) -> b"tdxmodel-testq-1" + SHA-384(payload) + payload``: bytes derived from the
    TDREPORT, so a test can tell which request's bytes reached the caller. The core backend runs the
    same function in C (``vmm_test_producer``).
    """

    __test__ = False  # not a pytest class
    MAGIC = b"tdxmodel-testq-1"

    def produce(self, payload) -> bytes:
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        payload = bytes(payload)
        return self.MAGIC + hashlib.sha384(payload).digest() + payload

    def __repr__(self) -> str:
        return "<TestQuoteProducer (test bytes, not a DCAP quote)>"
