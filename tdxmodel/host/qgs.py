"""The quote generation service (QGS) model: Intel's QGS protocol over a quote producer (host layer).

What Intel's ``qgsd`` does with the bytes a client sends on one connection (quote.md §4.2;
``qgs_server.cpp`` / ``qgs_ql_logic.cpp`` [37], ``qgs_msg_lib.cpp`` [35]; the wire constants are in
``tdxmodel.quote_abi``, ``QGS_*``):

1. The first read takes at least 4 + 16 bytes. The message is **framed** when the 4-byte big-endian
   length is not 0, the header's ``size`` equals it and ``qgs_msg_get_type`` accepts the header
   (major version 1, type below 6); the server then reads the rest of the frame.
2. Anything else is a **raw** request once exactly 1024 bytes have arrived: a TDREPORT that passes
   the "legitimate TD report" checks (``QGS_RAW_ZERO_RANGES``) is answered with the raw quote, with no
   framing; a report that fails them, or that the quoting enclave refuses, gets no answer (the
   connection is closed).
3. A framed GET_QUOTE_REQ is inflated with the library's checks (size >= 24, major 1, type, size,
   error_code 0, report_size != 0, size = 24 + report_size + id_list_size). Every failure there, and
   every refusal of the quoting enclave, is answered with the zero-filled error response carrying
   ``QGS_MSG_ERROR_UNEXPECTED`` (get_resp maps them all to it); success is a GET_QUOTE_RESP v1.1 with
   selected_id_size 0 and the quote.
4. GET_COLLATERAL_REQ and GET_PLATFORM_INFO_REQ get their error response (UNEXPECTED): the emulated
   QGS has no quote provider library or platform library, and the real one answers so when those
   fail (a choice; quote.md does not model them). A request of a response type (1, 3, 5) is closed
   without an answer (get_resp's ``default: return {}``).
5. One request per connection: the answer is written, then the connection is closed; a connection
   is closed after ``QGS_TIMEOUT_S`` whatever it sent.

Two deliberate differences from Intel's server, each a bug there *(Analysis)*: its follow-up reads
restart at the start of its 4096-byte buffer, so a request that arrives in more than one read is
mis-assembled; here the bytes are assembled in order. And a frame longer than that buffer is not read
here (closed without an answer), where Intel's server reads it over itself.

The host's GetQuote reaches the same service through ``QemuQuoteGenerator`` (upstream QEMU's
``tdx-quote-generator``: it frames the guest's payload as a GET_QUOTE_REQ and checks the response,
quote.md §4.1) or ``QgsPassthrough`` (a VMM that hands the guest's buffer to the QGS as is and
returns its answer unchanged, which Intel's downstream GET_QUOTE ioctl and libtdx_attest expect,
quote.md §2.7 step 5).
"""

from __future__ import annotations

import struct
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from tdxmodel import quote_abi as qa

_HDR = struct.Struct(qa.QGS_HEADER_FMT)
_TWO = struct.Struct("<II")


