# The host layer: the platform clock and the VMM (KVM + QEMU + the quote service), thin wrappers of
# csrc/vmm_clock.h and csrc/vmm_host.h (docs/CONTRACT.md "Clock", "Host", "TestQuoteProducer").

from libc.stdlib cimport malloc, free
from tdxmodel._core.vmm_host cimport *

from tdxmodel import host_faults as _host_faults
from tdxmodel.host_faults import TestQuoteProducer

_CLOCK_KINDS = ("virtual", "real")


cdef class Clock:
    """Clock(kind: str = "virtual", *, spin_us: float = 0)

    The one platform clock: the guest kernel's sleeps and the host's completions. "virtual" moves only
    when someone sleeps or advances it (a 30 s timeout takes no wall time); "real" is CLOCK_MONOTONIC.
    spin_us (real only): every sleep spends its last spin_us awake, spinning, so it ends on time where
    an idle CPU wakes late (a VM's vCPU can take a millisecond); a busy CPU per sleeper for that long.
    """

    cdef vmm_clock *ptr

    def __cinit__(self, *args, **kwargs):
        self.ptr = NULL

    def __init__(self, kind="virtual", *, spin_us=0):
        if kind not in _CLOCK_KINDS:
            raise ValueError(f"clock kind must be one of {', '.join(_CLOCK_KINDS)}, not {kind!r}")
        cdef uint64_t spin_ns = _host_faults.clock_spin_ns(kind, spin_us)
        if self.ptr != NULL:
            raise RuntimeError("Clock is already initialised")
        self.ptr = vmm_clock_create(1 if kind == "real" else 0, spin_ns)
        if self.ptr == NULL:
            raise MemoryError("cannot allocate a clock")

    def __dealloc__(self):
        if self.ptr != NULL:
            vmm_clock_destroy(self.ptr)
            self.ptr = NULL

    @property
    def kind(self):
        """kind -> str: "virtual" or "real"."""
        return "real" if vmm_clock_is_real(self.ptr) else "virtual"

    @property
    def spin_us(self):
        """spin_us -> float: the spinning end of every sleep, in microseconds (0: plain sleeps)."""
        return vmm_clock_spin_ns(self.ptr) / 1000.0

    def now_ns(self):
        """now_ns() -> int: nanoseconds since the clock was made."""
        return vmm_clock_now_ns(self.ptr)

    def sleep_ns(self, ns):
        """sleep_ns(ns: int) -> None: sleep (virtual: move time on), then let the host complete what is due."""
        cdef uint64_t n = _u64(ns, "ns")
        with nogil:
            vmm_clock_sleep_ns(self.ptr, n)

    def advance_ns(self, ns):
        """advance_ns(ns: int) -> None: virtual only (ValueError on a real clock)."""
        cdef uint64_t n = _u64(ns, "ns")
        cdef int rc
        with nogil:
            rc = vmm_clock_advance_ns(self.ptr, n)
        if rc != 0:
            raise ValueError("a real clock cannot be advanced; sleep_ns() instead")

    def poll(self):
        """poll() -> None: let the host complete what is due now."""
        with nogil:
            vmm_clock_poll(self.ptr)

    def __repr__(self):
        return f"<Clock {self.kind} at {self.now_ns()} ns, core>"


cdef int _py_produce(void *ctx, const uint8_t *inp, size_t in_len, uint8_t *out, size_t cap,
                     size_t *out_len) noexcept with gil:
    """A Python producer called from C (any thread): 0 and the bytes, or 1 when it raised."""
    cdef bytes q
    try:
        q = bytes((<object>ctx).produce(PyBytes_FromStringAndSize(<const char *>inp, in_len)))
    except BaseException:
        return 1
    out_len[0] = len(q)
    if <size_t>len(q) <= cap:
        memcpy(out, <const char *>q, len(q))
    return 0


_DEFAULT = object()


