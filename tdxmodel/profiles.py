"""Driver generations as data: one ``Profile`` per generation (layer 0, beside ``tdxmodel.abi``).

A profile is the only place a generation is described: its device node, every ioctl command with its
request layout, the status-to-errno map, the injection points in the order the driver reaches them,
its locks, its measurement files, and the quote-provider traits. Everything else reads it:

* ``python -m tdxmodel._gen_abi`` writes ``PROFILES`` into ``csrc/tdx_abi.h`` as ``TDXM_PROFILES[]``
  (one row per generation; ``.ops`` names the C ops table ``csrc/tdx_driver.c`` dispatches through),
  and ``tests/test_abi_drift.py`` fails when the header and this table drift;
* the reference model picks its driver class by ``Profile.ops``; the Cython layer, ``errors``,
  the campaign, the client, the transports, the benchmarks, the pytest plugin and the proofs read the
  fields below. Code never compares a generation's name: it asks the profile
  (``p.has_lock("mr_lock")``, ``p.report.field("tdreport")``, ``p.cached_report_buf`` ...).

Adding a generation (CONTRIBUTING.md "Adding a driver generation" is the worked example): append a
``Profile`` to ``PROFILES`` (reusing an ``ops`` when its ioctl paths are those of an existing
generation, e.g. a quote provider that only adds ``quote`` traits), add any new injection point to
``POINTS`` and any new ioctl number to ``tdxmodel.abi``, regenerate, and write the ops (C) and driver
class (reference) only if the generation has a step table of its own.

Every fact cites its section of ``shared/reference/tdx-abi.md`` (ref §N) or ``quote.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Mapping, Optional, Tuple

from tdxmodel import abi

IN = "in"     # user -> kernel (copy_from_user)
OUT = "out"   # kernel -> user (copy_to_user)


@dataclass(frozen=True)
class Field:
    """One region of an ioctl request: ``size`` bytes at ``offset`` from ``arg``."""

    name: str
    offset: int
    size: int
    direction: str   # IN or OUT

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Command:
    """An ioctl command and the layout of the request ``arg`` points to."""

    key: str                    # what code asks for: "report", "extend_rtmr", "verify_report", ...
    name: str                   # the tdxmodel.abi constant of its number
    request_len: int            # bytes of the request
    fields: Tuple[Field, ...]
    ref: str
    # The command's own status-to-errno map where it differs from the generation's (the report's):
    # (status >> 32, errno) pairs and the errno of any other failing status.
    errno_map: Optional[Tuple[Tuple[int, int], ...]] = None
    errno_default: Optional[int] = None
    points: Tuple[str, ...] = ()     # the injection points its path can pass, in order
    # it extends RTMR[index field] with the data field (a served TD persists it to the state
    # directory, README "The state directory", as 6.16's measurement-file writes)
    extends_rtmr: bool = False

    @property
    def value(self) -> int:
        return abi.VALUES[self.name]

    @property
    def in_place(self) -> bool:
        """The output overwrites the input (v4's one buffer, ref §2.2) rather than following it."""
        return self.field("tdreport").offset == self.field("reportdata").offset

    @property
    def client_layout(self) -> str:
        """The layout argument of the C test clients (tests/clients/*.c): "v4" in place, "v6" struct."""
        return "v4" if self.in_place else "v6"

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


@dataclass(frozen=True)
class Measurement:
    """A sysfs measurement file (ref §2.5 "Measurement files"): 48 bytes of the TDREPORT."""

    name: str
    tdr_offset: int
    mode: int          # 0o644 (LIVE | WRITABLE: the RTMRs) or 0o444

    @property
    def writable(self) -> bool:
        return bool(self.mode & 0o200)

    @property
    def live(self) -> bool:
        """LIVE registers are refreshed from a new REPORT when the cache is stale (the RTMRs)."""
        return self.writable


#: The provider's completion modes (a kernel option, ``Kernel(..., quote_completion=)``).
COMPLETION_MODES = ("stock", "poll", "interrupt")
#: The sleeps the ``poll`` mode can take between checks.
POLL_SLEEPS = ("msleep", "usleep_range")
#: CONFIG_HZ values the jiffy model takes; 0 sleeps exactly the time asked (no tick rounding).
HZ_CHOICES = (0, 100, 250, 300, 1000)


@dataclass(frozen=True)
class QuoteCompletion:
    """How the tdx_guest provider waits for the host after GetQuote (quote.md §2.4-§2.6, §3.3).

    * ``stock``: the loop as written (30 ``msleep_interruptible(1000)`` polls with its off-by-one; a
      signal gives -EINTR); ``interval_ms`` and ``cap_ms`` are not used;
    * ``poll``: the proposed ``read_poll_timeout()`` variant (quote.md §2.5): check, and after
      ``cap_ms`` has passed check once more (-ETIMEDOUT only if still IN_FLIGHT then), else sleep
      ``interval_ms`` (``sleep``: ``msleep``, as the Feb 2026 patch that was measured, or
      ``usleep_range`` as read_poll_timeout() itself). Both sleeps are uninterruptible, so a signal
      does not end this wait;
    * ``interrupt``: the guest registers ``abi.QUOTE_NOTIFY_VECTOR`` at init with
      SetupEventNotifyInterrupt (TDVMCALL 0x10004) and waits for the host's injection with no timeout
      (``wait_for_completion_interruptible``, the downstream driver's way, quote.md §2.6): a signal
      gives -EINTR and leaves the buffer to the host; under the ``no_interrupt`` host fault the quote
      is done but nothing wakes the waiter, so it waits until a signal.

    ``hz`` is CONFIG_HZ for the msleep sleeps (0: sleep exactly the time asked). With HZ > 0,
    ``msleep(m)`` is ``schedule_timeout(msecs_to_jiffies(m) + 1)`` on the timer wheel, which fires in
    the bucket after the expiry at the level's granularity (kernel/time/timer.c ``calc_index``): at
    HZ=1000 msleep(1) sleeps 2-3 ms, msleep(5) 6-7 ms and msleep(1000) 1001-1065 ms.
    """

    mode: str = "stock"
    interval_ms: int = abi.GETQUOTE_POLL_MS
    cap_ms: int = abi.GETQUOTE_TIMEOUT * abi.GETQUOTE_POLL_MS
    sleep: str = "msleep"
    hz: int = 0

    @property
    def mode_id(self) -> int:
        return abi.VALUES["QUOTE_WAIT_" + self.mode.upper()]

    @property
    def sleep_id(self) -> int:
        return abi.VALUES["QUOTE_SLEEP_" + self.sleep.upper()]

    @property
    def label(self) -> str:
        """The bench's name for it: ``poll-1000`` (stock), ``poll-N``, ``interrupt``."""
        if self.mode == "stock":
            return f"poll-{abi.GETQUOTE_POLL_MS}"
        return f"poll-{self.interval_ms}" if self.mode == "poll" else "interrupt"


STOCK_COMPLETION = QuoteCompletion()


def quote_completion(spec: Any = None, **params) -> QuoteCompletion:
    """quote_completion(spec=None, **params) -> QuoteCompletion: a ``QuoteCompletion``, a mode name
    (``"stock"``, ``"poll"``: 5 ms with a 2 s cap, ``"interrupt"``), or a dict ``{"mode": ...,
    "interval_ms": ..., "cap_ms": ..., "sleep": ..., "hz": ...}``; keywords override. ValueError or
    TypeError naming the bad part."""
    if isinstance(spec, QuoteCompletion):
        base = {"mode": spec.mode, "hz": spec.hz}
        if spec.mode == "poll":
            base.update(interval_ms=spec.interval_ms, cap_ms=spec.cap_ms, sleep=spec.sleep)
    elif isinstance(spec, dict):
        base = dict(spec)
    elif spec is None or isinstance(spec, str):
        base = {"mode": spec or "stock"}
    else:
        raise TypeError(f"quote_completion must be a QuoteCompletion, a mode name or a dict, not "
                        f"{type(spec).__name__}")
    base.update(params)
    unknown = set(base) - {"mode", "interval_ms", "cap_ms", "sleep", "hz"}
    if unknown:
        raise ValueError(f"quote_completion: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    mode = base.get("mode", "stock")
    if mode not in COMPLETION_MODES:
        raise ValueError(f"quote_completion mode must be one of {', '.join(COMPLETION_MODES)}, not {mode!r}")
    if mode == "poll":
        base.setdefault("interval_ms", abi.QUOTE_POLL_PROPOSED_MS)
        base.setdefault("cap_ms", abi.QUOTE_POLL_CAP_MS)
    elif set(base) & {"interval_ms", "cap_ms", "sleep"}:
        raise ValueError(f"quote_completion: interval_ms, cap_ms and sleep belong to mode 'poll', not {mode!r}")
    for key, lo, hi in (("interval_ms", 1, 3_600_000), ("cap_ms", 0, 3_600_000)):
        v = base.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise TypeError(f"quote_completion {key} must be an int, not {type(v).__name__}")
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"quote_completion {key} must be in {lo}..{hi}, got {v}")
    if base.get("sleep", "msleep") not in POLL_SLEEPS:
        raise ValueError(f"quote_completion sleep must be one of {', '.join(POLL_SLEEPS)}, not {base['sleep']!r}")
    hz = base.get("hz", 0)
    if isinstance(hz, bool) or not isinstance(hz, int) or hz not in HZ_CHOICES:
        raise ValueError(f"quote_completion hz must be one of {', '.join(map(str, HZ_CHOICES))}, not {hz!r}")
    if mode == "stock":
        return replace(STOCK_COMPLETION, hz=hz)
    return QuoteCompletion(**base)


def msleep_ns(ms: int, hz: int, now_ns: int) -> int:
    """How long ``msleep(ms)`` started at ``now_ns`` on the platform clock sleeps, in ns (the jiffy
    model of ``QuoteCompletion``; hz 0: exactly ms). The C core computes the same
    (csrc/tsm_report.c ``msleep_duration_ns``)."""
    if hz == 0:
        return ms * 1_000_000
    tick = 1_000_000_000 // hz
    timeout = -(-ms * hz // 1000) + 1                   # msecs_to_jiffies(ms) + 1
    jiffies = now_ns // tick
    expires = jiffies + timeout
    lvl = 0                                             # calc_wheel_index: level by delta
    while lvl < abi.TIMER_LVL_DEPTH - 1 and timeout >= ((1 << abi.TIMER_LVL_BITS) - 1) << (lvl * abi.TIMER_LVL_CLK_SHIFT):
        lvl += 1
    shift = lvl * abi.TIMER_LVL_CLK_SHIFT
    bucket = ((expires >> shift) + 1) << shift          # calc_index: round up, one bucket out
    return bucket * tick - now_ns


@dataclass(frozen=True)
class Quote:
    """The quote path of a configfs-tsm generation: the tsm report core (quote.md §1) and the
    tdx_guest provider (quote.md §2.2-§2.4)."""

    buf_size: int               # GET_QUOTE_BUF_SIZE (quote.md §2.2)
    outblob_max: int            # TSM_OUTBLOB_MAX, configfs cb_max_size of outblob (quote.md §1.1)
    no_provider_errno: int      # outblob read with no provider, R3 (quote.md §1.5)
    visibility_callbacks: bool  # 6.11+: is_visible callbacks instead of fixed item types (quote.md §1.2)
    provider_gone_enxio: bool   # 6.16+: provider reads -ENXIO after unregister; before: NULL deref (§1.7)
    counts_items: bool          # 6.16+: registering with items present is -EBUSY (quote.md §1.6)
    out_len_once: bool          # c3fd16c3b98e: out_len read once, > size - 24 -> -EFBIG (P9)
    status_check: bool          # 0f409eaea53e: status != SUCCESS -> -EIO (P8)
    # The documented errno set of read(outblob), the call that returns the quote (0 implied):
    # quote.md §1.5 R1-R8, §2.3 P1-P11 (P5 per tdx-abi.md §2.4/§2.5), configfs's copy_to_user -EFAULT
    # and a read after rmdir -ENOENT (§1.6, frag_dead). -ETXTBSY cannot happen for TDX: no attribute
    # is both readable and writable (§1.2), so one fd never mixes reads and writes.
    read_errnos: Tuple[int, ...] = ()
    # How the provider waits (P7): upstream polls with the stock loop in every generation; the
    # read_poll_timeout variant is unmerged and interrupts are the downstream driver's (quote.md §2.5,
    # §2.6). The default of Kernel(..., quote_completion=None).
    completion: QuoteCompletion = STOCK_COMPLETION

    @property
    def buf_order(self) -> int:
        """Page order of the quote buffer (quote.md §2.2: 8 KiB order 1, 128 KiB order 5)."""
        pages = -(-self.buf_size // abi.TDX_PAGE_SIZE)
        return (pages - 1).bit_length()

    @property
    def max_out_len(self) -> int:
        """TDX_QUOTE_MAX_LEN = buffer size - 24 (quote.md §2.3 P9)."""
        return self.buf_size - abi.QUOTE_HDR_LEN


@dataclass(frozen=True)
class VfsCommand:
    """A command ``do_vfs_ioctl`` answers itself on the device node (a misc character device on
    devtmpfs), before any driver sees it (ref §1 "Commands the VFS handles first"; torvalds/linux
    fs/ioctl.c, cited per constant in ``tdxmodel.abi``). ``action`` says what it does there:

    ``ok``        returns 0, touches no memory (FIOCLEX, FIONCLEX: the close-on-exec flag)
    ``get_int``   get_user(int): -EFAULT, else 0 (FIONBIO: O_NONBLOCK, which no path here reads)
    ``fioasync``  get_user(int): -EFAULT; nonzero asks for FASYNC and the driver has no fasync: -ENOTTY
    ``errno``     returns -``errno`` before touching memory (FIOQSIZE on a character device, FIEMAP
                  without i_op->fiemap, FIFREEZE on tmpfs, FITHAW of a superblock not frozen, ...)
    ``put_int``   put_user(int ``value``) (FIGETBSZ: devtmpfs' s_blocksize, PAGE_SIZE): -EFAULT, else 0
    ``clone``     FICLONE: the source fd is arg's low 32 bits: not open -EBADF, another superblock
                  -EXDEV, the same (devtmpfs) -EINVAL: not a regular file (fs/remap_range.c checks
                  the superblock first, then generic_file_rw_checks)
    ``clone_range`` copy the 32-byte struct in (-EFAULT), then as ``clone`` with its src_fd
    ``dedupe``    get_user(u16 dest_count at +16) (-EFAULT); 24 + 32 * count > PAGE_SIZE -ENOMEM;
                  memdup_user of that size (-EFAULT); vfs_dedupe_file_range: not regular -EINVAL
    ``fsuuid``    copy_to_user of struct fsuuid2 {16, the devtmpfs uuid} (-EFAULT), else 0

    The copies here are not injection points (fail_usercopy and failslab never fail them in the
    model; docs/CONTRACT.md "Commands the VFS answers"). The caller is modelled with CAP_SYS_ADMIN
    (attestation clients run as root): without it FIFREEZE and FITHAW would be -EPERM."""

    name: str            # the tdxmodel.abi constant
    action: str
    errno: int = 0       # action "errno"
    value: int = 0       # action "put_int"

    @property
    def cmd(self) -> int:
        return abi.VALUES[self.name]

    @property
    def window(self) -> int:
        """Bytes from arg it may read or write (what a transport mirrors of the caller's memory)."""
        return {"get_int": 4, "fioasync": 4, "put_int": 4, "fsuuid": abi.FSUUID2_LEN,
                "clone_range": abi.FILE_CLONE_RANGE_LEN, "dedupe": abi.TDX_PAGE_SIZE}.get(self.action, 0)


def devtmpfs_uuid(seed: int) -> bytes:
    """The 16-byte uuid FS_IOC_GETFSUUID reads for the device node's file system. tmpfs (so devtmpfs)
    draws a random version-4 uuid per mount (mm/shmem.c shmem_fill_super, uuid_gen); the model draws
    it from the kernel's seed with two splitmix64 steps (a design choice both backends share)."""
    out = b""
    x = seed & (2**64 - 1)
    for _ in range(2):
        x = (x + 0x9E3779B97F4A7C15) & (2**64 - 1)
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
        out += (z ^ (z >> 31)).to_bytes(8, "little")
    u = bytearray(out)
    u[6] = (u[6] & 0x0F) | 0x40   # version 4 (generate_random_uuid)
    u[8] = (u[8] & 0x3F) | 0x80   # RFC 4122 variant
    return bytes(u)


VFS_ACTIONS = ("ok", "get_int", "fioasync", "errno", "put_int", "clone", "clone_range", "dedupe", "fsuuid")

#: do_vfs_ioctl's own list on the device node, from 5.3 (the v4 patch's base) to 6.8: fs/ioctl.c @011da44b.
VFS_COMMANDS_BASE: Tuple[VfsCommand, ...] = (
    VfsCommand("FIOCLEX", "ok"),
    VfsCommand("FIONCLEX", "ok"),
    VfsCommand("FIONBIO", "get_int"),
    VfsCommand("FIOASYNC", "fioasync"),
    VfsCommand("FIOQSIZE", "errno", errno=abi.ENOTTY),        # not dir / regular / symlink
    VfsCommand("FIFREEZE", "errno", errno=abi.EOPNOTSUPP),    # tmpfs has no freeze_fs / freeze_super
    VfsCommand("FITHAW", "errno", errno=abi.EINVAL),          # thaw_super: the superblock is not frozen
    VfsCommand("FS_IOC_FIEMAP", "errno", errno=abi.EOPNOTSUPP),  # special inodes have no i_op->fiemap
    VfsCommand("FIGETBSZ", "put_int", value=abi.TDX_PAGE_SIZE),  # shmem_fill_super: s_blocksize PAGE_SIZE
    VfsCommand("FICLONE", "clone"),
    VfsCommand("FICLONERANGE", "clone_range"),
    VfsCommand("FIDEDUPERANGE", "dedupe"),
)
#: 6.9 adds FS_IOC_GETFSUUID (41bcbe59c3b3); tmpfs sets a uuid from that kernel on (mm/shmem.c).
VFS_COMMANDS_6_9 = VFS_COMMANDS_BASE + (VfsCommand("FS_IOC_GETFSUUID", "fsuuid"),)
#: 6.10 adds FS_IOC_GETFSSYSFSPATH (ae8c51175730); tmpfs names no sysfs directory: -ENOTTY.
VFS_COMMANDS_6_10 = VFS_COMMANDS_6_9 + (VfsCommand("FS_IOC_GETFSSYSFSPATH", "errno", errno=abi.ENOTTY),)


@dataclass(frozen=True)
class IoctlQuote:
    """An ioctl quote path (ref §2.2 v4 3/3, quote.md §2.6): the ``get_quote`` command hands the
    caller's whole buffer (the 24-B header and a payload) to the host in a per-request shared buffer
    and copies it back; completion comes by the notify interrupt."""

    notify_vector: int          # registered with SetupEventNotifyInterrupt at boot (arch init)
    parallel: bool              # requests tracked on quote_list, quote_lock only around the hypercall
    payload: str                # what a client puts after the header: "qgs" (a QGS GET_QUOTE_REQ frame,
                                # libtdx_attest, quote.md §2.7) or "tdreport" (the raw 1024 B)
    buf_len: int                # the buffer a client passes (libtdx_attest REQ_BUF_SIZE, quote.md §2.7)
    errnos: Tuple[int, ...]     # the documented errno set of the command (0 implied)
    timeout_ms: int = 0         # the client's timeout when the request carries one (v4); 0: none
    # What the code does, beside the layout (the quote proofs' encoding, proofs/quote_ioctl.py, is
    # built from these and checked against the emulator case by case):
    lock_kept_on_early_return: bool = False  # v4 3/3: the request-copy and len/timeout returns keep
                                             # quote_lock (ref §2.2)
    checks_status: bool = False  # status != SUCCESS -> -EIO, after the copy back (v4 3/3, ref §2.2);
                                 # False: 0 whatever the status (quote.md §2.6, the client checks it)
    drops_copy_fault: bool = False  # the copy back's -EFAULT is dropped: 0 (quote.md §2.6 7)
    interrupted_errno: int = abi.EINTR  # a signal during the wait (v4: -ERESTARTSYS <= 0 -> -EIO)


@dataclass(frozen=True)
class Profile:
    name: str                            # the spelling of the CLI and API (--driver, Kernel(driver=))
    ref: str                             # the reference section of its step table
    kernel: Tuple[str, Optional[str]]    # first and last kernel version (None: still current)
    device_path: str
    misc_name: str
    ops: str                             # C ops table (csrc/tdx_driver.c) and reference driver class
    commands: Tuple[Command, ...]        # the report command first
    unknown_cmd_errno: int               # errno of a command the driver does not know; 0: returns 0
    errno_map: Tuple[Tuple[int, int], ...]   # (status >> 32, errno) of a failing report TDCALL
    errno_default: int                   # errno of any other failing status (commands may override)
    points: Tuple[str, ...]              # injection points in the order the driver reaches them
    report_errnos: Tuple[int, ...]       # the documented errno set of the report ioctl (0 implied)
    locks: Tuple[str, ...] = ()          # "mr_lock" (ref §2.5); "quote_lock" (quote.md §2)
    measurements: Tuple[Measurement, ...] = ()
    measurement_dirs: Tuple[str, ...] = ()
    resident: int = 0                    # allocations kept from init to exit
    cached_report_buf: bool = False      # one report buffer from init (6.16); else per-call buffers
    status_writeback: Optional[Field] = None   # v4 put_user()s the masked status here on failure
    quote: Optional[Quote] = None        # the configfs-tsm quote path (quote.md §1-§2); None: ioctl only
    ioctl_quote: Optional[IoctlQuote] = None  # the get_quote ioctl (ref §2.2, quote.md §2.6); None: none
    traits: Mapping[str, Any] = field(default_factory=dict)  # anything else a generation needs
    # what do_vfs_ioctl answers on the device node before the driver, as the generation's first kernel
    # does (a range such as 6.7-6.10 is modelled as 6.7: 6.9/6.10 would also answer GETFSUUID)
    vfs_commands: Tuple[VfsCommand, ...] = VFS_COMMANDS_BASE

    @property
    def id(self) -> int:
        """Index in PROFILES: the row of TDXM_PROFILES[] in the generated header."""
        return _INDEX[self.name]

    @property
    def report(self) -> Command:
        return self.commands[0]

    def command(self, key: str) -> Optional[Command]:
        return next((c for c in self.commands if c.key == key), None)

    def command_numbered(self, cmd: int) -> Optional[Command]:
        """The driver command with ioctl number ``cmd``, or None."""
        return next((c for c in self.commands if c.value == cmd), None)

    @property
    def extends_through_ioctl(self) -> bool:
        """Some ioctl command extends an RTMR (Command.extends_rtmr)."""
        return any(c.extends_rtmr for c in self.commands)

    def has_lock(self, lock: str) -> bool:
        return lock in self.locks

    def status_errno(self, status: int, command: str = "report") -> int:
        """The errno (positive) this generation's ``command`` maps a nonzero TDCALL status to; 0 for
        success."""
        if status == abi.TDX_SUCCESS:
            return 0
        table, default = self.errno_table(command)
        return dict(table).get(abi.status_class(status), default)

    def errno_table(self, command: str = "report") -> Tuple[Tuple[Tuple[int, int], ...], int]:
        """(errno map, default errno) of ``command``: its own, else the generation's."""
        c = self.command(command)
        if c is None:
            raise KeyError(f"{self.name} has no command {command!r}")
        return (c.errno_map if c.errno_map is not None else self.errno_map,
                c.errno_default if c.errno_default is not None else self.errno_default)

    def errno_names(self, errnos) -> Tuple[str, ...]:
        return tuple(ERRNO_NAMES[e] for e in errnos)

    def point_capabilities(self) -> Tuple[Tuple[str, str], ...]:
        return tuple((p, POINT_CAPABILITY[p]) for p in self.points)

    @property
    def init_points(self) -> Tuple[str, ...]:
        """The injection points module load passes, in order (Kernel(fail_nth=N) fails the N-th)."""
        return tuple(p for p in INIT_POINTS if p in self.points)

    def measurement(self, name: str) -> Optional[Measurement]:
        return next((m for m in self.measurements if m.name == name), None)

    def vfs_command(self, cmd: int) -> Optional[VfsCommand]:
        """The command ``do_vfs_ioctl`` answers itself on this generation's device node, or None."""
        return next((v for v in self.vfs_commands if v.cmd == cmd), None)

    def other_report_cmd(self) -> int:
        """A command this generation does not know: another generation's report number."""
        own = {c.value for c in self.commands}
        return next(p.report.value for p in PROFILES if p.report.value not in own)


#: Every injection point, "<object>:<function>" (docs/CONTRACT.md "Injection point names"), with its
#: fault capability (ref §7). The order is the C enum's (generated as GK_PT_*).
POINTS: Tuple[Tuple[str, str], ...] = (
    ("reportdata:kmalloc", "failslab"),
    ("tdreport:get_zeroed_page", "fail_page_alloc"),
    ("tdreport:kzalloc", "failslab"),
    ("reportdata:copy_from_user", "fail_usercopy"),
    ("status:put_user", "fail_usercopy"),
    ("tdreport:copy_to_user", "fail_usercopy"),
    ("report_buf:kzalloc", "failslab"),
    ("measurement:copy_to_user", "fail_usercopy"),
    ("measurement:copy_from_user", "fail_usercopy"),
    # the quote path (quote.md §2.2-§2.3, ref §7)
    ("quote_buf:alloc_pages", "fail_page_alloc"),   # init: alloc_pages_exact, order 1 / 5
    ("outblob:kvmemdup", "failslab"),               # P10 (ref §7: the vmalloc fallback is one point)
    ("configfs:copy_from_user", "fail_usercopy"),   # write(inblob): configfs copies from the iter
    ("configfs:copy_to_user", "fail_usercopy"),     # read(outblob / generation / provider)
    ("reportmac:kmalloc", "failslab"),
    ("reportmac:copy_from_user", "fail_usercopy"),
    ("err_code:copy_to_user", "fail_usercopy"),
    ("rtmr_index:copy_from_user", "fail_usercopy"),
    ("extend_data:kmalloc", "failslab"),
    ("extend_data:copy_from_user", "fail_usercopy"),
    # 6.16+ (ref §2.5 "Init order" #1.3, §7): tsm_mr_create_attribute_group's two kzallocs, both made
    # before either is checked (drivers/virt/coco/guest/tsm-mr.c @2fbe8203)
    ("tsm_mr_attrs:kzalloc", "failslab"),
    ("tsm_mr_ctx:kzalloc", "failslab"),
    # kernfs' bounce buffer of a measurement-file read or write (ref §2.5 "Read" #1, "Write" #1, §7;
    # fs/kernfs/file.c @f83f3c51 kernfs_file_read_iter / kernfs_fop_write_iter: sysfs bin files have no
    # prealloc buffer, so every call kmallocs)
    ("kernfs_buf:kmalloc", "failslab"),
    # the ioctl quote paths (ref §2.2 v4 3/3, quote.md §2.6)
    ("quote_req:copy_from_user", "fail_usercopy"),        # the request struct (16 B; v4: 24 B)
    ("quote_entry:kmalloc", "failslab"),                  # downstream: struct quote_entry
    ("quote_buf:dma_alloc_coherent", "fail_page_alloc"),  # PAGE_ALIGN(len), zeroed, shared
    ("quote_data:copy_from_user", "fail_usercopy"),       # len bytes from req.buf
    ("quote_err:put_user", "fail_usercopy"),              # v4: the TDVMCALL error to arg + 0
    ("quote_data:copy_to_user", "fail_usercopy"),         # back to req.buf
)
POINT_CAPABILITY: Dict[str, str] = dict(POINTS)
#: The points module load passes (ref §2.5 "Init order", quote.md §2.2), in that order.
INIT_POINTS: Tuple[str, ...] = ("report_buf:kzalloc", "tsm_mr_attrs:kzalloc", "tsm_mr_ctx:kzalloc",
                                "quote_buf:alloc_pages")
#: errno value -> its tdxmodel.abi name.
ERRNO_NAMES: Dict[int, str] = {c.value: c.name for c in abi.CONSTANTS if c.group == "errno"}

_RD = abi.TDX_REPORTDATA_LEN
_TR = abi.TDX_REPORT_LEN

# ref §2.2: one buffer of >= 1024 B; REPORTDATA read from bytes 0..63, the TDREPORT written in place.
_GET_TDREPORT = Command("report", "TDX_CMD_GET_TDREPORT", _TR,
                        (Field("reportdata", 0, _RD, IN), Field("tdreport", 0, _TR, OUT)), "ref §1, §2.2")
# ref §2.4: struct tdx_report_req {u8 reportdata[64]; u8 tdreport[1024];}, 1088 B, no padding.
_GET_REPORT0 = Command("report", "TDX_CMD_GET_REPORT0", abi.TDX_REPORT_REQ_LEN,
                       (Field("reportdata", abi.TDX_REPORT_REQ_OFF_REPORTDATA, _RD, IN),
                        Field("tdreport", abi.TDX_REPORT_REQ_OFF_TDREPORT, _TR, OUT)), "ref §1, §2.4")

#: ref §2.4 rows 1-5: the per-call report path of 6.2-6.15 (and of drivers that copied it).
_V6_2_REPORT_POINTS = ("reportdata:kmalloc", "tdreport:kzalloc", "reportdata:copy_from_user",
                       "tdreport:copy_to_user")

_INVALID = abi.LINUX_TDCALL_INVALID_OPERAND
_BUSY = abi.LINUX_TDCALL_OPERAND_BUSY

#: 6.16 measurement files (ref §2.5): name, TDREPORT offset (ref §4.4), mode.
_MEASUREMENTS_6_16 = (
    Measurement("mrtd:sha384", abi.TDR_OFF_MRTD, 0o444),
    Measurement("mrconfigid", abi.TDR_OFF_MRCONFIGID, 0o444),
    Measurement("mrowner", abi.TDR_OFF_MROWNER, 0o444),
    Measurement("mrownerconfig", abi.TDR_OFF_MROWNERCONFIG, 0o444),
) + tuple(Measurement(f"rtmr{i}:sha384", abi.TDR_OFF_RTMR0 + i * abi.TDX_SHA384_LEN, 0o644)
          for i in range(abi.TDX_NUM_RTMRS))
#: The configfs-tsm report directory (quote.md §0, §1).
TSM_REPORT_DIR = "/sys/kernel/config/tsm/report"
#: What an item shows for TDX (quote.md §1.2): only these are visible, in every generation.
TSM_ATTRS = ("generation", "provider", "inblob", "outblob")
TSM_PROVIDER_NAME = "tdx_guest"  # KBUILD_MODNAME; reads "tdx_guest\n" (quote.md §1.1)

_SZ_8K, _SZ_16K, _SZ_32K, _SZ_128K, _SZ_16M = 8 << 10, 16 << 10, 32 << 10, 128 << 10, 16 << 20
# read(outblob): R1/R4/P3 EINVAL, R3 ENOTTY, R8 EFBIG, P1 EINTR, P2 EBUSY, P5 (<= 6.15 temporaries
# ENOMEM, TDCALL EINVAL/EIO), P6 EIO, P7 EINTR/ETIMEDOUT, P10 ENOMEM, copy_to_user EFAULT, rmdir ENOENT
_READ_ERRNOS_6_7 = (abi.EINVAL, abi.ENOTTY, abi.EFBIG, abi.EINTR, abi.EBUSY, abi.ENOMEM, abi.EIO,
                    abi.ETIMEDOUT, abi.EFAULT, abi.ENOENT)
# 6.16+: R3 ENXIO instead of ENOTTY; P5 through mr_lock: EINTR, ENXIO, EBUSY, EIO (ref §2.5); 7.0 adds
# P9 EFBIG (R8's is then out of reach), 7.1 P8 EIO: the same set
_READ_ERRNOS_6_16 = (abi.EINVAL, abi.ENXIO, abi.EFBIG, abi.EINTR, abi.EBUSY, abi.ENOMEM, abi.EIO,
                     abi.ETIMEDOUT, abi.EFAULT, abi.ENOENT)
_QUOTE_6_7 = Quote(buf_size=_SZ_8K, outblob_max=_SZ_32K, no_provider_errno=abi.ENOTTY,
                   visibility_callbacks=False, provider_gone_enxio=False, counts_items=False,
                   out_len_once=False, status_check=False, read_errnos=_READ_ERRNOS_6_7)
_QUOTE_6_11 = Quote(**{**_QUOTE_6_7.__dict__, "visibility_callbacks": True})
_QUOTE_6_16 = Quote(**{**_QUOTE_6_11.__dict__, "no_provider_errno": abi.ENXIO,
                       "provider_gone_enxio": True, "counts_items": True,
                       "read_errnos": _READ_ERRNOS_6_16})
_QUOTE_7_0 = Quote(**{**_QUOTE_6_16.__dict__, "buf_size": _SZ_128K, "outblob_max": _SZ_16M,
                      "out_len_once": True})
_QUOTE_7_1 = Quote(**{**_QUOTE_7_0.__dict__, "status_check": True})
# The quote provider's own errnos, on top of the ioctl path's (quote.md §2.3 P1-P11, §1.5 R1-R8).
_QUOTE_POINTS_6_7 = ("quote_buf:alloc_pages", "reportdata:kmalloc", "tdreport:kzalloc", "outblob:kvmemdup",
                     "configfs:copy_from_user", "configfs:copy_to_user")
_QUOTE_POINTS_6_16 = ("quote_buf:alloc_pages", "outblob:kvmemdup", "configfs:copy_from_user",
                      "configfs:copy_to_user")

#: 6.16+ in the order reached: init (the report buffer, then tsm-mr's attribute group, ref §2.5 "Init
#: order"), the ioctl's copies, the measurement files (kernfs' buffer, then the copies), the quote path.
_POINTS_6_16 = ("report_buf:kzalloc", "tsm_mr_attrs:kzalloc", "tsm_mr_ctx:kzalloc",
                "reportdata:copy_from_user", "tdreport:copy_to_user", "kernfs_buf:kmalloc",
                "measurement:copy_to_user", "measurement:copy_from_user") + _QUOTE_POINTS_6_16

_MEASUREMENT_DIRS_6_16 = ("/sys/devices/virtual/misc/tdx_guest/measurements",   # ref §1
                          "/sys/class/misc/tdx_guest/measurements")

# quote.md §2.6 (td-partitioning tdx-guest.c @1b3c1894 tdx_get_quote): the 16-B request, then the
# entry, the shared buffer, the len bytes in, the hypercall, the wait, the len bytes back.
_GET_QUOTE_DOWNSTREAM = Command(
    "get_quote", "TDX_CMD_GET_QUOTE", abi.TDX_QUOTE_REQ_LEN,
    (Field("buf", abi.TDX_QUOTE_REQ_OFF_BUF, 8, IN), Field("len", abi.TDX_QUOTE_REQ_OFF_LEN, 8, IN)),
    "ref §1; quote.md §2.6",
    points=("quote_req:copy_from_user", "quote_entry:kmalloc", "quote_buf:dma_alloc_coherent",
            "quote_data:copy_from_user", "quote_data:copy_to_user"))
# ref §2.2 (v4 3/3 tdx_get_tdquote): the 24-B request under quote_lock, the shared buffer, the len
# bytes in, the hypercall (a failure put_user()s the error to arg + 0), the wait, PAGE_ALIGN(len) back.
_GEN_QUOTE_V4 = Command(
    "get_quote", "TDX_CMD_GEN_QUOTE", abi.TDX_GEN_QUOTE_REQ_LEN,
    (Field("buf", abi.TDX_QUOTE_REQ_OFF_BUF, 8, IN), Field("len", abi.TDX_QUOTE_REQ_OFF_LEN, 8, IN),
     Field("timeout", abi.TDX_GEN_QUOTE_REQ_OFF_TIMEOUT, 4, IN)),
    "ref §1, §2.2",
    points=("quote_req:copy_from_user", "quote_buf:dma_alloc_coherent", "quote_data:copy_from_user",
            "quote_err:put_user", "quote_data:copy_to_user"))

PROFILES: Tuple[Profile, ...] = (
    # ref §2.2: the v4 patch as posted (never merged), defects included: an unknown cmd returns 0,
    # any TDCALL failure -EIO with the masked status put_user()ed into bytes 0..7.
    Profile(
        name="v4-2022-04", ref="ref §2.2", kernel=("v4 patch 2022-04-22", "v4 patch 2022-04-22"),
        device_path="/dev/tdx-attest", misc_name="tdx-attest", ops="v4",
        commands=(replace(_GET_TDREPORT, points=("reportdata:kmalloc", "tdreport:get_zeroed_page",
                                                 "reportdata:copy_from_user", "status:put_user",
                                                 "tdreport:copy_to_user")),
                  _GEN_QUOTE_V4),
        unknown_cmd_errno=0,
        errno_map=(), errno_default=abi.EIO,
        points=("reportdata:kmalloc", "tdreport:get_zeroed_page", "reportdata:copy_from_user",
                "status:put_user", "tdreport:copy_to_user") + _GEN_QUOTE_V4.points,
        report_errnos=(abi.ENOMEM, abi.EFAULT, abi.EIO),
        locks=("quote_lock",),
        status_writeback=Field("status", 0, 8, OUT),
        ioctl_quote=IoctlQuote(notify_vector=abi.TDX_V4_EVENT_NOTIFY_VECTOR, parallel=False,
                               payload="tdreport", buf_len=_SZ_16K,
                               errnos=(abi.EFAULT, abi.EINVAL, abi.ENOMEM, abi.EIO),
                               timeout_ms=abi.HOST_QGS_TIMEOUT_MS, lock_kept_on_early_return=True,
                               checks_status=True, drops_copy_fault=False, interrupted_errno=abi.EIO)),
    # ref §2.4: upstream 6.2-6.6, no lock, per-call kmalloc/kzalloc; the ioctl only.
    Profile(
        name="v6.2", ref="ref §2.4", kernel=("6.2", "6.6"),
        device_path="/dev/tdx_guest", misc_name="tdx_guest", ops="v6_2",
        commands=(replace(_GET_REPORT0, points=_V6_2_REPORT_POINTS),), unknown_cmd_errno=abi.ENOTTY,
        errno_map=((_INVALID, abi.EINVAL),), errno_default=abi.EIO,
        points=_V6_2_REPORT_POINTS,
        report_errnos=(abi.ENOMEM, abi.EFAULT, abi.EINVAL, abi.EIO, abi.ENOTTY)),
    # quote.md §1-§2, ref §2.6: 6.7-6.10, the 6.2 ioctl plus the configfs-tsm quote (fixed item types).
    Profile(
        name="v6.7", ref="quote.md §1-§2.4; ref §2.4, §2.6", kernel=("6.7", "6.10"),
        device_path="/dev/tdx_guest", misc_name="tdx_guest", ops="v6_2",
        commands=(replace(_GET_REPORT0, points=_V6_2_REPORT_POINTS),), unknown_cmd_errno=abi.ENOTTY,
        errno_map=((_INVALID, abi.EINVAL),), errno_default=abi.EIO,
        points=("reportdata:kmalloc", "tdreport:kzalloc", "reportdata:copy_from_user",
                "tdreport:copy_to_user") + _QUOTE_POINTS_6_7[:1] + _QUOTE_POINTS_6_7[3:],
        report_errnos=(abi.ENOMEM, abi.EFAULT, abi.EINVAL, abi.EIO, abi.ENOTTY),
        locks=("quote_lock",), resident=1, quote=_QUOTE_6_7),
    # 6.11-6.15: visibility callbacks (quote.md §1.2); the same TDX surface.
    Profile(
        name="v6.11", ref="quote.md §1-§2.4; ref §2.4, §2.6", kernel=("6.11", "6.15"),
        device_path="/dev/tdx_guest", misc_name="tdx_guest", ops="v6_2",
        commands=(replace(_GET_REPORT0, points=_V6_2_REPORT_POINTS),), unknown_cmd_errno=abi.ENOTTY,
        errno_map=((_INVALID, abi.EINVAL),), errno_default=abi.EIO,
        points=("reportdata:kmalloc", "tdreport:kzalloc", "reportdata:copy_from_user",
                "tdreport:copy_to_user") + _QUOTE_POINTS_6_7[:1] + _QUOTE_POINTS_6_7[3:],
        report_errnos=(abi.ENOMEM, abi.EFAULT, abi.EINVAL, abi.EIO, abi.ENOTTY),
        locks=("quote_lock",), resident=1, quote=_QUOTE_6_11, vfs_commands=VFS_COMMANDS_6_10),
    # ref §2.5: 6.16+, the report buffer from init under mr_lock, -ENXIO/-EBUSY, measurement files.
    Profile(
        name="v6.16", ref="ref §2.5; quote.md §1-§2.4", kernel=("6.16", "6.19"),
        device_path="/dev/tdx_guest", misc_name="tdx_guest", ops="v6_16",
        commands=(replace(_GET_REPORT0, points=("reportdata:copy_from_user", "tdreport:copy_to_user")),),
        unknown_cmd_errno=abi.ENOTTY,
        errno_map=((_INVALID, abi.ENXIO), (_BUSY, abi.EBUSY)), errno_default=abi.EIO,
        points=_POINTS_6_16,
        report_errnos=(abi.ENOTTY, abi.EINTR, abi.EFAULT, abi.ENXIO, abi.EBUSY, abi.EIO),
        locks=("mr_lock", "quote_lock"), measurements=_MEASUREMENTS_6_16,
        measurement_dirs=_MEASUREMENT_DIRS_6_16, resident=4, cached_report_buf=True, quote=_QUOTE_6_16,
        vfs_commands=VFS_COMMANDS_6_10),
    # 7.0: 128 KiB quote buffer, 16 MiB outblob, out_len read once and bounded (quote.md §2.1).
    Profile(
        name="v7.0", ref="ref §2.5; quote.md §1-§2.4", kernel=("7.0", "7.0"),
        device_path="/dev/tdx_guest", misc_name="tdx_guest", ops="v6_16",
        commands=(replace(_GET_REPORT0, points=("reportdata:copy_from_user", "tdreport:copy_to_user")),), unknown_cmd_errno=abi.ENOTTY,
        errno_map=((_INVALID, abi.ENXIO), (_BUSY, abi.EBUSY)), errno_default=abi.EIO,
        points=_POINTS_6_16,
        report_errnos=(abi.ENOTTY, abi.EINTR, abi.EFAULT, abi.ENXIO, abi.EBUSY, abi.EIO),
        locks=("mr_lock", "quote_lock"), measurements=_MEASUREMENTS_6_16,
        measurement_dirs=_MEASUREMENT_DIRS_6_16, resident=4, cached_report_buf=True, quote=_QUOTE_7_0,
        vfs_commands=VFS_COMMANDS_6_10),
    # 7.1: a non-SUCCESS status gives -EIO (0f409eaea53e, quote.md §2.3 P8).
    Profile(
        name="v7.1", ref="ref §2.5; quote.md §1-§2.4", kernel=("7.1", None),
        device_path="/dev/tdx_guest", misc_name="tdx_guest", ops="v6_16",
        commands=(replace(_GET_REPORT0, points=("reportdata:copy_from_user", "tdreport:copy_to_user")),), unknown_cmd_errno=abi.ENOTTY,
        errno_map=((_INVALID, abi.ENXIO), (_BUSY, abi.EBUSY)), errno_default=abi.EIO,
        points=_POINTS_6_16,
        report_errnos=(abi.ENOTTY, abi.EINTR, abi.EFAULT, abi.ENXIO, abi.EBUSY, abi.EIO),
        locks=("mr_lock", "quote_lock"), measurements=_MEASUREMENTS_6_16,
        measurement_dirs=_MEASUREMENT_DIRS_6_16, resident=4, cached_report_buf=True, quote=_QUOTE_7_1,
        vfs_commands=VFS_COMMANDS_6_10),
    # Intel's out-of-tree tdx-guest driver, which DCAP's libtdx_attest and the Python SDKs call (ref §1,
    # quote.md §2.6; intel/td-partitioning drivers/virt/coco/tdx-guest/tdx-guest.c @1b3c1894 and
    # arch/x86/coco/tdx/tdx.c @01e17622): GET_REPORT0 as 6.2 (tdx_get_report0; tdx_mcall_get_report0
    # maps INVALID_OPERAND -> -EINVAL, else -EIO); VERIFY_REPORT (kmalloc(256), copy in, leaf 22, any
    # nonzero status -> -EIO, err_code copied out whatever the status); EXTEND_RTMR (index byte first,
    # index < 2 -> -EINVAL, kmalloc(64), 48 B copied in, leaf 2: INVALID -> -EINVAL, BUSY -> -EBUSY,
    # else -EIO); GET_QUOTE (tdx_get_quote: parallel requests on quote_list, quote_lock only around
    # the hypercall, completion by the notify IRQ, no timeout; quote.md §2.6).
    Profile(
        name="intel-downstream", ref="quote.md §2.6; ref §1, §2.4",
        kernel=("td-partitioning 1b3c1894", None),
        device_path="/dev/tdx_guest", misc_name="tdx_guest", ops="intel_downstream",
        commands=(
            replace(_GET_REPORT0, points=_V6_2_REPORT_POINTS),
            Command("verify_report", "TDX_CMD_VERIFY_REPORT", abi.TDX_VERIFY_REPORT_REQ_LEN,
                    (Field("reportmac", 0, abi.TDX_REPORTMACSTRUCT_LEN, IN),
                     Field("err_code", abi.TDX_VERIFY_REPORT_REQ_OFF_ERR_CODE, 8, OUT)),
                    "ref §1; quote.md §2.6", errno_map=(), errno_default=abi.EIO,
                    points=("reportmac:kmalloc", "reportmac:copy_from_user", "err_code:copy_to_user")),
            Command("extend_rtmr", "TDX_CMD_EXTEND_RTMR", abi.TDX_EXTEND_RTMR_REQ_LEN,
                    (Field("data", 0, abi.TDX_EXTEND_DATA_LEN, IN),
                     Field("index", abi.TDX_EXTEND_RTMR_REQ_OFF_INDEX, 1, IN)),
                    "ref §1, §2.5; quote.md §2.6",
                    errno_map=((_INVALID, abi.EINVAL), (_BUSY, abi.EBUSY)), errno_default=abi.EIO,
                    points=("rtmr_index:copy_from_user", "extend_data:kmalloc",
                            "extend_data:copy_from_user"), extends_rtmr=True),
            _GET_QUOTE_DOWNSTREAM,
        ),
        unknown_cmd_errno=abi.ENOTTY,
        errno_map=((_INVALID, abi.EINVAL),), errno_default=abi.EIO,
        points=_V6_2_REPORT_POINTS + ("reportmac:kmalloc", "reportmac:copy_from_user",
                                      "err_code:copy_to_user", "rtmr_index:copy_from_user",
                                      "extend_data:kmalloc", "extend_data:copy_from_user")
        + _GET_QUOTE_DOWNSTREAM.points,
        report_errnos=(abi.ENOMEM, abi.EFAULT, abi.EINVAL, abi.EIO, abi.ENOTTY),
        locks=("quote_lock",),
        # td-partitioning's tree is a 6.x before 6.11 (its driver has an int .remove and no_llseek);
        # which 6.x is not known: we pick the VFS list of 6.2-6.8 (no FS_IOC_GETFSUUID)
        ioctl_quote=IoctlQuote(notify_vector=abi.TDX_DOWNSTREAM_NOTIFY_VECTOR, parallel=True,
                               payload="qgs", buf_len=_SZ_16K,
                               errnos=(abi.EFAULT, abi.EINVAL, abi.ENOMEM, abi.EIO, abi.EINTR),
                               lock_kept_on_early_return=False, checks_status=False,
                               drops_copy_fault=True, interrupted_errno=abi.EINTR),
        traits={"extend_min_index": abi.TDX_DOWNSTREAM_MIN_RTMR}),
)

_INDEX: Dict[str, int] = {p.name: i for i, p in enumerate(PROFILES)}
BY_NAME: Dict[str, Profile] = {p.name: p for p in PROFILES}
#: Generation names, in table order (the CLI's --driver choices).
NAMES: Tuple[str, ...] = tuple(BY_NAME)
#: The C ops tables, in first-use order (generated as TDXM_OPS_*).
OPS: Tuple[str, ...] = tuple(dict.fromkeys(p.ops for p in PROFILES))


def get(name: str) -> Profile:
    """The profile of generation ``name``; ValueError naming the choices otherwise."""
    try:
        return BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"driver must be one of {', '.join(NAMES)}, not {name!r}") from None


def report_command(cmd: int) -> Command:
    """The report command numbered ``cmd`` (its layout is the same in every generation that has it)."""
    for p in PROFILES:
        if p.report.value == cmd:
            return p.report
    raise ValueError(f"0x{cmd:08X} is the report command of no driver generation")


def _check() -> None:
    for p in PROFILES:
        assert p.commands and p.report.key == "report", p.name
        assert all(pt in POINT_CAPABILITY for pt in p.points), p.name
        assert all(set(c.points) <= set(p.points) for c in p.commands), p.name
        assert p.report.field("reportdata").direction == IN and p.report.field("tdreport").direction == OUT
        assert bool(p.measurements) == bool(p.measurement_dirs), p.name
        assert p.quote is None or p.has_lock("quote_lock"), p.name
        for c in p.commands:   # an extending command names its register and its data
            assert not c.extends_rtmr or (c.field("index").size == 1
                                          and c.field("data").size == abi.TDX_EXTEND_DATA_LEN), p.name
        assert all(v.action in VFS_ACTIONS for v in p.vfs_commands), p.name
        if p.measurements:  # tsm-mr's attribute array: a pointer per register + NULL, the hashed names
            assert abi.TSM_MR_ATTRS_SIZE == 8 * (len(p.measurements) + 1) + sum(
                len(m.name) + 1 for m in p.measurements if ":" in m.name), p.name
        # the VFS answers first: no driver command may share a number with it
        assert not {v.cmd for v in p.vfs_commands} & {c.value for c in p.commands}, p.name
        assert (p.ioctl_quote is None) == (p.command("get_quote") is None), p.name
        assert p.ioctl_quote is None or p.has_lock("quote_lock"), p.name


_check()
