"""The host layer in plain Python: the platform clock and the VMM (KVM + QEMU + the quote service).

The reference of ``csrc/vmm_clock.c`` and ``csrc/vmm_host.c`` (docs/CONTRACT.md "Clock", "Host"):
the same checks in the same order, one commented line per row of quote.md §3.2 (KVM) and §4.1
(QEMU's H1-H9 and its completion steps 1-6). The host reaches guest memory only through pages the
guest shared; any other access fails (a modelling choice: the reference names only the failures).
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Dict, List, Optional

from tdxmodel import abi, host_faults
from tdxmodel.host_faults import TestQuoteProducer
from tdxmodel._reference.module import Module, _u64

CLOCK_KINDS = ("virtual", "real")
NEVER = (1 << 64) - 1
#: The virtual clock stops at 2**64-2 ns (about 584 years; NEVER is the due time of no completion):
#: a sleep or advance past it, or a due time past it, saturates there (docs/CONTRACT.md "Clock").
CLOCK_MAX_NS = NEVER - 1


def _add_ns(t: int, ns: int) -> int:
    return min(t + ns, CLOCK_MAX_NS)
TIMER_NS = abi.HOST_QGS_TIMEOUT_MS * 1_000_000
FAULT_QUEUE_MAX = 4096
HDR = abi.QUOTE_HDR_LEN


class Clock:
    """Clock(kind: str = "virtual", *, spin_us=0): the guest kernel's sleeps and the host's completions
    (spin_us: every real sleep spins its last spin_us, as csrc/vmm_clock.c does)."""

    def __init__(self, kind: str = "virtual", *, spin_us: float = 0) -> None:
        if kind not in CLOCK_KINDS:
            raise ValueError(f"clock kind must be one of {', '.join(CLOCK_KINDS)}, not {kind!r}")
        self._spin_ns = host_faults.clock_spin_ns(kind, spin_us)
        self._real = kind == "real"
        self._virtual_ns = 0
        self._epoch = time.monotonic_ns()
        self._guard = threading.Lock()
        self._listener = None

    @property
    def kind(self) -> str:
        return "real" if self._real else "virtual"

    @property
    def spin_us(self) -> float:
        return self._spin_ns / 1000

    def now_ns(self) -> int:
        if self._real:
            return time.monotonic_ns() - self._epoch
        with self._guard:
            return self._virtual_ns

    def _run_listener(self) -> None:
        with self._guard:
            fn = self._listener
        if fn is not None:
            fn(self.now_ns())

    def sleep_ns(self, ns: int) -> None:
        ns = _u64("ns", ns)
        if self._real:
            deadline = time.monotonic_ns() + ns
            if ns > self._spin_ns:
                time.sleep((ns - self._spin_ns) / 1e9)
            while self._spin_ns and time.monotonic_ns() < deadline:
                pass
        else:
            with self._guard:
                start = self._virtual_ns
            with self._guard:  # concurrent sleepers overlap: time moves to max(now, start + ns)
                self._virtual_ns = max(self._virtual_ns, _add_ns(start, ns))
        self._run_listener()

    def advance_ns(self, ns: int) -> None:
        ns = _u64("ns", ns)
        if self._real:
            raise ValueError("a real clock cannot be advanced; sleep_ns() instead")
        with self._guard:
            self._virtual_ns = _add_ns(self._virtual_ns, ns)
        self._run_listener()

    def poll(self) -> None:
        self._run_listener()

    def _set_listener(self, fn) -> bool:
        with self._guard:
            if fn is not None and self._listener is not None:
                return False
            self._listener = fn
            return True

    def __repr__(self) -> str:
        return f"<Clock {self.kind} at {self.now_ns()} ns, reference>"


class _Request:
    __slots__ = ("gpa", "size", "hdr", "payload", "due", "seq", "fault")

    def __init__(self, gpa, size, hdr, payload, due, seq, fault):
        self.gpa, self.size, self.hdr, self.payload = gpa, size, hdr, payload
        self.due, self.seq, self.fault = due, seq, fault


_DEFAULT = object()


class SharedHost:
    """SharedHost(*, producer=None): one host machine several TDs share, the quote service and QEMU's
    16 in-flight slots (quote.md §4.1 H6) counted across all of them (a modelling choice: QEMU counts
    per TD). ``attach(module, clock=None)`` gives each TD its VMM (a Host)."""

    def __init__(self, *, producer=_DEFAULT) -> None:
        if producer is _DEFAULT:
            producer = None
        _check_producer(producer)
        self._producer = producer
        self._lock = threading.Lock()
        self._c = {"hosts": 0, "in_flight": 0, "peak_in_flight": 0, "accepted": 0, "completed": 0, "retries": 0}

    @property
    def producer(self):
        return self._producer

    @property
    def slots(self) -> int:
        return abi.HOST_MAX_GET_QUOTE_REQUESTS

    def attach(self, module, *, clock=None) -> "Host":
        return Host(module, producer=self._producer, clock=clock, shared=self)

    def counters(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._c)

    # the attached Hosts' side (each with its own lock held; this lock is always taken last)
    def _take(self) -> bool:
        with self._lock:
            c = self._c
            if c["in_flight"] >= abi.HOST_MAX_GET_QUOTE_REQUESTS:
                return False
            c["in_flight"] += 1
            c["peak_in_flight"] = max(c["peak_in_flight"], c["in_flight"])
            return True

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._c[key] += n

    def __repr__(self) -> str:
        c = self.counters()
        return f"<SharedHost of {c['hosts']} TDs, {c['in_flight']}/{self.slots} in flight, reference>"


class Host:
    """Host(module, *, producer=None, clock=None, shared=None): the VMM behind TDG.VP.VMCALL (producer
    None: QEMU without a quote service, H5; shared: the SharedHost whose slots it takes)."""

    def __init__(self, module, *, producer=_DEFAULT, clock=None, shared=None) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"module must be a reference Module, not {type(module).__name__}")
        if shared is not None and not isinstance(shared, SharedHost):
            raise TypeError(f"shared must be a reference SharedHost, not {type(shared).__name__}")
        if clock is None or isinstance(clock, str):
            clock = Clock(clock or "virtual")
        if not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock or 'virtual'/'real', not {type(clock).__name__}")
        if producer is _DEFAULT:
            producer = None  # QEMU without quote-generation-socket: no quote service (H5)
        _check_producer(producer)
        self._module = module
        self._clock = clock
        self._producer = producer
        self._lock = threading.RLock()
        self._notify_vector = 0
        self._notify_apic = 0
        self._pending: List[_Request] = []
        self._watches: List[List[int]] = []  # [out_len gpa, second value]
        self._seq = 0
        self._queue: List[tuple] = []
        self._schedule: List[tuple] = []
        self._sched_pos = 0
        self._sched_cycle = False
        self._irq = None
        self._c = {"vmcalls": 0, "get_quotes": 0, "accepted": 0, "completed": 0, "in_flight": 0,
                   "leaked_slots": 0, "retries": 0, "interrupts": 0, "last_vector": 0}
        self._closed = False
        if not clock._set_listener(self._on_clock):
            raise ValueError("the module already has a host, or the clock already serves one")
        if not module._set_vmm(self):
            clock._set_listener(None)
            raise ValueError("the module already has a host, or the clock already serves one")
        self._shared_host = shared
        if shared is not None:
            shared._count("hosts")

    # ------------------------------------------------------------------ properties
    def _live(self) -> None:
        if self._closed:
            raise RuntimeError("Host is closed")

    def close(self) -> None:
        if not self._closed:
            self._module._set_vmm(None)
            self._clock._set_listener(None)
            self._closed = True
            if self._shared_host is not None:  # the TD goes away: its slots (leaked ones too) go back
                with self._lock:
                    held = self._c["in_flight"]
                self._shared_host._count("in_flight", -held)
                self._shared_host._count("hosts", -1)

    @property
    def shared(self):
        return self._shared_host

    @property
    def module(self):
        return self._module

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def producer(self):
        return self._producer

    @producer.setter
    def producer(self, p) -> None:
        _check_producer(p)
        self._live()
        with self._lock:
            self._producer = p

    @property
    def notify_vector(self) -> Optional[int]:
        self._live()
        with self._lock:
            return self._notify_vector or None

    # ------------------------------------------------------------------ faults
    def push_fault(self, fault=None, **params) -> None:
        f = host_faults.parse(fault, **params)
        self._live()
        with self._lock:
            if len(self._queue) == FAULT_QUEUE_MAX:
                raise ValueError("the host's fault queue is full")
            self._queue.append(f)

    def set_schedule(self, specs, cycle: bool = False) -> None:
        parsed = [host_faults.parse(s) for s in specs]
        self._live()
        with self._lock:
            self._schedule = parsed
            self._sched_pos = 0
            self._sched_cycle = bool(cycle)

    def clear_faults(self) -> None:
        self._live()
        with self._lock:
            self._queue = []
            self._schedule = []
            self._sched_pos = 0

    def _next_fault(self) -> tuple:
        if self._queue:
            return self._queue.pop(0)
        if self._schedule and self._sched_pos < len(self._schedule):
            f = self._schedule[self._sched_pos]
            self._sched_pos += 1
            if self._sched_cycle and self._sched_pos == len(self._schedule):
                self._sched_pos = 0
            return f
        return (abi.HOST_FAULT_NONE, host_faults.DEFAULT_SERVICE_NS, 0)

    # ------------------------------------------------------------------ guest memory via the shared EPT
    def _shared(self, gpa: int, n: int) -> bool:
        m = self._module
        if gpa + n > m._memory_pages * abi.TDX_PAGE_SIZE:
            return False
        if n == 0:
            return True
        first, last = gpa // abi.TDX_PAGE_SIZE, (gpa + n - 1) // abi.TDX_PAGE_SIZE
        return all(m._page_states[p] == 2 for p in range(first, last + 1))  # 2: shared

    def _read(self, gpa: int, n: int) -> Optional[bytes]:
        if not self._shared(gpa, n):
            return None
        return bytes(self._module._memory[gpa:gpa + n])

    def _write(self, gpa: int, data: bytes) -> bool:
        if not self._shared(gpa, len(data)):
            return False
        self._module._memory[gpa:gpa + len(data)] = data
        return True

    # ------------------------------------------------------------------ TDG.VP.VMCALL
    def _vmcall(self, regs: List[int]) -> None:
        """regs = [r10, r11, r12, r13, r14, r15], handled in place (module.tdvmcall calls this)."""
        with self._lock:
            self._c["vmcalls"] += 1
            if regs[0] != 0:
                r10 = abi.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED  # vendor-specific: nobody handles it
            elif regs[1] == abi.TDVMCALL_GET_QUOTE:
                r10 = self._get_quote(regs[2], regs[3])
            elif regs[1] == abi.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT:
                r10 = self._setup_event_notify(regs[2])
            elif regs[1] == abi.TDVMCALL_GET_TD_VM_CALL_INFO:
                r10 = self._get_td_vm_call_info(regs)
            else:  # MapGPA, ReportFatalError, ...: not modelled
                r10 = abi.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
            regs[0] = r10
        self._clock.poll()  # a request due at once completes before the guest's first check

    def _get_quote(self, r12: int, r13: int) -> int:
        c = self._c
        c["get_quotes"] += 1
        fault = self._next_fault()
        kind = fault[0]
        if not r12 & abi.TDX_GPA_SHARED_BIT:                              # KVM: a private GPA
            return abi.TDVMCALL_STATUS_INVALID_OPERAND
        gpa, size = r12 & ~abi.TDX_GPA_SHARED_BIT, r13                     # KVM strips the bit
        if size == 0:                                                     # H1
            return abi.TDVMCALL_STATUS_INVALID_OPERAND
        if gpa % abi.TDX_PAGE_SIZE or size % abi.TDX_PAGE_SIZE:           # H2
            return abi.TDVMCALL_STATUS_ALIGN_ERROR
        hdr = self._read(gpa, HDR)                                        # H3
        if hdr is None or struct.unpack_from("<Q", hdr, abi.QUOTE_HDR_OFF_VERSION)[0] != abi.GET_QUOTE_CMD_VER:
            return abi.TDVMCALL_STATUS_INVALID_OPERAND
        in_len = struct.unpack_from("<I", hdr, abi.QUOTE_HDR_OFF_IN_LEN)[0]
        if size > abi.HOST_GET_QUOTE_MAX_BUF_LEN or in_len > size - HDR:  # H4
            return abi.TDVMCALL_STATUS_INVALID_OPERAND
        if self._producer is None or kind == abi.HOST_FAULT_SERVICE_UNAVAILABLE:  # H5
            h = bytearray(hdr)
            struct.pack_into("<Q", h, abi.QUOTE_HDR_OFF_STATUS, abi.GET_QUOTE_SERVICE_UNAVAILABLE)
            self._write(gpa, bytes(h))
            return abi.TDVMCALL_STATUS_SUCCESS
        if kind == abi.HOST_FAULT_RETRY or not self._take_slot():          # H6
            c["retries"] += 1
            if self._shared_host is not None:
                self._shared_host._count("retries")
            return abi.TDVMCALL_STATUS_RETRY
        c["in_flight"] += 1                                               # H7: num++, the payload
        payload = self._read(gpa + HDR, in_len)
        if payload is None:
            c["leaked_slots"] += 1                                        # no num--: the slot leaks
            return abi.TDVMCALL_STATUS_INVALID_OPERAND
        if kind != abi.HOST_FAULT_NO_IN_FLIGHT:                           # H8: IN_FLIGHT now
            if not self._write(gpa + abi.QUOTE_HDR_OFF_STATUS, struct.pack("<Q", abi.GET_QUOTE_IN_FLIGHT)):
                c["leaked_slots"] += 1                                    # unreachable: H3 read it
                return abi.TDVMCALL_STATUS_INVALID_OPERAND
        service = min(fault[1], TIMER_NS)                                 # H9: start the task
        due = NEVER if kind == abi.HOST_FAULT_NEVER else _add_ns(self._clock.now_ns(), service)
        self._pending.append(_Request(gpa, size, hdr, payload, due, self._seq, fault))
        self._seq += 1
        c["accepted"] += 1
        if self._shared_host is not None:
            self._shared_host._count("accepted")
        return abi.TDVMCALL_STATUS_SUCCESS

    def _take_slot(self) -> bool:
        """H6's num < 16 (then num++): the TD's own count, or its SharedHost's across its TDs."""
        if self._shared_host is None:
            return self._c["in_flight"] < abi.HOST_MAX_GET_QUOTE_REQUESTS
        return self._shared_host._take()

    def _setup_event_notify(self, vector: int) -> int:
        # Out of range means "none registered" (quote.md §3.3); R10 INVALID_OPERAND and the previous
        # registration kept is our choice. One vCPU: APIC ID 0.
        if not abi.EVENT_NOTIFY_VECTOR_MIN <= vector <= abi.EVENT_NOTIFY_VECTOR_MAX:
            return abi.TDVMCALL_STATUS_INVALID_OPERAND
        self._notify_vector, self._notify_apic = vector, 0
        return abi.TDVMCALL_STATUS_SUCCESS

    @staticmethod
    def _get_td_vm_call_info(regs: List[int]) -> int:
        # Leaf 0: R11..R14 = 0; leaf 1: R11 bit 1 = SetupEventNotifyInterrupt; else INVALID_OPERAND (choice).
        leaf = regs[2]
        if leaf > 1:
            return abi.TDVMCALL_STATUS_INVALID_OPERAND
        regs[1] = abi.TDVMCALL_INFO_SETUP_EVENT_NOTIFY if leaf == 1 else 0
        regs[2] = regs[3] = regs[4] = 0
        return abi.TDVMCALL_STATUS_SUCCESS

    # ------------------------------------------------------------------ completion (quote.md §4.1)
    def _take_due(self, now: int) -> Optional[_Request]:
        due = [r for r in self._pending if r.due != NEVER and r.due <= now]
        if not due:
            return None
        r = min(due, key=lambda r: (r.due, r.seq))
        self._pending.remove(r)
        return r

    def _on_clock(self, now: int) -> None:
        while True:
            with self._lock:
                r = self._take_due(now)
                producer = self._producer
            if r is None:
                return
            self._complete(r, producer)

    def _complete(self, r: _Request, producer) -> None:
        kind, service_ns, fault_out_len = r.fault
        status, quote = abi.GET_QUOTE_SUCCESS, b""
        if service_ns >= TIMER_NS or kind == abi.HOST_FAULT_ERROR:
            status = abi.GET_QUOTE_ERROR                     # the 30 s timer, or the service said no
        elif producer is None:
            status = abi.GET_QUOTE_SERVICE_UNAVAILABLE       # the service went away
        else:
            report = qgs_request_report(r.payload)           # a pass-through VMM's QGS frame
            framed = report is not None
            cap = abi.HOST_GET_QUOTE_MAX_BUF_LEN - (_RESP_HDR if framed else 0)
            try:
                quote = bytes(producer.produce(report if framed else r.payload))
            except BaseException:
                status = abi.GET_QUOTE_ERROR
            else:
                if len(quote) > cap or len(quote) > r.size - abi.HOST_QUOTE_OVERHEAD:
                    status = abi.GET_QUOTE_ERROR             # the QGS frame exceeds size - 24
                elif framed:
                    quote = qgs_response_frame(quote)        # passed back framed
        irq = None
        with self._lock:
            out_len = 0
            if status == abi.GET_QUOTE_SUCCESS:
                out_len = len(quote)
                self._write(r.gpa + HDR, quote)              # 1: the quote at GPA + 24
                if kind == abi.HOST_FAULT_OVERSIZE_OUT_LEN:
                    out_len = fault_out_len or r.size
            hdr = bytearray(r.hdr)
            struct.pack_into("<Q", hdr, abi.QUOTE_HDR_OFF_STATUS, status)   # 2
            struct.pack_into("<I", hdr, abi.QUOTE_HDR_OFF_OUT_LEN, out_len)
            # 3: smp_wmb (the GIL orders these writes); 4: the header
            written = self._write(r.gpa, bytes(hdr))
            if written:
                self._c["completed"] += 1
            if status == abi.GET_QUOTE_SUCCESS and kind == abi.HOST_FAULT_OUT_LEN_CHANGES:
                self._watches.append([r.gpa + abi.QUOTE_HDR_OFF_OUT_LEN, fault_out_len or r.size])
            if self._notify_vector and kind != abi.HOST_FAULT_NO_INTERRUPT:  # 5
                self._c["interrupts"] += 1
                self._c["last_vector"] = self._notify_vector
                irq = (self._irq, self._notify_vector)
            self._c["in_flight"] -= 1                        # 6: num--
            if self._shared_host is not None:
                self._shared_host._count("in_flight", -1)
                if written:
                    self._shared_host._count("completed")
        if irq is not None and irq[0] is not None:
            irq[0](irq[1])

    # ------------------------------------------------------------------ hooks and inspection
    def _set_irq(self, fn) -> None:
        with self._lock:
            self._irq = fn

    def _clear_irq(self, fn) -> None:
        """Remove the handler if it is fn (a guest kernel going away)."""
        with self._lock:
            if self._irq == fn:
                self._irq = None

    def _next_due_ns(self):
        """When the next pending request completes, or None if none will (vmm_host_next_due_ns)."""
        with self._lock:
            dues = [r.due for r in self._pending if r.due != NEVER]
        return min(dues) if dues else None

    def guest_read(self, gpa: int, n: int) -> None:
        gpa, n = _u64("gpa", gpa) & ~abi.TDX_GPA_SHARED_BIT, _u64("n", n)
        self._live()
        with self._lock:
            for w in list(self._watches):
                if gpa <= w[0] and w[0] + 4 <= gpa + n:
                    self._write(w[0], struct.pack("<I", w[1]))
                    self._watches.remove(w)

    def counters(self) -> Dict[str, int]:
        self._live()
        with self._lock:
            return dict(self._c)

    def __repr__(self) -> str:
        return f"<Host on {self._module!r}, {self._clock!r}, reference>"