cdef class SharedHost:
    """SharedHost(*, producer=None)

    One host machine several TDs share: the quote service (``producer``, as for Host) and QEMU's 16
    in-flight GetQuote slots (quote.md §4.1 H6) counted across all of them, so the 17th request in
    flight, from whichever TD, gets R10 RETRY. ``attach(module, clock=None)`` gives each TD its VMM
    (a Host: its own notify vector, pending requests, faults and counters). A modelling choice:
    QEMU counts per TD (one tdx-guest object each); this is one host-wide service with that limit.
    """

    cdef vmm_slots *ptr
    cdef object _producer
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self.ptr = vmm_slots_create()
        if self.ptr == NULL:
            raise MemoryError("cannot allocate a shared host")

    def __init__(self, *, producer=_DEFAULT):
        if producer is _DEFAULT:
            producer = None
        if producer is not None and not callable(getattr(producer, "produce", None)):
            raise TypeError("producer must have a produce(payload: bytes) -> bytes method, or be None")
        self._producer = producer

    def __dealloc__(self):
        # every Host attached keeps this object alive, so none is left when this runs
        if self.ptr != NULL:
            vmm_slots_destroy(self.ptr)
            self.ptr = NULL

    @property
    def producer(self):
        return self._producer

    @property
    def slots(self):
        """slots -> int: the in-flight requests it accepts at once (QEMU's TDX_MAX_GET_QUOTE_REQUEST)."""
        return _abi.HOST_MAX_GET_QUOTE_REQUESTS

    def attach(self, module, *, clock=None):
        """attach(module, *, clock=None) -> Host: the VMM of one more TD on this host."""
        return Host(module, producer=self._producer, clock=clock, shared=self)

    def counters(self):
        """counters() -> dict: hosts (TDs attached now), in_flight, peak_in_flight, accepted,
        completed, retries (sums over its TDs)."""
        cdef vmm_slots_counters c
        with nogil:
            vmm_slots_get_counters(self.ptr, &c)
        return {"hosts": c.hosts, "in_flight": c.in_flight, "peak_in_flight": c.peak_in_flight,
                "accepted": c.accepted, "completed": c.completed, "retries": c.retries}

    def __repr__(self):
        c = self.counters()
        return f"<SharedHost of {c['hosts']} TDs, {c['in_flight']}/{self.slots} in flight, core>"


