"""Module.extend_batch: N RTMR extends in one call (ref §4.6), with the GIL released for the loop on the
core; each row answers as one EXTEND would, and a failed row changes nothing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tdxmodel import abi

BUSY_RTMR = abi.TDX_OPERAND_BUSY | abi.TDX_OPERAND_ID_RTMR


def _rows(indices):
    data = np.array([np.frombuffer(hashlib.sha384(bytes([i])).digest(), dtype=np.uint8)
                     for i in range(len(indices))], dtype=np.uint8).reshape(len(indices), 48)
    return np.array(indices, dtype=np.uint64), data


def test_rows_extend_in_order_as_single_extends(make_module):
    batch, single = make_module(), make_module()
    indices, data = _rows([2, 3, 2, 0, 1, 2])
    statuses = batch.extend_batch(indices, data)
    assert statuses.tolist() == [0] * 6
    for i, row in zip(indices, data):
        single.extend(int(i), row.tobytes())
    assert [batch.rtmr(i) for i in range(4)] == [single.rtmr(i) for i in range(4)]
    assert batch.counters()["extends"] == 6


def test_an_invalid_index_fails_its_row_only(make_module):
    m = make_module()
    indices, data = _rows([2, 4, 1 << 63, 3])
    statuses = m.extend_batch(indices, data)
    invalid = abi.TDX_OPERAND_INVALID | abi.TDX_OPERAND_ID_RDX
    assert statuses.tolist() == [0, invalid, invalid, 0]
    assert m.rtmr(2) == hashlib.sha384(bytes(48) + data[0].tobytes()).digest()


def test_rows_meeting_the_held_lock_are_busy_and_change_nothing(make_module):
    m = make_module()
    before = [m.rtmr(i) for i in range(4)]
    assert m.rtmr_lock_try(False) == abi.TDX_SUCCESS   # a REPORT on another vCPU
    try:
        statuses = m.extend_batch(*_rows([0, 1, 2]))
    finally:
        m.rtmr_unlock(False)
    assert statuses.tolist() == [BUSY_RTMR] * 3
    assert [m.rtmr(i) for i in range(4)] == before


def test_empty_batch(make_module):
    assert make_module().extend_batch(*_rows([])).shape == (0,)


@pytest.mark.parametrize("indices,data,exc", [
    ([2], np.zeros((1, 48), np.uint8), TypeError),                               # a list
    (np.array([2], np.int64), np.zeros((1, 48), np.uint8), ValueError),         # dtype
    (np.array([2, 3], np.uint64), np.zeros((1, 48), np.uint8), ValueError),     # row count
    (np.array([2], np.uint64), np.zeros((1, 47), np.uint8), ValueError),        # 47 bytes
    (np.array([2], np.uint64), np.zeros((1, 96), np.uint8)[:, ::2], ValueError),  # not contiguous
])
def test_bad_arrays_are_refused(make_module, indices, data, exc):
    with pytest.raises(exc):
        make_module().extend_batch(indices, data)
