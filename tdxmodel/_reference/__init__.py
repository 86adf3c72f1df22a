"""The pure-Python reference model (layer 2): the same behaviour as the Cython core, in plain Python
(hashlib/hmac, threading), usable without a compiler. docs/CONTRACT.md is the interface."""

BACKEND_NAME = "reference"

from tdxmodel._reference.module import Module  # noqa: E402,F401
from tdxmodel._reference.kernel import FaultAttr, Kernel, Process  # noqa: E402,F401
from tdxmodel._reference.host import Clock, Host, SharedHost  # noqa: E402,F401
from tdxmodel.host_faults import TestQuoteProducer  # noqa: E402,F401