cdef class Host:
    """Host(module, *, producer=None, clock=None, shared=None)

    The VMM behind the module's TDG.VP.VMCALL: KVM, QEMU's GetQuote / SetupEventNotifyInterrupt /
    GetTdVmCallInfo handlers (quote.md §3, §4.1 H1-H9) and the quote service. ``producer`` has
    ``produce(payload: bytes) -> bytes`` (the TDQE: ``tdxmodel.host.quote_producer()``; a test:
    ``TestQuoteProducer()``); None, the default, is QEMU without a quote service (H5). ``clock``:
    a Clock, or "virtual" / "real"; default a new virtual clock. ``shared``: a SharedHost whose
    in-flight slots this TD's requests take (``SharedHost.attach`` passes it).
    """

    cdef vmm_host *ptr
    cdef object _module, _clock, _producer, _native, _shared

    def __cinit__(self, *args, **kwargs):
        self.ptr = NULL

    def __init__(self, module, *, producer=_DEFAULT, clock=None, shared=None):
        if self.ptr != NULL:
            raise RuntimeError("Host is already initialised")
        if shared is not None and not isinstance(shared, SharedHost):
            raise TypeError(f"shared must be a core SharedHost, not {type(shared).__name__}")
        if not isinstance(module, Module):
            raise TypeError(f"module must be a core Module, not {type(module).__name__}")
        if clock is None or isinstance(clock, str):
            clock = Clock(clock or "virtual")
        if not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock or 'virtual'/'real', not {type(clock).__name__}")
        if producer is _DEFAULT:
            producer = None  # QEMU without quote-generation-socket: no quote service (H5)
        if producer is not None and not callable(getattr(producer, "produce", None)):
            raise TypeError("producer must have a produce(payload: bytes) -> bytes method, or be None")
        self._module = module
        self._clock = clock
        self._producer = producer
        self.ptr = vmm_host_create((<Module>module)._live(), (<Clock>clock).ptr, NULL, NULL)
        if self.ptr == NULL:
            raise ValueError("the module already has a host, or the clock already serves one")
        if shared is not None:
            vmm_host_share_slots(self.ptr, (<SharedHost>shared).ptr)  # a new host: cannot fail
            self._shared = shared
        self._install_producer()

    cdef _install_producer(self):
        p = self._producer
        if p is None:
            vmm_host_set_producer(self.ptr, NULL, NULL)
        elif type(p) is TestQuoteProducer:
            vmm_host_set_producer(self.ptr, vmm_test_producer, NULL)
        elif _native_tdqe(p) is not None:
            # The emulated TDQE on the core: the quote service calls it in C (tdqe.pxi); the same
            # bytes and refusals as its produce(), without a Python call per quote.
            self._native = _native_tdqe(p)
            vmm_host_set_producer(self.ptr, _tdqe_host_produce, <void *>&(<TdqeCore>self._native).native)
            return
        else:
            vmm_host_set_producer(self.ptr, _py_produce, <void *>p)
        self._native = None

    def __dealloc__(self):
        if self.ptr != NULL:
            with nogil:
                vmm_host_destroy(self.ptr)
            self.ptr = NULL

    cdef inline vmm_host *_live(self) except NULL:
        if self.ptr == NULL:
            raise RuntimeError("Host is closed")
        return self.ptr

    def close(self):
        """close() -> None: detach from the module and the clock (pending requests are dropped)."""
        if self.ptr != NULL:
            with nogil:
                vmm_host_destroy(self.ptr)
            self.ptr = NULL

    @property
    def module(self):
        return self._module

    @property
    def clock(self):
        return self._clock

    @property
    def shared(self):
        """shared -> SharedHost | None: the host machine this TD shares, if any."""
        return self._shared

    @property
    def producer(self):
        return self._producer

    @producer.setter
    def producer(self, p):
        if p is not None and not callable(getattr(p, "produce", None)):
            raise TypeError("producer must have a produce(payload: bytes) -> bytes method, or be None")
        self._live()
        old = self._producer
        self._producer = p
        self._install_producer()
        del old

    @property
    def notify_vector(self):
        """notify_vector -> int | None: the vector SetupEventNotifyInterrupt registered."""
        cdef unsigned v
        cdef vmm_host *h = self._live()
        with nogil:
            v = vmm_host_notify_vector(h)
        return v if v else None

    def push_fault(self, fault=None, **params):
        """push_fault(fault=None, *, seconds=..., out_len=...) -> None: the next GetQuote's behaviour."""
        cdef vmm_fault f
        cdef int rc
        kind, service_ns, out_len = _host_faults.parse(fault, **params)
        f.kind = kind
        f.service_ns = service_ns
        f.out_len = out_len
        cdef vmm_host *h = self._live()
        with nogil:
            rc = vmm_host_push_fault(h, &f)
        if rc != 0:
            raise ValueError("the host's fault queue is full")

    def set_schedule(self, specs, cycle=False):
        """set_schedule(specs: list, cycle: bool = False) -> None: one spec per GetQuote once the
        pushed faults are used up; QEMU's behaviour after the end unless cycle."""
        cdef vmm_fault *arr
        cdef size_t n, i
        cdef int rc, cyc
        cdef vmm_host *h
        parsed = [_host_faults.parse(s) for s in specs]
        n = len(parsed)
        arr = <vmm_fault *>malloc((n if n else 1) * sizeof(vmm_fault))
        if arr == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                arr[i].kind, arr[i].service_ns, arr[i].out_len = parsed[i]
            h = self._live()
            cyc = 1 if cycle else 0
            with nogil:
                rc = vmm_host_set_schedule(h, arr, n, cyc)
        finally:
            free(arr)
        if rc != 0:
            raise MemoryError()

    def clear_faults(self):
        """clear_faults() -> None: QEMU's behaviour from the next request."""
        cdef vmm_host *h = self._live()
        with nogil:
            vmm_host_clear_faults(h)

    def guest_read(self, gpa, n):
        """guest_read(gpa: int, n: int) -> None: the guest read shared bytes (out_len_changes hook)."""
        cdef uint64_t g = _u64(gpa, "gpa")
        cdef size_t count = _count(n, "n", _U64_MAX)
        cdef vmm_host *h = self._live()
        with nogil:
            vmm_host_guest_read(h, g, count)

    def counters(self):
        """counters() -> dict: vmcalls, get_quotes, accepted, completed, in_flight, leaked_slots,
        retries, interrupts, last_vector."""
        cdef vmm_counters c
        cdef vmm_host *h = self._live()
        with nogil:
            vmm_host_get_counters(h, &c)
        return {"vmcalls": c.vmcalls, "get_quotes": c.get_quotes, "accepted": c.accepted,
                "completed": c.completed, "in_flight": c.in_flight, "leaked_slots": c.leaked_slots,
                "retries": c.retries, "interrupts": c.interrupts, "last_vector": c.last_vector}

    def __repr__(self):
        return f"<Host on {self._module!r}, {self._clock!r}, core>"
