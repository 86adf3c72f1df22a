"""The host side of attestation (its own layer, beside the guest kernel): the quoting enclave, the
emulated PKI and collateral, and a PCCS-compatible server.

It imports layer 0 (``abi``, ``quote_abi``, ``config``), the Python API (``report``, ``state``,
``quote``) and the backend Module; nothing below it imports it.

* ``tdxmodel.host.qe``: ``QuotingEnclave`` (the TDQE model, quote.md §5.1-§5.4);
* ``tdxmodel.host.pki``: certificates and CRLs as Intel's PCS issues them;
* ``tdxmodel.host.collateral``: ``Platform``, the per-state-directory PKI, TCB position and collateral;
* ``tdxmodel.host.pccs``: the PCS v4 HTTP server.
* ``tdxmodel.host.qgs``: the quote generation service (Intel's QGS protocol, quote.md §4.2) over a
  quote producer, and the VMM's producers over it (upstream QEMU's framing, the pass-through).

**The quote-producer interface.** Whatever turns a TDREPORT into a quote on the host (the quote path's
QGS/VMM model calls it) is a ``QuoteProducer``: one method ``produce(tdreport: bytes) -> bytes`` that
returns the quote or raises ``tdxmodel.host.qe.TdqeError`` (``.error`` is the TDQE's error name).
``quote_producer(state_dir)`` gives the emulated platform's TDQE for a state directory; the keys are
loaded once, so keep the object and call ``produce`` per request (it is safe to call from several
threads: it holds no per-call state).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable


@runtime_checkable
class QuoteProducer(Protocol):
    def produce(self, tdreport: bytes) -> bytes:
        """TDREPORT (1024 bytes) in, DCAP TD quote out; TdqeError when the TDQE refuses it."""
        ...


def quote_producer(state_dir: Optional[Any] = None, *, module: Any = None) -> QuoteProducer:
    """quote_producer(state_dir=None, *, module=None) -> the TDQE of the platform in ``state_dir``
    (default: the default state directory). ``module`` checks the TDREPORT MAC (default: a module
    model of that platform)."""
    from tdxmodel.host.collateral import Platform
    from tdxmodel.state import StateStore
    return Platform(StateStore(state_dir)).quoting_enclave(module=module)