class QgsError(Exception):
    """A QGS message that does not pass the library's checks. ``.code`` is the qgs_msg_error_t."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (0x{code:08x})")
        self.code = code


# ------------------------------------------------------------------ the codec (qgs_msg_lib)
def frame(message: bytes) -> bytes:
    """The 4-byte big-endian length, then the message."""
    return struct.pack(">I", len(message)) + bytes(message)


def unframe(data: bytes) -> bytes:
    """The message of one whole frame; QgsError(INVALID_SIZE) if the length does not match."""
    data = bytes(data)
    if len(data) < qa.QGS_FRAME_LEN_BYTES or struct.unpack_from(">I", data)[0] != len(data) - 4:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_SIZE, "the frame length is not the message's")
    return data[4:]


def header(message: bytes) -> Tuple[int, int, int, int, int]:
    """(major, minor, type, size, error_code) of a message; QgsError(INVALID_PARAMETER) if short."""
    if len(message) < qa.QGS_HEADER_LEN:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_PARAMETER, "shorter than the 16-byte header")
    return _HDR.unpack_from(message)


def get_type(message: bytes) -> int:
    """qgs_msg_get_type: the type, if the header is at least 16 bytes with major 1 and a known type
    (an unknown type is INVALID_VERSION there, reproduced)."""
    major, _minor, mtype, _size, _code = header(message)
    if major != qa.QGS_MSG_MAJOR_VER:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_VERSION, f"major version {major}, not 1")
    if mtype >= qa.QGS_MSG_TYPE_MAX:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_VERSION, f"message type {mtype} is unknown")
    return mtype


def get_quote_request(report: bytes, id_list: bytes = b"", *, minor: int = qa.QGS_MSG_MINOR_VER) -> bytes:
    """qgs_msg_gen_get_quote_req: header (type 0) + report_size + id_list_size + report + id list."""
    report, id_list = bytes(report), bytes(id_list)
    if not report:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_PARAMETER, "the report cannot be empty")
    size = qa.QGS_QUOTE_MSG_LEN + len(report) + len(id_list)
    return (_HDR.pack(qa.QGS_MSG_MAJOR_VER, minor, qa.QGS_GET_QUOTE_REQ, size, 0)
            + _TWO.pack(len(report), len(id_list)) + report + id_list)


def get_quote_response(quote: bytes, selected_id: bytes = b"") -> bytes:
    """qgs_msg_gen_get_quote_resp: a GET_QUOTE_RESP v1.1 with error_code 0."""
    quote, selected_id = bytes(quote), bytes(selected_id)
    if not quote:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_PARAMETER, "the quote cannot be empty")
    size = qa.QGS_QUOTE_MSG_LEN + len(selected_id) + len(quote)
    return (_HDR.pack(qa.QGS_MSG_MAJOR_VER, qa.QGS_MSG_MINOR_VER, qa.QGS_GET_QUOTE_RESP, size,
                      qa.QGS_MSG_SUCCESS) + _TWO.pack(len(selected_id), len(quote)) + selected_id + quote)


def error_response(error_code: int, resp_type: int = qa.QGS_GET_QUOTE_RESP) -> bytes:
    """qgs_msg_gen_error_resp: the zero-filled fixed part of the response type with error_code set."""
    if error_code == qa.QGS_MSG_SUCCESS:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_PARAMETER, "an error response needs an error code")
    if resp_type not in qa.QGS_ERROR_RESP_LEN:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_TYPE, f"type {resp_type} is not a response")
    n = qa.QGS_ERROR_RESP_LEN[resp_type]
    return _HDR.pack(qa.QGS_MSG_MAJOR_VER, qa.QGS_MSG_MINOR_VER, resp_type, n, error_code) + bytes(n - 16)


def inflate_get_quote_request(message: bytes) -> Tuple[bytes, bytes]:
    """qgs_msg_inflate_get_quote_req, its checks in its order -> (report, id_list); QgsError."""
    m = bytes(message)
    if len(m) < qa.QGS_QUOTE_MSG_LEN:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_PARAMETER, "shorter than a get_quote request")
    major, _minor, mtype, size, code = _HDR.unpack_from(m)
    report_size, id_size = _TWO.unpack_from(m, 16)
    if major != qa.QGS_MSG_MAJOR_VER:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_VERSION, f"major version {major}, not 1")
    if mtype != qa.QGS_GET_QUOTE_REQ:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_TYPE, f"type {mtype} is not GET_QUOTE_REQ")
    if size != len(m):
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_SIZE, f"header size {size}, message {len(m)} bytes")
    if code != 0:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_CODE, f"error_code {code:#x} in a request")
    if report_size == 0:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_CODE, "report_size 0")
    if qa.QGS_QUOTE_MSG_LEN + report_size + id_size != size:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_SIZE, "size is not 24 + report_size + id_list_size")
    body = m[qa.QGS_QUOTE_MSG_LEN:]
    return body[:report_size], body[report_size:]


def inflate_get_quote_response(message: bytes) -> Tuple[bytes, bytes]:
    """qgs_msg_inflate_get_quote_resp -> (selected_id, quote); QgsError. SUCCESS with an empty quote
    is refused ("It makes no sense to return success and an empty quote"); an error response is
    returned as (b"", b"") with its code in ``header(message)[4]``."""
    m = bytes(message)
    if len(m) < qa.QGS_QUOTE_MSG_LEN:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_PARAMETER, "shorter than a get_quote response")
    major, _minor, mtype, size, code = _HDR.unpack_from(m)
    id_size, quote_size = _TWO.unpack_from(m, 16)
    if major != qa.QGS_MSG_MAJOR_VER:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_VERSION, f"major version {major}, not 1")
    if mtype != qa.QGS_GET_QUOTE_RESP:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_TYPE, f"type {mtype} is not GET_QUOTE_RESP")
    if size != len(m):
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_SIZE, f"header size {size}, message {len(m)} bytes")
    if qa.QGS_QUOTE_MSG_LEN + id_size + quote_size != size:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_SIZE, "size is not 24 + selected_id_size + quote_size")
    if code == qa.QGS_MSG_SUCCESS:
        if quote_size == 0:
            raise QgsError(qa.QGS_MSG_ERROR_INVALID_SIZE, "success with an empty quote")
    elif code < qa.QGS_MSG_ERROR_MAX:
        if id_size or quote_size:
            raise QgsError(qa.QGS_MSG_ERROR_INVALID_SIZE, "an error response with a quote or an id")
        return b"", b""
    else:
        raise QgsError(qa.QGS_MSG_ERROR_INVALID_CODE, f"error_code {code:#x} is not a QGS error")
    body = m[qa.QGS_QUOTE_MSG_LEN:]
    return body[:id_size], body[id_size:]


def is_legitimate_raw_report(data: bytes) -> bool:
    """get_raw_resp's "legitimate TD report" checks (``QGS_RAW_ZERO_RANGES``)."""
    if len(data) != qa.QGS_RAW_REPORT_LEN:
        return False
    if data[0] != qa.QGS_RAW_REPORT_TYPE or data[1] != qa.QGS_RAW_REPORT_SUBTYPE \
            or data[2] not in qa.QGS_RAW_REPORT_VERSIONS:
        return False
    return not any(any(data[o:o + n]) for o, n in qa.QGS_RAW_ZERO_RANGES)