_RESP_HDR = abi.QGS_FRAME_LEN_SIZE + abi.QGS_GET_QUOTE_RESP_LEN


def qgs_request_report(payload: bytes) -> Optional[bytes]:
    """The report inside ``payload`` when it is one whole valid QGS GET_QUOTE_REQ frame (quote.md
    §4.2), else None (QGS's raw mode). A VMM that hands QGS the guest's message unchanged (the
    downstream kernels' hosts, quote.md §2.6-§2.7) gets a framed answer for it (csrc/vmm_host.h)."""
    n = len(payload)
    if n < abi.QGS_FRAME_LEN_SIZE + abi.QGS_GET_QUOTE_REQ_LEN:
        return None
    if int.from_bytes(payload[:4], "big") != n - abi.QGS_FRAME_LEN_SIZE:
        return None
    major, _minor, mtype, size, _err, report_size, id_list_size = struct.unpack_from("<HHIIIII", payload, 4)
    if major != abi.QGS_MSG_LIB_MAJOR_VER or mtype != abi.QGS_MSG_GET_QUOTE_REQ or size != n - 4 \
            or report_size == 0 or abi.QGS_GET_QUOTE_REQ_LEN + report_size + id_list_size != size:
        return None
    off = abi.QGS_FRAME_LEN_SIZE + abi.QGS_GET_QUOTE_REQ_LEN
    return bytes(payload[off:off + report_size])


def qgs_response_frame(quote: bytes) -> bytes:
    """A GET_QUOTE_RESP frame around ``quote`` (no selected id, error_code 0; quote.md §4.2)."""
    size = abi.QGS_GET_QUOTE_RESP_LEN + len(quote)
    return (size.to_bytes(4, "big")
            + struct.pack("<HHIIIII", abi.QGS_MSG_LIB_MAJOR_VER, abi.QGS_MSG_LIB_MINOR_VER,
                          abi.QGS_MSG_GET_QUOTE_RESP, size, 0, 0, len(quote)) + quote)


def _check_producer(p) -> None:
    if p is not None and not callable(getattr(p, "produce", None)):
        raise TypeError("producer must have a produce(payload: bytes) -> bytes method, or be None")
