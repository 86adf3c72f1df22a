"""The persistent emulated platform and TD: the state directory (layer 3; docs/CONTRACT.md "State
directory").

One directory holds one platform (its MAC key, from a random seed made once) and one TD (its
measurements, RTMRs included), so successive ``tdxmodel`` commands, and processes running at the same
time, see one machine:

* ``state.json``: ``{"format": 1, "generation": N, "config": ModuleConfig.to_dict(),
  "config_source": {"path", "sha256"} | null}``. Replaced atomically on every write (temp file in the
  same directory, fsync, ``os.replace``, fsync of the directory), so a reader never needs the lock;
* ``lock``: every read-modify-write holds an exclusive ``fcntl.flock`` on it, so N processes
  extending at once lose no extend;
* ``events.jsonl``: one line per RTMR extend, appended under the same lock after the state is
  written: ``{"generation", "rtmr", "data", "value"}`` (hex). Replaying it in order with
  RTMR <- SHA-384(RTMR || data) (ref §4.5) reproduces the RTMRs; it restarts when the state is
  re-initialised.

Where: ``StateStore(directory)``, else ``$TDXMODEL_STATE``, else ``$XDG_STATE_HOME/tdxmodel``, else
``~/.local/state/tdxmodel``. A new state takes the ``ModuleConfig`` defaults (README "Python API"),
or a TOML file (``config_path``, else ``$TDXMODEL_CONFIG``); a config without ``seed`` or
``mac_key`` gets a random seed. A state made from one TOML file refuses to be opened with a
different one, rather than silently ignoring it.

Errors are ``StateError`` (a ``ValueError``): one line that names the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import secrets
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from tdxmodel import _backend, abi
from tdxmodel.config import ConfigError, ModuleConfig

PathLike = Union[str, "os.PathLike[str]"]

STATE_FILE = "state.json"
LOCK_FILE = "lock"
EVENT_LOG = "events.jsonl"
STATE_FORMAT = 1
#: Guest memory of the Module a store builds: the store only uses the host-buffer leaves, so it
#: needs none of the kernel's pages (docs/CONTRACT.md: pages 0..3 are the host's).
MODULE_MEMORY_PAGES = 16


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def atomic_write(path: PathLike, data: bytes, mode: int = 0o644) -> None:
    """atomic_write(path, data: bytes, mode=0o644) -> None

    Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one: a
    temp file in the same directory, fsync, ``os.replace``, then fsync of the directory."""
    path = pathlib.Path(path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _file_digest(path: pathlib.Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise StateError(f"{path}: cannot read configuration: {e.strerror}") from None


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
        return self._config_of(self._read())

    def generation(self) -> int:
        """generation() -> int: changes on every write (one read of state.json, no lock; a corrupt
        state raises here too, so a poller learns of it)."""
        doc = self._read()
        self._config_of(doc)
        return doc["generation"]

    def update(self, fn: Callable[[ModuleConfig], ModuleConfig]) -> ModuleConfig:
        """update(fn: ModuleConfig -> ModuleConfig) -> ModuleConfig: locked read-modify-write."""
        with self._locked():
            doc = self._read(locked=True)
            new = fn(self._config_of(doc))
            if not isinstance(new, ModuleConfig):
                raise TypeError(f"fn must return a ModuleConfig, not {type(new).__name__}")
            new.validate()
            self._write(new, doc["generation"] + 1, doc.get("config_source"))
            return new

    def extend(self, index: int, data48: bytes) -> bytes:
        """extend(index: int, data48: bytes) -> bytes: TDG.MR.RTMR.EXTEND through the module model,
        as a locked read-modify-write; returns the new RTMR[index]. Errors are the module's
        (ValueError for data not 48 bytes, OperandInvalid operand RDX for an index >= 4)."""
        with self._locked():
            doc = self._read(locked=True)
            config = self._config_of(doc)
            module = self._module_for(config)
            module.extend(index, data48)
            value = module.rtmr(index)
            rtmr = list(config.rtmr)
            rtmr[index] = value
            config.rtmr = tuple(rtmr)  # type: ignore[assignment]
            generation = doc["generation"] + 1
            self._write(config, generation, doc.get("config_source"))
            self._append_event({"generation": generation, "rtmr": index, "data": bytes(data48).hex(),
                                "value": value.hex()})
            return value

    def module(self) -> Any:
        """module() -> backend Module: a fresh module model of the stored platform and TD."""
        return self._module_for(self.load())

    def events(self) -> List[Dict[str, Any]]:
        """events() -> list of the extend log's records, oldest first."""
        try:
            text = self.log_path.read_text()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise StateError(f"{self.log_path}: cannot read the extend log: {_reason(e)}") from None
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise StateError(f"{self.log_path}: line {lineno} is not JSON") from None
        return out

    def init_from_toml(self, path: PathLike, *, force: bool = False) -> ModuleConfig:
        """init_from_toml(path, *, force=False) -> ModuleConfig: make the state from a TOML file
        (``ModuleConfig.from_toml``; a random seed unless it sets ``seed`` or ``mac_key``). An
        existing state is an error unless ``force``, which replaces it and restarts the extend log."""
        path = pathlib.Path(path)
        self._mkdir()
        with self._locked():
            old = None
            if self.state_path.exists():
                if not force:
                    raise StateError(f"{self.state_path}: a state already exists (use force to replace it)")
                with contextlib.suppress(StateError, OSError):  # a corrupt state is simply replaced
                    old = self._parse(self.state_path.read_bytes())
            config = self._config_from_toml(path)
            generation = (old["generation"] if old else 0) + 1
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()
            self._write(config, generation, {"path": str(path.resolve()), "sha256": _file_digest(path)})
            return config

    # ------------------------------------------------------------------ internals
    def _module_for(self, config: ModuleConfig) -> Any:
        backend = self._backend
        if backend is None or isinstance(backend, str):
            backend = _backend.load(backend)
        return backend.Module(config, memory_pages=MODULE_MEMORY_PAGES)

    def _mkdir(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StateError(f"{self.directory}: cannot create the state directory: {e.strerror}") from None
        if not self.directory.is_dir():
            raise StateError(f"{self.directory}: not a directory")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._mkdir()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StateError(f"{self.lock_path}: cannot open the lock file: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def _read(self, locked: bool = False, check_source: bool = True) -> Dict[str, Any]:
        """The parsed state.json, made first if absent (this is the first use). ``locked``: the
        caller holds the lock (flock is per open file: never take it twice in one process)."""
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            if locked:
                return self._create()
            with self._locked():
                return self._read(locked=True, check_source=check_source)
        except OSError as e:
            raise StateError(f"{self.state_path}: cannot read state: {e.strerror}") from None
        doc = self._parse(raw)
        if check_source:
            self._check_config_source(doc)
        return doc

    def _parse(self, raw: bytes) -> Dict[str, Any]:
        where = self.state_path
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StateError(f"{where}: corrupt state (not JSON: {_one_line(e)}); remove it to start afresh") from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise StateError(f"{where}: corrupt state (not a format-{STATE_FORMAT} tdxmodel state); "
                             "remove it to start afresh")
        generation = doc.get("generation")
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0 \
                or not isinstance(doc.get("config"), dict):
            raise StateError(f"{where}: corrupt state (bad generation or config); remove it to start afresh")
        return doc

    def _config_of(self, doc: Dict[str, Any]) -> ModuleConfig:
        try:
            return ModuleConfig.from_dict(doc["config"])
        except (ConfigError, TypeError, ValueError) as e:
            raise StateError(f"{self.state_path}: corrupt state ({_one_line(e)}); remove it to start afresh") from None

    def _check_config_source(self, doc: Dict[str, Any]) -> None:
        """A state made from one TOML file is not silently reused with another (or with none)."""
        if self.config_path is None:
            return
        source = doc.get("config_source") or {}
        if source.get("sha256") != _file_digest(self.config_path):
            made = f"from {source.get('path')}" if source.get("path") else "with the default configuration"
            raise StateError(f"{self.state_path}: this state was made {made}, not from {self.config_path}; "
                             "remove the state directory (or use another --state) to apply it")

    def _create(self) -> Dict[str, Any]:
        """Called with the lock held and no state.json: the first use of this directory."""
        source = None
        if self.config_path is not None:
            config = self._config_from_toml(self.config_path)
            source = {"path": str(self.config_path.resolve()), "sha256": _file_digest(self.config_path)}
        else:
            config = ModuleConfig(seed=_random_seed())
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()  # a log without its state would replay onto the wrong RTMRs
        return self._write(config, 1, source)

    def _config_from_toml(self, path: pathlib.Path) -> ModuleConfig:
        try:
            config = ModuleConfig.from_toml(path)
        except (ConfigError, TypeError, ValueError) as e:
            msg = _one_line(e)
            raise StateError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
        if config.seed is None and config.mac_key is None:
            config.seed = _random_seed()  # one random platform key, then kept (README "Python API")
        return config

    def _write(self, config: ModuleConfig, generation: int, source: Optional[Dict[str, str]]) -> Dict[str, Any]:
        doc = {"format": STATE_FORMAT, "generation": generation, "config": config.to_dict(),
               "config_source": source}
        try:
            atomic_write(self.state_path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)
        except OSError as e:
            raise StateError(f"{self.state_path}: cannot write state: {e.strerror}") from None
        return doc

    def _append_event(self, record: Dict[str, Any]) -> None:
        try:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, (json.dumps(record) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StateError(f"{self.log_path}: cannot append to the extend log: {e.strerror}") from None


def _random_seed() -> int:
    return secrets.randbits(63)


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or _one_line(e)


def replay_events(events: List[Dict[str, Any]], initial: Optional[List[bytes]] = None) -> List[bytes]:
    """replay_events(events, initial=None) -> list of 4 RTMRs: apply each logged extend in order,
    RTMR[i] <- SHA-384(RTMR[i] || data) (ref §4.5), from ``initial`` (default all zero). Raises
    StateError at the first record whose logged value the replay does not reproduce."""
    rtmr = list(initial) if initial is not None else [bytes(abi.TDX_SHA384_LEN)] * abi.TDX_NUM_RTMRS
    for n, ev in enumerate(events):
        try:
            i, data, value = ev["rtmr"], bytes.fromhex(ev["data"]), ev["value"]
            if not 0 <= i < abi.TDX_NUM_RTMRS or len(data) != abi.TDX_EXTEND_DATA_LEN:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise StateError(f"extend log record {n} is malformed: {_one_line(ev)[:80]}") from None
        rtmr[i] = hashlib.sha384(rtmr[i] + data).digest()
        if rtmr[i].hex() != value:
            raise StateError(f"extend log record {n} (generation {ev.get('generation')}): replay gives "
                             f"{rtmr[i].hex()[:16]}..., the log says {str(value)[:16]}...")
    return rtmr
