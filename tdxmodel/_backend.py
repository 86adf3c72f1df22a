"""Select a backend: the Cython core (``core``) or the pure-Python reference model (``reference``).

Both export exactly ``PUBLIC_API`` (pyzmq's ``select.py`` scheme). ``TDXMODEL_BACKEND`` picks the
default; without it the core is used when it is built, else the reference.
"""

from __future__ import annotations

import importlib
import os
import types
from typing import Dict, Optional

#: What every backend module must define. docs/CONTRACT.md gives each one's signature.
PUBLIC_API = (
    "BACKEND_NAME",
    "Module",
    "Kernel",
    "Process",
    "FaultAttr",
    "Clock",
    "Host",
    "SharedHost",
    "TestQuoteProducer",
)

BACKENDS = ("core", "reference")
_MODULES = {"core": "tdxmodel._core", "reference": "tdxmodel._reference"}
_cache: Dict[str, types.SimpleNamespace] = {}


def load(name: Optional[str] = None) -> types.SimpleNamespace:
    """The backend ``name`` (or the default) as a namespace holding exactly PUBLIC_API."""
    if name is None:
        name = default_name()
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name not in _cache:
        mod = importlib.import_module(_MODULES[name])
        missing = [n for n in PUBLIC_API if not hasattr(mod, n)]
        if missing:
            raise ImportError(f"backend {name!r} lacks {', '.join(missing)}")
        _cache[name] = types.SimpleNamespace(**{n: getattr(mod, n) for n in PUBLIC_API})
    return _cache[name]


def core_available() -> bool:
    try:
        importlib.import_module(_MODULES["core"])
    except ImportError:
        return False
    return True


def default_name() -> str:
    env = os.environ.get("TDXMODEL_BACKEND")
    if env:
        if env not in BACKENDS:
            raise ValueError(f"TDXMODEL_BACKEND={env!r}: choose one of {', '.join(BACKENDS)}")
        return env
    return "core" if core_available() else "reference"
