"""The persistent emulated platform and TD: the state directory (layer 3; docs/CONTRACT.md "State
directory").

One directory holds one platform (its MAC key, from a random seed made once) and one TD (its
measurements, RTMRs included), so successive ``tdxmodel`` commands, and processes running at the same
time, see one machine:

* ``events.jsonl``: one line per RTMR extend, ``{"generation", "rtmr", "data", "value"}`` (hex).
  **The log is the source of truth for extends**: an extend is committed when its whole line (ending
  in ``\\n``) is in the log. A last line without its ``\\n`` is the torn write of a killed writer: no
  reader counts it and the next locked writer cuts it off. Replaying the log in order with
  RTMR <- SHA-384(RTMR || data) (ref §4.5) reproduces the RTMRs; it restarts when the state is
  re-initialised;
* ``state.json``: ``{"format": 1, "generation": N, "config": ModuleConfig.to_dict(),
  "config_source": {"path", "sha256"} | null, "log_base": B}``, a snapshot: an extend writes
  the new one to a temp file in the directory (fsync) before its log line, and renames it into place
  (``os.replace``, fsync of the directory) after; so a state that cannot be written fails the extend
  before anything changed. Records with a generation above N are applied on top when it is read (a
  writer killed between the line and the rename), and
  records at or below B belong to a log the state replaced (re-initialisation) and are ignored;
* ``lock``: every write holds an exclusive ``fcntl.flock`` on it, so N processes extending at once
  lose no extend. Under it a writer first completes what a killed writer left (``recover()``): it
  cuts a torn log line, brings ``state.json`` up to the log and removes ``.state.json.*.tmp`` files
  (only lock holders make them, so any it finds is a dead writer's).

Invariants after any kill of any writer (README "The state directory"): ``replay_events(events(),
initial)`` equals ``load().rtmr`` (``initial``: the RTMRs the state was made with, the replay of
``boot_events()``, the boot event log ``boot-eventlog.json`` written before the first state.json);
every extend that returned is in ``events()``; no record is half-read; after the next write or
``recover()`` no temp file is left.

Nothing in the directory is followed or replaced if it is not what we made: the directory itself and
every file are opened with ``O_NOFOLLOW`` relative to the opened directory, and a symlink, a file that
is not a regular file, or (for the files appended to) one with other hard links is refused.

Where: ``StateStore(directory)``, else ``$TDXMODEL_STATE``, else ``$XDG_STATE_HOME/tdxmodel``, else
``~/.local/state/tdxmodel``. A new state takes the ``ModuleConfig`` defaults (README "Python API"),
or a TOML file (``config_path``, else ``$TDXMODEL_CONFIG``); a config without ``seed`` or
``mac_key`` gets a random seed. A state made from one TOML file refuses to be opened with a
different one, rather than silently ignoring it.

Errors are ``StateError`` (a ``ValueError``): one line that names the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import secrets
import stat
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from tdxmodel import _backend, abi, eventlog
from tdxmodel.config import ConfigError, ModuleConfig, read_config_bytes, read_fd_bounded

PathLike = Union[str, "os.PathLike[str]"]

STATE_FILE = "state.json"
LOCK_FILE = "lock"
EVENT_LOG = "events.jsonl"
BOOT_LOG = eventlog.BOOT_LOG_FILE  # the boot event log the TD's RTMR0..2 start from (README "Boot event log")
MAX_BOOT_LOG_BYTES = 1 << 22
STATE_FORMAT = 1
#: Guest memory of the Module a store builds: the store only uses the host-buffer leaves, so it
#: needs none of the kernel's pages (docs/CONTRACT.md: pages 0..3 are the host's).
MODULE_MEMORY_PAGES = 16
#: A state.json is about 2 KiB and a log record about 330 bytes: anything far larger is corrupt.
MAX_STATE_BYTES = 1 << 20
MAX_RECORD_BYTES = 4096
TEMP_SUFFIX = ".tmp"
_HEX48 = 2 * abi.TDX_SHA384_LEN
_OPEN = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_WHAT = {STATE_FILE: "cannot read state", LOCK_FILE: "cannot use the lock file",
         EVENT_LOG: "cannot use the extend log", BOOT_LOG: "cannot read the boot event log"}


class StateError(ValueError):
    """The state directory cannot be used; the one-line message names the file."""


def default_directory() -> pathlib.Path:
    """default_directory() -> Path: $TDXMODEL_STATE, else $XDG_STATE_HOME/tdxmodel, else
    ~/.local/state/tdxmodel."""
    env = os.environ.get("TDXMODEL_STATE")
    if env:
        return pathlib.Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".local" / "state"
    return base / "tdxmodel"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _temp_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"


def _is_temp_name(name: str) -> bool:
    return name.endswith(TEMP_SUFFIX) and any(name.startswith(f".{n}.") for n in (STATE_FILE, EVENT_LOG, BOOT_LOG))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _prepare_at(dir_fd: int, name: str, data: bytes, mode: int) -> str:
    """A fresh temp file beside ``name`` in the open directory ``dir_fd`` (O_EXCL, never a followed
    link) holding ``data``, fsynced; its name. OSError on failure, nothing left behind."""
    tmp = _temp_name(name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                 dir_fd=dir_fd)
    try:
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    return tmp


def _install_at(dir_fd: int, tmp: str, name: str) -> None:
    """Rename a prepared temp file over ``name`` (which replaces a link, never its target), then fsync
    the directory. OSError on failure, the temp file removed."""
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def _replace_at(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    """Atomically make ``name`` in the open directory ``dir_fd`` hold ``data``: a fresh temp file,
    fsync, rename over ``name``, fsync of the directory."""
    _install_at(dir_fd, _prepare_at(dir_fd, name, data, mode), name)


def atomic_write(path: PathLike, data: bytes, mode: int = 0o644) -> None:
    """atomic_write(path, data: bytes, mode=0o644) -> None

    Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one: a
    temp file in the same directory, fsync, ``os.replace``, then fsync of the directory. The rename
    replaces the directory entry, whatever it is (a planted link is replaced, never followed); for a
    path a user names, where a device or a link must not be replaced, the CLI's ``write_output``
    decides first."""
    path = pathlib.Path(path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _replace_at(dir_fd, path.name, bytes(data), mode)
    finally:
        os.close(dir_fd)


_read_fd = read_fd_bounded


class Transaction:
    """What a writer sees under the state lock (``StateStore.transaction()``): ``config`` and
    ``generation`` are the current state (every committed extend applied); ``extend(index, data48,
    value)`` commits one extend whose result ``value`` the caller computed (the daemon: its live TD),
    after checking it is SHA-384(RTMR || data) (ref §4.5)."""

    def __init__(self, store: "StateStore", dir_fd: int, doc: Dict[str, Any], config: ModuleConfig) -> None:
        self._store = store
        self._dir_fd = dir_fd
        self._doc = doc
        self.config = config

    @property
    def generation(self) -> int:
        return self._doc["generation"]

    def extend(self, index: int, data48: bytes, value: bytes) -> None:
        if not 0 <= index < abi.TDX_NUM_RTMRS or len(data48) != abi.TDX_EXTEND_DATA_LEN:
            raise ValueError("an extend takes an RTMR index 0..3 and 48 bytes of data")
        if hashlib.sha384(self.config.rtmr[index] + bytes(data48)).digest() != bytes(value):
            raise ValueError(f"RTMR{index}: {bytes(value).hex()[:16]}... is not SHA-384(RTMR || data)")
        self._doc = self._store._commit(self._dir_fd, self._doc, self.config, index, bytes(data48),
                                        bytes(value))


class StateStore:
    """StateStore(directory=None, *, config_path=None, backend=None)

    ``backend`` is a backend name (``"core"``/``"reference"``) or namespace for the Module the store
    builds; None picks ``tdxmodel._backend.load()``'s default.
    """

    def __init__(self, directory: Optional[PathLike] = None, *, config_path: Optional[PathLike] = None,
                 backend: Any = None) -> None:
        self.directory = pathlib.Path(directory) if directory is not None else default_directory()
        if config_path is None and os.environ.get("TDXMODEL_CONFIG"):
            config_path = os.environ["TDXMODEL_CONFIG"]
        self.config_path = pathlib.Path(config_path) if config_path is not None else None
        self._backend = backend

    def __repr__(self) -> str:
        return f"StateStore({str(self.directory)!r})"

    # ------------------------------------------------------------------ paths
    @property
    def state_path(self) -> pathlib.Path:
        return self.directory / STATE_FILE

    @property
    def lock_path(self) -> pathlib.Path:
        return self.directory / LOCK_FILE

    @property
    def log_path(self) -> pathlib.Path:
        return self.directory / EVENT_LOG

    # ------------------------------------------------------------------ public API
    def load(self) -> ModuleConfig:
        """load() -> ModuleConfig: the platform and TD, RTMRs included (created on first use)."""
        return self._snapshot()[1]

    def current(self) -> Tuple[int, ModuleConfig]:
        """current() -> (generation, ModuleConfig): both from one read, without the lock (what a
        poller applies)."""
        doc, config = self._snapshot()
        return doc["generation"], config

    def generation(self) -> int:
        """generation() -> int: changes on every write (no lock: state.json and the log's tail; a
        corrupt state raises here too, so a poller learns of it)."""
        return self._snapshot()[0]["generation"]

    def update(self, fn: Callable[[ModuleConfig], ModuleConfig]) -> ModuleConfig:
        """update(fn: ModuleConfig -> ModuleConfig) -> ModuleConfig: locked read-modify-write. An
        RTMR it changes is not in the log (a change behind the log's back, which replaying the log
        then shows): extend is the way to change an RTMR."""
        with self.transaction() as txn:
            new = fn(txn.config)
            if not isinstance(new, ModuleConfig):
                raise TypeError(f"fn must return a ModuleConfig, not {type(new).__name__}")
            new.validate()
            doc = dict(txn._doc, generation=txn.generation + 1, config=new.to_dict())
            self._write_state(txn._dir_fd, doc)
            return new

    def extend(self, index: int, data48: bytes) -> bytes:
        """extend(index: int, data48: bytes) -> bytes: TDG.MR.RTMR.EXTEND through the module model,
        as a locked read-modify-write; returns the new RTMR[index]. Errors are the module's
        (ValueError for data not 48 bytes, OperandInvalid operand RDX for an index >= 4); a failed
        extend changes nothing."""
        with self.transaction() as txn:
            module = self._module_for(txn.config)
            module.extend(index, data48)
            value = module.rtmr(index)
            txn.extend(index, bytes(data48), value)
            return value

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """transaction() -> context manager yielding a ``Transaction`` under the exclusive lock
        (made first if absent; what a killed writer left is completed first, see ``recover``)."""
        with self._locked() as dir_fd:
            doc, config, _ = self._current_locked(dir_fd)
            yield Transaction(self, dir_fd, doc, config)

    def recover(self) -> Dict[str, int]:
        """recover() -> dict: under the lock, complete what killed writers left (every writer does
        this first): ``torn_bytes`` cut from a last log line without its newline, ``stale_records``
        of a replaced log dropped, ``rolled_forward`` records applied to state.json, ``temp_files``
        removed. All zero when nothing was left."""
        with self._locked() as dir_fd:
            return self._current_locked(dir_fd)[2]

    def module(self) -> Any:
        """module() -> backend Module: a fresh module model of the stored platform and TD."""
        return self._module_for(self.load())

    def events(self) -> List[Dict[str, Any]]:
        """events() -> list of the extend log's committed records, oldest first."""
        dir_fd = self._open_dir(create=False)
        if dir_fd is None:
            return []
        try:
            raw = self._read_state(dir_fd)
            base = self._parse(raw)["log_base"] if raw is not None else 0
            return [r for r in self._log_records(dir_fd) if r["generation"] > base]
        finally:
            os.close(dir_fd)

    def boot_events(self) -> List["eventlog.Event"]:
        """boot_events() -> the boot event log the state was made with (tdxmodel.eventlog.Event
        list; the daemon serves it as the CCEL log). Its replay is the RTMRs the state started from;
        [] for a state made before boot logs existed (its RTMRs started at zero)."""
        self._snapshot()  # made on first use, as load() does
        dir_fd = self._open_dir(create=False)
        if dir_fd is None:
            return []
        try:
            try:
                fd = self._open_at(dir_fd, BOOT_LOG, os.O_RDONLY)
            except FileNotFoundError:
                return []
            try:
                raw = _read_fd(fd, MAX_BOOT_LOG_BYTES)
            except OSError as e:
                raise StateError(f"{self.directory / BOOT_LOG}: cannot read the boot event log: {e.strerror}") from None
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)
        try:
            return eventlog.parse_boot_log(raw, str(self.directory / BOOT_LOG))
        except eventlog.EventLogError as e:
            raise StateError(_one_line(e)) from None

    def init_from_toml(self, path: PathLike, *, force: bool = False) -> ModuleConfig:
        """init_from_toml(path, *, force=False) -> ModuleConfig: make the state from a TOML file
        (``ModuleConfig.from_toml``; a random seed unless it sets ``seed`` or ``mac_key``). An
        existing state is an error unless ``force``, which replaces it and restarts the extend log."""
        path = pathlib.Path(path)
        with self._locked() as dir_fd:
            raw = self._read_state(dir_fd)
            old = 0
            if raw is not None:
                if not force:
                    raise StateError(f"{self.state_path}: a state already exists (use force to replace it)")
                with contextlib.suppress(StateError):  # a corrupt state is simply replaced
                    old = self._parse(raw)["generation"]
            config, source, boot = self._config_from_toml(path)
            self._init(dir_fd, config, source, old, boot)
            return config

    # ------------------------------------------------------------------ for tdxmodel.host.collateral
    # It keeps its PKI files beside the state and holds ``_locked()`` across them and a config change,
    # so it needs the lock-held read and write without taking the lock again.
    def _mkdir(self) -> None:
        os.close(self._open_dir(create=True))

    def _read(self, locked: bool = False) -> Dict[str, Any]:
        """The current state document (every committed extend applied); ``locked``: the caller holds
        ``_locked()``, so killed writers' leftovers are completed too."""
        if not locked:
            return self._snapshot()[0]
        dir_fd = self._open_dir(create=True)
        try:
            return self._current_locked(dir_fd)[0]
        finally:
            os.close(dir_fd)

    def _write(self, config: ModuleConfig, generation: int, source: Optional[Dict[str, str]]) -> Dict[str, Any]:
        """With ``_locked()`` held: write ``config`` as the state of ``generation``."""
        dir_fd = self._open_dir(create=True)
        try:
            doc = self._current_locked(dir_fd)[0]
            return self._write_state(dir_fd, dict(doc, generation=max(generation, doc["generation"] + 1),
                                                  config=config.to_dict(), config_source=source))
        finally:
            os.close(dir_fd)

    # ------------------------------------------------------------------ the directory and its files
    def _module_for(self, config: ModuleConfig) -> Any:
        backend = self._backend
        if backend is None or isinstance(backend, str):
            backend = _backend.load(backend)
        return backend.Module(config, memory_pages=MODULE_MEMORY_PAGES)

    def _open_dir(self, create: bool) -> Optional[int]:
        """The state directory, opened without following a symlink in its last component (None if
        absent and not ``create``)."""
        if create:
            try:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except FileExistsError:
                pass  # a file or a link where the directory should be: the open below says which
            except OSError as e:
                raise StateError(f"{self.directory}: cannot create the state directory: {e.strerror}") from None
        try:
            return os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if create:
                raise StateError(f"{self.directory}: cannot create the state directory") from None
            return None
        except OSError as e:
            if os.path.islink(self.directory):
                raise StateError(f"{self.directory}: the state directory is a symbolic link; refusing to "
                                 "follow it (give the directory itself)") from None
            if e.errno == errno.ENOTDIR:
                raise StateError(f"{self.directory}: not a directory") from None
            raise StateError(f"{self.directory}: cannot open the state directory: {e.strerror}") from None

    def _open_at(self, dir_fd: int, name: str, flags: int, *, single_link: bool = False) -> int:
        """Open ``name`` in the state directory: never through a symlink, only a regular file, and
        (``single_link``, for files written in place) only one with no other hard link.
        FileNotFoundError passes through."""
        path = f"{self.directory / name}: {_WHAT[name]}"
        try:
            fd = os.open(name, flags | _OPEN, 0o600, dir_fd=dir_fd)
        except FileNotFoundError:
            raise
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StateError(f"{path}: is a symbolic link; refusing to follow it (remove it)") from None
            raise StateError(f"{path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StateError(f"{path}: not a regular file; refusing to use it (remove it)")
            if single_link and st.st_nlink != 1:
                raise StateError(f"{path}: has {st.st_nlink - 1} other hard link(s); refusing to write "
                                 "through it (remove it)")
            if flags & os.O_NONBLOCK == 0:
                os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """Hold the exclusive lock; yields the open directory. flock is per open file, so threads
        exclude each other too, but one thread must never take it twice."""
        dir_fd = self._open_dir(create=True)
        try:
            try:
                fd = self._open_at(dir_fd, LOCK_FILE, os.O_RDWR | os.O_CREAT)
            except FileNotFoundError:
                raise StateError(f"{self.lock_path}: cannot open the lock file") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield dir_fd
            finally:
                os.close(fd)  # closing the last descriptor releases the flock
        finally:
            os.close(dir_fd)

    def _read_state(self, dir_fd: int) -> Optional[bytes]:
        try:
            fd = self._open_at(dir_fd, STATE_FILE, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            raw = _read_fd(fd, MAX_STATE_BYTES)
        except OSError as e:
            raise StateError(f"{self.state_path}: cannot read state: {e.strerror}") from None
        finally:
            os.close(fd)
        if len(raw) > MAX_STATE_BYTES:
            raise StateError(f"{self.state_path}: corrupt state (larger than {MAX_STATE_BYTES} bytes); "
                             "remove it to start afresh")
        return raw

    def _write_state(self, dir_fd: int, doc: Dict[str, Any]) -> Dict[str, Any]:
        try:
            _replace_at(dir_fd, STATE_FILE, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)
        except OSError as e:
            raise StateError(f"{self.state_path}: cannot write state: {e.strerror}") from None
        return doc

    # ------------------------------------------------------------------ reading
    def _snapshot(self) -> Tuple[Dict[str, Any], ModuleConfig]:
        """The current state without the lock: state.json plus the committed records after it."""
        dir_fd = self._open_dir(create=False)
        raw = None
        if dir_fd is not None:
            try:
                raw = self._read_state(dir_fd)
                if raw is not None:
                    doc = self._parse(raw)
                    self._check_config_source(doc)
                    config = self._config_of(doc)
                    pending = self._pending(dir_fd, doc)
                    return self._roll_forward(doc, config, pending), config
            finally:
                os.close(dir_fd)
        with self._locked() as dir_fd:  # the first use: made under the lock
            doc, config, _ = self._current_locked(dir_fd)
            return doc, config

    def _parse(self, raw: bytes) -> Dict[str, Any]:
        where = self.state_path
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StateError(f"{where}: corrupt state (not JSON: {_one_line(e)}); remove it to start afresh") from None
        except RecursionError:
            raise StateError(f"{where}: corrupt state (JSON nested too deeply); remove it to start afresh") from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise StateError(f"{where}: corrupt state (not a format-{STATE_FORMAT} tdxmodel state); "
                             "remove it to start afresh")
        generation = doc.get("generation")
        base = doc.setdefault("log_base", 0)
        if not _is_count(generation) or not _is_count(base) or base > generation \
                or not isinstance(doc.get("config"), dict) \
                or not isinstance(doc.get("config_source"), (dict, type(None))):
            raise StateError(f"{where}: corrupt state (bad generation or config); remove it to start afresh")
        return doc

    def _config_of(self, doc: Dict[str, Any]) -> ModuleConfig:
        try:
            return ModuleConfig.from_dict(doc["config"])
        except (ConfigError, TypeError, ValueError, OverflowError, RecursionError) as e:
            raise StateError(f"{self.state_path}: corrupt state ({_one_line(e)[:200]}); "
                             "remove it to start afresh") from None

    def _check_config_source(self, doc: Dict[str, Any]) -> None:
        """A state made from one TOML file is not silently reused with another (or with none)."""
        if self.config_path is None:
            return
        source = doc.get("config_source") or {}
        if source.get("sha256") != _digest(self._config_bytes(self.config_path)):
            made = f"from {source.get('path')}" if source.get("path") else "with the default configuration"
            raise StateError(f"{self.state_path}: this state was made {made}, not from {self.config_path}; "
                             "remove the state directory (or use another --state) to apply it")

    def _record(self, line: bytes, lineno: Optional[int]) -> Dict[str, Any]:
        where = f"{self.log_path}: line {lineno}" if lineno else f"{self.log_path}: a line near the end"
        if len(line) > MAX_RECORD_BYTES:
            raise StateError(f"{where} is not an extend record (too long)")
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise StateError(f"{where} is not JSON") from None
        if not isinstance(rec, dict) or not _is_count(rec.get("generation")) \
                or not _is_count(rec.get("rtmr")) or not rec["rtmr"] < abi.TDX_NUM_RTMRS \
                or not _is_hex(rec.get("data"), 2 * abi.TDX_EXTEND_DATA_LEN) \
                or not _is_hex(rec.get("value"), _HEX48):
            raise StateError(f"{where} is not an extend record")
        return rec

    def _log_records(self, dir_fd: int) -> List[Dict[str, Any]]:
        """Every committed record of the log (a torn last line is not one), checked in order."""
        try:
            fd = self._open_at(dir_fd, EVENT_LOG, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            raise StateError(f"{self.log_path}: cannot read the extend log: {e.strerror}") from None
        finally:
            os.close(fd)
        text = b"".join(chunks)
        out: List[Dict[str, Any]] = []
        for lineno, line in enumerate(text[:text.rfind(b"\n") + 1].splitlines(), 1):
            rec = self._record(line, lineno)
            if out and rec["generation"] <= out[-1]["generation"]:
                raise StateError(f"{self.log_path}: line {lineno}: generation {rec['generation']} does "
                                 "not follow the one before")
            out.append(rec)
        return out

    def _pending(self, dir_fd: int, doc: Dict[str, Any]) -> List[Dict[str, Any]]:
        """The committed records newer than state.json, read from the log's tail (a writer killed
        between its log line and its state.json leaves one; usually there are none)."""
        try:
            fd = self._open_at(dir_fd, EVENT_LOG, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            size = os.fstat(fd).st_size
            want = 1 << 14
            while True:
                start = max(0, size - want)
                tail = os.pread(fd, size - start, start)
                lines = tail[:tail.rfind(b"\n") + 1].splitlines()
                if start > 0:
                    lines = lines[1:]  # may begin mid-line
                out: List[Dict[str, Any]] = []
                for line in reversed(lines):
                    rec = self._record(line, None)
                    if rec["generation"] <= doc["generation"]:
                        return out[::-1]
                    if out and rec["generation"] >= out[-1]["generation"]:
                        raise StateError(f"{self.log_path}: generations out of order near the end")
                    out.append(rec)
                if start == 0:
                    return out[::-1]
                want *= 4
        except OSError as e:
            raise StateError(f"{self.log_path}: cannot read the extend log: {e.strerror}") from None
        finally:
            os.close(fd)

    def _roll_forward(self, doc: Dict[str, Any], config: ModuleConfig,
                      pending: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Apply committed records past state.json to ``config`` (in place); the updated doc."""
        if not pending:
            return doc
        rtmr = list(config.rtmr)
        for rec in pending:
            i = rec["rtmr"]
            rtmr[i] = hashlib.sha384(rtmr[i] + bytes.fromhex(rec["data"])).digest()
            if rtmr[i].hex() != rec["value"].lower():
                raise StateError(f"{self.log_path}: the record of generation {rec['generation']} does not "
                                 f"follow from {self.state_path}; the state directory is corrupt")
        config.rtmr = tuple(rtmr)  # type: ignore[assignment]
        return dict(doc, generation=pending[-1]["generation"], config=config.to_dict())

    # ------------------------------------------------------------------ writing (lock held)
    def _current_locked(self, dir_fd: int) -> Tuple[Dict[str, Any], ModuleConfig, Dict[str, int]]:
        """The state (made if absent) after completing what killed writers left; the summary."""
        raw = self._read_state(dir_fd)
        if raw is None:
            if self.config_path is not None:
                config, source, boot = self._config_from_toml(self.config_path)
            else:
                config, source = ModuleConfig(seed=_random_seed()), None
                boot = eventlog.default_boot_events()
                config.rtmr = tuple(eventlog.replay(boot))  # type: ignore[assignment]
            doc = self._init(dir_fd, config, source, 0, boot)
            return doc, self._config_of(doc), {"torn_bytes": 0, "stale_records": 0, "rolled_forward": 0,
                                                "temp_files": 0}
        doc = self._parse(raw)
        self._check_config_source(doc)
        config = self._config_of(doc)
        summary = self._repair_log(dir_fd, doc)
        summary["temp_files"] = self._remove_temp_files(dir_fd)
        pending = self._pending(dir_fd, doc)
        summary["rolled_forward"] = len(pending)
        if pending:
            doc = self._write_state(dir_fd, self._roll_forward(doc, config, pending))
        return doc, config, summary

    def _init(self, dir_fd: int, config: ModuleConfig, source: Optional[Dict[str, str]],
              old_generation: int, boot: List["eventlog.Event"]) -> Dict[str, Any]:
        """A new state above every generation a leftover log holds; the boot event log is written
        first, the state.json rename is the commit (records at or below its log_base are void), then
        the old log goes."""
        try:
            _replace_at(dir_fd, BOOT_LOG, eventlog.boot_log_bytes(boot), 0o600)
        except OSError as e:
            raise StateError(f"{self.directory / BOOT_LOG}: cannot write the boot event log: {e.strerror}") from None
        generation = max(old_generation, self._last_generation_lenient(dir_fd)) + 1
        doc = {"format": STATE_FORMAT, "generation": generation, "config": config.to_dict(),
               "config_source": source, "log_base": generation}
        self._write_state(dir_fd, doc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(EVENT_LOG, dir_fd=dir_fd)
        self._remove_temp_files(dir_fd)
        return doc

    def _commit(self, dir_fd: int, doc: Dict[str, Any], config: ModuleConfig, index: int, data: bytes,
                value: bytes) -> Dict[str, Any]:
        """Commit one extend: the new state.json is written to a temp file first, then the log line
        (the commit point), then the temp file is renamed into place. A failure before the line is
        whole changes nothing (a partial line is cut off, the temp file removed). Once the line is
        in, the extend stands: a failed rename is made good by the next reader and writer (roll
        forward), so it is not an error."""
        generation = doc["generation"] + 1
        line = (json.dumps({"generation": generation, "rtmr": index, "data": data.hex(),
                            "value": value.hex()}) + "\n").encode()
        rtmr = list(config.rtmr)
        rtmr[index] = value
        new_config = dataclasses.replace(config, rtmr=tuple(rtmr))
        new = dict(doc, generation=generation, config=new_config.to_dict())
        try:
            tmp = _prepare_at(dir_fd, STATE_FILE, (json.dumps(new, indent=1) + "\n").encode(), 0o600)
        except OSError as e:
            raise StateError(f"{self.state_path}: cannot write state: {e.strerror}") from None
        try:
            self._append_line(dir_fd, line)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        config.rtmr = new_config.rtmr
        with contextlib.suppress(OSError):
            _install_at(dir_fd, tmp, STATE_FILE)
        return new

    def _append_line(self, dir_fd: int, line: bytes) -> None:
        try:
            fd = self._open_at(dir_fd, EVENT_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, single_link=True)
        except FileNotFoundError:
            raise StateError(f"{self.log_path}: cannot create the extend log") from None
        try:
            start = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
                if start == 0:
                    os.fsync(dir_fd)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise StateError(f"{self.log_path}: cannot append to the extend log: {e.strerror}") from None
        finally:
            os.close(fd)

    def _repair_log(self, dir_fd: int, doc: Dict[str, Any]) -> Dict[str, int]:
        """Cut a torn last line; drop records a re-initialisation made void (at or below log_base)."""
        summary = {"torn_bytes": 0, "stale_records": 0}
        try:
            fd = self._open_at(dir_fd, EVENT_LOG, os.O_RDWR, single_link=True)
        except FileNotFoundError:
            return summary
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                end, step = size, 4096
                keep = 0
                while end > 0:
                    start = max(0, end - step)
                    chunk = os.pread(fd, end - start, start)
                    nl = chunk.rfind(b"\n")
                    if nl >= 0:
                        keep = start + nl + 1
                        break
                    end = start
                os.ftruncate(fd, keep)
                os.fsync(fd)
                summary["torn_bytes"] = size - keep
                size = keep
            first = os.pread(fd, MAX_RECORD_BYTES + 1, 0)
        except OSError as e:
            raise StateError(f"{self.log_path}: cannot repair the extend log: {e.strerror}") from None
        finally:
            os.close(fd)
        if size and self._record(first[:first.find(b"\n")], 1)["generation"] <= doc["log_base"]:
            records = self._log_records(dir_fd)
            keep_recs = [r for r in records if r["generation"] > doc["log_base"]]
            summary["stale_records"] = len(records) - len(keep_recs)
            try:
                if keep_recs:
                    _replace_at(dir_fd, EVENT_LOG, b"".join((json.dumps(r) + "\n").encode() for r in keep_recs),
                                0o600)
                else:
                    os.unlink(EVENT_LOG, dir_fd=dir_fd)
            except OSError as e:
                raise StateError(f"{self.log_path}: cannot rewrite the extend log: {e.strerror}") from None
        return summary

    def _remove_temp_files(self, dir_fd: int) -> int:
        """Only lock holders make temp files here, so with the lock held every one is a dead writer's."""
        removed = 0
        for name in os.listdir(dir_fd):
            if _is_temp_name(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
                    removed += 1
        return removed

    def _last_generation_lenient(self, dir_fd: int) -> int:
        """The highest generation any line of a leftover log names (corrupt lines skipped)."""
        try:
            fd = self._open_at(dir_fd, EVENT_LOG, os.O_RDONLY)
        except (FileNotFoundError, StateError):
            return 0
        best = 0
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                for line in f:
                    with contextlib.suppress(ValueError, RecursionError, AttributeError):
                        g = json.loads(line[:MAX_RECORD_BYTES]).get("generation")
                        if _is_count(g):
                            best = max(best, g)
        except OSError:
            pass
        finally:
            os.close(fd)
        return best

    # ------------------------------------------------------------------ configuration files
    def _config_bytes(self, path: pathlib.Path) -> bytes:
        try:
            return read_config_bytes(path)
        except ConfigError as e:
            raise StateError(_one_line(e)) from None

    def _config_from_toml(self, path: pathlib.Path) -> Tuple[ModuleConfig, Dict[str, str], List["eventlog.Event"]]:
        """The config, its source record, and the boot events of a new state made from ``path``; the
        RTMRs are the events' replay unless the file sets ``rtmr`` itself
        (``eventlog.boot_events_for_config``)."""
        raw = self._config_bytes(path)
        try:
            config = ModuleConfig.from_toml_bytes(raw, path)
            boot, derive = eventlog.boot_events_for_config(raw, path)
        except (ConfigError, TypeError, ValueError, OverflowError, RecursionError) as e:
            msg = _one_line(e)[:300]
            raise StateError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
        if derive:
            config.rtmr = tuple(eventlog.replay(boot))  # type: ignore[assignment]
        if config.seed is None and config.mac_key is None:
            config.seed = _random_seed()  # one random platform key, then kept (README "Python API")
        return config, {"path": str(path.resolve()), "sha256": _digest(raw)}, boot


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_hex(value: Any, length: int) -> bool:
    if not isinstance(value, str) or len(value) != length:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def _random_seed() -> int:
    return secrets.randbits(63)


def replay_events(events: List[Dict[str, Any]], initial: Optional[List[bytes]] = None, *,
                  verify: bool = True, prefixes: bool = False) -> List[Any]:
    """replay_events(events, initial=None, *, verify=True, prefixes=False) -> list of 4 RTMRs: apply
    each logged extend in order, RTMR[i] <- SHA-384(RTMR[i] || data) (ref §4.5), from ``initial``
    (default all zero). Raises StateError at the first record whose logged value the replay does not
    reproduce. ``verify=False``: records need no "value" (an oracle replaying what it extended);
    ``prefixes``: the RTMRs after every prefix instead, a tuple each, ``len(events) + 1`` of them."""
    rtmr = list(initial) if initial is not None else [bytes(abi.TDX_SHA384_LEN)] * abi.TDX_NUM_RTMRS
    states = [tuple(rtmr)]
    for n, ev in enumerate(events):
        try:
            i, data = ev["rtmr"], bytes.fromhex(ev["data"])
            value = ev["value"] if verify else None
            if not 0 <= i < abi.TDX_NUM_RTMRS or len(data) != abi.TDX_EXTEND_DATA_LEN:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise StateError(f"extend log record {n} is malformed: {_one_line(ev)[:80]}") from None
        rtmr[i] = hashlib.sha384(rtmr[i] + data).digest()
        if verify and rtmr[i].hex() != value:
            raise StateError(f"extend log record {n} (generation {ev.get('generation')}): replay gives "
                             f"{rtmr[i].hex()[:16]}..., the log says {str(value)[:16]}...")
        if prefixes:
            states.append(tuple(rtmr))
    return states if prefixes else rtmr
