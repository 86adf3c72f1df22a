"""The Python API's quote call (tdxmodel.client.TdxGuest.get_quote / get_quote_batch) through each
generation's configfs-tsm path, with the path's errno as the exception's .errno; and the TDQE as the
producer behind it (a state directory under tmp_path)."""

import hashlib
import os

import numpy as np
import pytest

from tdxmodel import abi, client, errors, profiles
from tdxmodel import quote as Q
from tdxmodel.client import TdxGuest
from tdxmodel.host import quote_producer

QUOTE_GENERATIONS = [p.name for p in profiles.PROFILES if p.quote is not None]
RD = bytes(range(64))


@pytest.fixture
def guest(backend):
    made = []

    def factory(driver):
        g = TdxGuest(driver, backend=backend.BACKEND_NAME)
        g.attach_host(producer=backend.TestQuoteProducer())
        made.append(g)
        return g

    yield factory
    for g in made:
        g.close()


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_get_quote_through_configfs(guest, driver):
    g = guest(driver)
    tdreport = g.module.report(RD)
    assert g.get_quote(RD) == b"tdxmodel-testq-1" + hashlib.sha384(tdreport).digest() + tdreport
    assert g.get_quote(b"short") != g.get_quote(RD)  # zero-padded REPORTDATA, a new generation each


@pytest.mark.parametrize("driver", QUOTE_GENERATIONS)
def test_get_quote_errno(guest, driver):
    g = guest(driver)
    g.host.push_fault("error")
    if profiles.get(driver).quote.status_check:
        with pytest.raises(errors.KernelError) as e:
            g.get_quote(RD)
        assert e.value.errno == abi.EIO
    else:
        assert g.get_quote(RD) == b""  # before 7.1 the failure reads as an empty success
    g.host.push_fault("retry")
    with pytest.raises(errors.KernelError) as e:
        g.get_quote(RD)
    assert e.value.errno == abi.EIO


def test_get_quote_failures_name_their_call_and_close_their_files(guest):
    # The core runs the sequence as one C call, the reference call by call: the same exception, the
    # same message, and no file left open on any exit path.
    g = guest("v7.1")
    item_dir = f"{profiles.TSM_REPORT_DIR}/tdxmodel"
    g.host.push_fault("error")
    with pytest.raises(errors.KernelError) as e:
        g.get_quote(RD)
    assert e.value.errno == abi.EIO and str(e.value).startswith(f"read {item_dir}/outblob: EIO")
    long_name = "x" * 256
    with pytest.raises(errors.KernelError) as e:
        g.get_quote(RD, item=long_name)
    assert e.value.errno == abi.ENAMETOOLONG
    assert str(e.value).startswith(f"mkdir {profiles.TSM_REPORT_DIR}/{long_name}: ENAMETOOLONG")
    g.process.munmap(client.REQUEST_ADDR, client._READ_CHUNK)
    with pytest.raises(ValueError, match="not (wholly )?mapped"):
        g.get_quote(RD)
    assert g.process.open(f"{item_dir}/inblob", os.O_WRONLY) == 4  # fd 3 is the device: 4 was closed
    g.kernel.tsm_unregister()
    with pytest.raises(errors.KernelError) as e:
        g.get_quote(RD, item="fresh")
    assert e.value.errno == abi.ENXIO and str(e.value).startswith(f"mkdir {profiles.TSM_REPORT_DIR}/fresh:")


def test_get_quote_batch(guest):
    g = guest("v7.1")
    g.host.set_schedule([None, "retry", None])
    rows = np.arange(3 * 64, dtype=np.uint8).reshape(3, 64) % 251
    quotes, errnos = g.get_quote_batch(rows)
    assert list(errnos) == [0, abi.EIO, 0] and quotes[1] is None
    assert quotes[2][-1024:] == g.module.report(rows[2].tobytes())
    with pytest.raises(ValueError):
        g.get_quote_batch(np.zeros((2, 63), dtype=np.uint8))


def test_no_quote_path_and_bad_input(backend):
    with TdxGuest("v6.2", backend=backend.BACKEND_NAME) as g:
        with pytest.raises(ValueError):
            g.get_quote(RD)
    with TdxGuest("v6.16", backend=backend.BACKEND_NAME) as g:
        g.attach_host(producer=backend.TestQuoteProducer())
        with pytest.raises(ValueError):
            g.get_quote(bytes(65))
        with pytest.raises(TypeError):
            g.get_quote("text")
        with pytest.raises(ValueError):
            g.attach_host()


def test_the_tdqe_behind_the_configfs_path(tmp_path, backend):
    with TdxGuest("v7.1", backend=backend.BACKEND_NAME) as g:
        g.attach_host(producer=quote_producer(tmp_path / "state", module=g.module))
        raw = g.get_quote(RD)
    q = Q.parse_quote(raw)
    assert q.reportdata == RD and q.version in (4, 5)


# ---- the ioctl quote paths (ref §2.2 v4 3/3, quote.md §2.6-§2.7): the path chosen from the profile
IOCTL_GENERATIONS = [p.name for p in profiles.PROFILES if p.ioctl_quote is not None]


@pytest.mark.parametrize("driver", IOCTL_GENERATIONS)
def test_get_quote_through_the_ioctl(guest, driver):
    g = guest(driver)
    tdreport = g.module.report(RD)
    # downstream: libtdx_attest's QGS frame in, the framed reply unwrapped; v4: the raw TDREPORT
    assert g.get_quote(RD) == b"tdxmodel-testq-1" + hashlib.sha384(tdreport).digest() + tdreport
    assert g.host.counters()["interrupts"] == 1       # completion by the notify vector


@pytest.mark.parametrize("driver", IOCTL_GENERATIONS)
def test_get_quote_ioctl_errno(guest, driver):
    g = guest(driver)
    g.host.push_fault("retry")
    with pytest.raises(errors.KernelError) as e:
        g.get_quote(RD)
    assert e.value.errno == abi.EIO                    # R10 != 0 on both
    g.host.push_fault("error")
    if profiles.get(driver).ioctl_quote.parallel:
        assert g.get_quote(RD) == b""                  # downstream returns 0; the status says ERROR
    else:
        with pytest.raises(errors.KernelError) as e:
            g.get_quote(RD)                            # v4 checks the status (after the copy back)
        assert e.value.errno == abi.EIO


@pytest.mark.parametrize("driver", IOCTL_GENERATIONS)
def test_get_quote_batch_through_the_ioctl(guest, driver):
    g = guest(driver)
    g.host.set_schedule([None, "retry", None])
    rows = np.arange(3 * 64, dtype=np.uint8).reshape(3, 64) % 251
    quotes, errnos = g.get_quote_batch(rows)
    assert list(errnos) == [0, abi.EIO, 0] and quotes[1] is None
    assert quotes[2][-1024:] == g.module.report(rows[2].tobytes())


@pytest.mark.parametrize("driver", IOCTL_GENERATIONS)
def test_the_tdqe_behind_the_ioctl_path(tmp_path, backend, driver):
    with TdxGuest(driver, backend=backend.BACKEND_NAME) as g:
        assert g.host is not None                      # attached before boot: the vector is registered
        with pytest.raises(ValueError):
            g.attach_host(clock="real")                # its clock was chosen at boot
        g.attach_host(producer=quote_producer(tmp_path / "state", module=g.module))
        raw = g.get_quote(RD)
    q = Q.parse_quote(raw)
    assert q.reportdata == RD and q.version in (4, 5)