# ------------------------------------------------------------------ what arrived on a connection
NEED_MORE, FRAMED, RAW, UNREADABLE = "need_more", "framed", "raw", "unreadable"


def classify(data: bytes) -> Tuple[str, int]:
    """classify(bytes received so far) -> (kind, total bytes the request needs).

    ``NEED_MORE`` with the count to wait for (before the first 20 bytes: 20); ``FRAMED`` with 4 +
    the frame length; ``RAW`` with 1024; ``UNREADABLE`` for a frame longer than the server's buffer
    (closed without an answer)."""
    n = len(data)
    if n < qa.QGS_FIRST_READ_MIN:
        return NEED_MORE, qa.QGS_FIRST_READ_MIN
    msg_len = struct.unpack_from(">I", data)[0]
    framed = False
    if msg_len and _HDR.unpack_from(data, 4)[3] == msg_len:
        try:
            get_type(data[4:])
            framed = True
        except QgsError:
            framed = False
    if framed:
        total = qa.QGS_FRAME_LEN_BYTES + msg_len
        if total > qa.QGS_READ_BUFFER:
            return UNREADABLE, total
        return (FRAMED if n >= total else NEED_MORE), total
    return (RAW if n >= qa.QGS_RAW_REPORT_LEN else NEED_MORE), qa.QGS_RAW_REPORT_LEN


