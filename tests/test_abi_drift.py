"""The generated C header and Cython declarations match tdxmodel/abi.py; errnos match the host's."""

import errno

from tdxmodel import _gen_abi, abi


def test_generated_files_are_current():
    assert _gen_abi.stale() == [], "run: python -m tdxmodel._gen_abi"


def test_header_carries_every_constant_with_its_value():
    text = _gen_abi.HEADER.read_text()
    for c in abi.CONSTANTS:
        name = "TDXM_" + c.name if c.group == "errno" else c.name
        line = next(l for l in text.splitlines() if l.startswith(f"#define {name} "))
        literal = line.split()[2].rstrip("ULL").rstrip("U")
        assert int(literal, 0) == c.value, name


def test_errnos_are_linux_x86_64():
    for c in abi.CONSTANTS:
        if c.group == "errno":
            assert getattr(errno, c.name) == c.value, c.name


def test_ioctl_numbers_decode_as_reference_says():
    assert abi.ioc(abi.IOC_READ | abi.IOC_WRITE, ord("T"), 1, abi.TDX_REPORT_REQ_LEN) == abi.TDX_CMD_GET_REPORT0
    assert abi.ioc(abi.IOC_READ | abi.IOC_WRITE, ord("T"), 1, 8) == abi.TDX_CMD_GET_TDREPORT
    assert abi.ioc_size(abi.TDX_CMD_GET_REPORT0) == 1088


def test_tdreport_fields_tile_the_report():
    pos = 0
    for name, off, size, _ in abi.TDREPORT_FIELDS:
        assert off == pos, name
        pos += size
    assert pos == abi.TDX_REPORT_LEN
    assert abi.VALUES["LINUX_TDCALL_INVALID_OPERAND"] == abi.status_class(abi.TDX_OPERAND_INVALID)
    assert abi.VALUES["LINUX_TDCALL_OPERAND_BUSY"] == abi.status_class(abi.TDX_OPERAND_BUSY)
