"""The pure-Python reference model (layer 2): the same behaviour as the Cython core, in plain Python
(hashlib/hmac, threading), usable without a compiler. docs/CONTRACT.md is the interface."""

BACKEND_NAME = "reference"

from tdxmodel._reference.module import Module  # noqa: E402,F401

try:  # DEVELOPMENT: made strict once the kernel model lands (tests/test_backend_api.py checks)
    from tdxmodel._reference.kernel import FaultAttr, Kernel, Process  # noqa: F401
except ModuleNotFoundError as exc:
    if exc.name != "tdxmodel._reference.kernel":
        raise