class QgsService:
    """QgsService(producer, *, log=None)

    The QGS's request logic over a quote producer (``tdxmodel.host.QuoteProducer``: the emulated TDQE).
    ``exchange(request_bytes)`` is one connection: the bytes a client sent in, the bytes the server
    writes back out (a frame, a raw quote), or None when the server closes without an answer. Safe to
    call from several threads. ``counters()`` counts what it answered."""

    def __init__(self, producer: Any, *, log: Optional[Callable[[str], None]] = None) -> None:
        if not callable(getattr(producer, "produce", None)):
            raise TypeError("producer must have a produce(tdreport: bytes) -> bytes method")
        self.producer = producer
        self.log = log or (lambda msg: None)
        self._lock = threading.Lock()
        self._c: Dict[str, int] = {"requests": 0, "quotes": 0, "raw_quotes": 0, "error_responses": 0,
                                   "closed_unanswered": 0}

    def _count(self, key: str) -> None:
        with self._lock:
            self._c[key] += 1

    def counters(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._c)

    def exchange(self, data: bytes) -> Optional[bytes]:
        """The whole request one connection sent -> what the server writes (None: closed, no answer).
        Bytes past the request are ignored (the server reads only what the request needs)."""
        data = bytes(data)
        self._count("requests")
        kind, total = classify(data)
        out: Optional[bytes] = None
        if kind == FRAMED:
            resp = self.answer(data[4:total])
            out = frame(resp) if resp is not None else None
        elif kind == RAW:
            out = self.answer_raw(data[:total])
        else:
            self.log(f"QGS: {'a frame longer than the 4096-byte read buffer' if kind == UNREADABLE else 'an incomplete request'} "
                     f"({len(data)} bytes): closed without an answer")
        if out is None:
            self._count("closed_unanswered")
        return out

    def answer(self, message: bytes) -> Optional[bytes]:
        """get_resp: a framed request's message -> the response message, or None (closed)."""
        try:
            mtype = get_type(message)
        except QgsError as e:
            self.log(f"QGS: {e}: closed without an answer")
            return None
        if mtype == qa.QGS_GET_QUOTE_REQ:
            try:
                report, _ids = inflate_get_quote_request(message)
                quote = bytes(self.producer.produce(report))
            except QgsError as e:
                self.log(f"QGS: GET_QUOTE_REQ refused: {e}")
                return self._error(qa.QGS_GET_QUOTE_RESP)
            except Exception as e:  # the quoting enclave refused the report (TdqeError) or failed
                self.log(f"QGS: the quoting enclave refused the report: {e}")
                return self._error(qa.QGS_GET_QUOTE_RESP)
            self._count("quotes")
            return get_quote_response(quote)
        if mtype == qa.QGS_GET_COLLATERAL_REQ:
            self.log("QGS: GET_COLLATERAL_REQ: no quote provider library here (error response)")
            return self._error(qa.QGS_GET_COLLATERAL_RESP)
        if mtype == qa.QGS_GET_PLATFORM_INFO_REQ:
            self.log("QGS: GET_PLATFORM_INFO_REQ: no platform library here (error response)")
            return self._error(qa.QGS_GET_PLATFORM_INFO_RESP)
        self.log(f"QGS: a request of response type {mtype}: closed without an answer")
        return None

    def _error(self, resp_type: int) -> bytes:
        self._count("error_responses")
        return error_response(qa.QGS_MSG_ERROR_UNEXPECTED, resp_type)

    def answer_raw(self, report: bytes) -> Optional[bytes]:
        """get_raw_resp: a raw 1024-byte TDREPORT -> the raw quote, or None (closed)."""
        if not is_legitimate_raw_report(report):
            self.log("QGS: a raw request that is not a legitimate TD report: closed without an answer")
            return None
        try:
            quote = bytes(self.producer.produce(bytes(report)))
        except Exception as e:
            self.log(f"QGS: the quoting enclave refused the raw report: {e}")
            return None
        self._count("raw_quotes")
        return quote


# ------------------------------------------------------------------ the VMM's side (quote producers)
class QgsUnavailable(Exception):
    """The VMM could not reach the QGS (QEMU: connect failure, QGS_UNAVAILABLE, quote.md §4.1)."""


