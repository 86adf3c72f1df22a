"""The CI-sized QGS message fuzz run (tests/fuzz/qgs_fuzz.py): random and mutated QGS frames and raw
reports at the QGS socket server over each backend's TDQE, a fixed seed and this run's seed. Long
runs: ``python -m tests.fuzz.qgs_fuzz --cases N --seed S``."""

from __future__ import annotations

import pytest

from tests.fuzz import qgs_fuzz

#: wall-clock bound for one seeded run: ~10 s idle (mostly the server's 0.5 s timeouts), stretched by load
LONG_TIMEOUT = 300

FIXED_SEED = 20260301


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
@pytest.mark.parametrize("which", ["fixed", "this run"])
def test_qgs_answers_each_message_as_the_protocol_says_and_keeps_serving(which, fuzz_seed, backend):
    seed = FIXED_SEED if which == "fixed" else fuzz_seed
    bad = qgs_fuzz.campaign(seed, 200, backend.BACKEND_NAME)
    assert not bad, f"seed {seed}: {bad[:3]}"


def test_the_oracle_tells_the_answers_apart():
    """The expectation is worked out from quote.md §4.2 on its own: check it on hand-made messages."""
    report = bytes([0x81, 0, 1]) + bytes(1021)
    frame = qgs_fuzz._frame(qgs_fuzz._get_quote_req(report))
    assert qgs_fuzz.expected(frame, report) == ("quote", report)
    assert qgs_fuzz.expected(frame[:-1], report) == ("close", None)            # incomplete
    assert qgs_fuzz.expected(frame + b"x", report) == ("quote", report)        # trailing bytes ignored
    assert qgs_fuzz.expected(report, report) == ("raw", report)
    assert qgs_fuzz.expected(bytes(1024), report) == ("close", None)           # not a legitimate report
    bad_code = bytearray(frame)
    bad_code[16] = 1
    assert qgs_fuzz.expected(bytes(bad_code), report) == ("error", 1)
    coll = qgs_fuzz._frame(qgs_fuzz.HDR.pack(1, 1, 2, 16, 0))
    assert qgs_fuzz.expected(coll, report) == ("error", 3)
    big = b"\x00\x00\x0f\xfd" + qgs_fuzz.HDR.pack(1, 1, 0, 4093, 0) + bytes(4093 - 16)  # 4097 > the buffer
    assert qgs_fuzz.expected(big, report) == ("close", None)
    err = qgs_fuzz._frame(qgs_fuzz.HDR.pack(1, 1, 1, 24, qgs_fuzz.UNEXPECTED) + bytes(8))
    assert qgs_fuzz.check(err, ("error", 1)) is None
    assert qgs_fuzz.check(b"", ("error", 1)) is not None
    assert qgs_fuzz.check(err, ("close", None)) is not None
    assert qgs_fuzz.check(err, ("quote", report)) is not None
