"""The Cython core backend (layer 2 over the C core in csrc/)."""

try:
    from tdxmodel._core._ext import (BACKEND_NAME, Clock, FaultAttr, Host, Kernel, Module,  # noqa: F401
                                      Process, SharedHost, TdqeCore, TestQuoteProducer)
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "tdxmodel's compiled core is not built (or is out of date). Run the install command from "
        "README.md (./install.sh), or `python setup.py build_ext --inplace` in a source tree; set "
        "TDXMODEL_BACKEND=reference to use the pure-Python model instead. "
        f"(underlying error: {exc})") from exc