class QemuQuoteGenerator:
    """QemuQuoteGenerator(service): upstream QEMU's tdx-quote-generator as a quote producer.

    ``produce(payload)`` frames the guest's in_len bytes as a GET_QUOTE_REQ v1.1 (report_size =
    in_len, id_list_size 0), asks the QGS and checks its answer as QEMU does (quote.md §4.1: major
    **and** minor 1, type GET_QUOTE_RESP, error_code 0, selected_id_size 0, quote_size = payload - 4
    - 24), returning the bare quote; any failure raises (the host then writes status ERROR).
    ``service`` is a ``QgsService`` or anything with ``exchange(bytes) -> bytes | None``."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def produce(self, payload: bytes) -> bytes:
        reply = self.service.exchange(frame(get_quote_request(bytes(payload))))
        if reply is None:
            raise QgsError(qa.QGS_MSG_ERROR_UNEXPECTED, "the QGS closed the connection without an answer")
        body = unframe(reply)
        major, minor, mtype, size, code = header(body)
        if (major, minor) != (qa.QGS_MSG_MAJOR_VER, qa.QGS_MSG_MINOR_VER):
            raise QgsError(qa.QGS_MSG_ERROR_INVALID_VERSION, f"response version {major}.{minor}, not 1.1")
        if mtype != qa.QGS_GET_QUOTE_RESP:
            raise QgsError(qa.QGS_MSG_ERROR_INVALID_TYPE, f"response type {mtype}")
        if code != 0:
            raise QgsError(code, "the QGS answered with an error")
        if len(body) < qa.QGS_QUOTE_MSG_LEN:
            raise QgsError(qa.QGS_MSG_ERROR_INVALID_SIZE, "short response")
        id_size, quote_size = _TWO.unpack_from(body, 16)
        if id_size != 0:
            raise QgsError(qa.QGS_MSG_ERROR_INVALID_SIZE, f"selected_id_size {id_size}")
        if size != len(body) or quote_size != len(body) - qa.QGS_QUOTE_MSG_LEN:
            raise QgsError(qa.QGS_MSG_ERROR_INVALID_SIZE, "quote_size is not the payload's")
        return body[qa.QGS_QUOTE_MSG_LEN:]


class QgsPassthrough:
    """QgsPassthrough(service): a VMM that gives the guest's payload to the QGS as is and returns its
    answer unchanged: a framed request gets the framed response (what libtdx_attest's GET_QUOTE ioctl
    path parses, quote.md §2.7 step 5), a raw TDREPORT the raw quote (quote.md §4.2 raw mode). No
    answer raises (status ERROR)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def produce(self, payload: bytes) -> bytes:
        reply = self.service.exchange(bytes(payload))
        if reply is None:
            raise QgsError(qa.QGS_MSG_ERROR_UNEXPECTED, "the QGS closed the connection without an answer")
        return reply


class QgsVmm:
    """QgsVmm(service): the emulated VMM's quote path (a quote producer for ``Host``). A payload that
    is already a QGS frame (``classify`` says FRAMED: what libtdx_attest puts in the buffer of the
    downstream GET_QUOTE ioctl, quote.md §2.7 step 5) goes to the QGS as is and its framed answer
    comes back unchanged (``QgsPassthrough``); anything else (the raw TDREPORT the upstream
    tdx_guest provider sends, quote.md §2.3) is framed and checked as upstream QEMU does
    (``QemuQuoteGenerator``). The choice is by payload, a modelling choice: the reference names no
    VMM that does both, and each kind of guest only works with the VMM it was written for."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self._qemu = QemuQuoteGenerator(service)
        self._pass = QgsPassthrough(service)

    def produce(self, payload: bytes) -> bytes:
        payload = bytes(payload)
        if classify(payload)[0] == FRAMED:
            return self._pass.produce(payload)
        return self._qemu.produce(payload)
