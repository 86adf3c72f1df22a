"""tdxmodel: an errno-exact emulator of the Intel TDX guest attestation path.

Layers (CONTRIBUTING.md): ``abi``/``profiles``/``config``/``errors`` (0) -> C core in ``csrc/`` (1) -> Cython
declarations and wrappers ``tdxmodel._core`` and the pure-Python reference ``tdxmodel._reference`` (2)
-> the Python API (``tdxmodel.report``, ``tdxmodel.client``, ...) (3) -> CLI and transports (4).
"""

from tdxmodel import abi
from tdxmodel._backend import BACKENDS, load as backend
from tdxmodel.config import ModuleConfig
from tdxmodel.errors import (EptViolation, KernelError, OperandBusy, OperandInvalid, TdExit, TdxError,
                             VirtualizationException)

__version__ = "0.1.0"

__all__ = ["abi", "backend", "BACKENDS", "ModuleConfig", "TdxError", "OperandInvalid", "OperandBusy",
           "KernelError", "TdExit", "EptViolation", "VirtualizationException", "__version__"]
