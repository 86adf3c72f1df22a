"""The generation profiles (tdxmodel/profiles.py) are the one description of a driver generation: the
generated header carries them, both backends behave as they say, and no code outside the table
compares a generation's name."""

import dataclasses
import pathlib
import re
import subprocess

import pytest

from tdxmodel import _gen_abi, abi, profiles
from tdxmodel.config import ModuleConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_a_profile_change_makes_the_generated_header_stale(monkeypatch):
    p = profiles.PROFILES[1]
    req = p.report
    moved = dataclasses.replace(req, fields=(req.fields[0], dataclasses.replace(req.fields[1], offset=65)))
    changed = dataclasses.replace(p, commands=(moved,) + p.commands[1:])
    monkeypatch.setattr(profiles, "PROFILES", profiles.PROFILES[:1] + (changed,) + profiles.PROFILES[2:])
    assert _gen_abi.HEADER in _gen_abi.stale()


def test_header_rows_carry_each_profile():
    text = _gen_abi.HEADER.read_text()
    for p in profiles.PROFILES:
        row = text[text.index(f'.name = "{p.name}"'):]
        row = row[:row.index("    },")]
        assert f"0x{p.report.value:X}U" in row
        assert f".npoints = {len(p.points)}," in row
        assert f".has_mr_lock = {int(p.has_lock('mr_lock'))}," in row
        for f in p.report.fields:
            assert f"{{{f.offset}, {f.size}, {int(f.direction == profiles.OUT)}}}" in row


def test_no_generation_name_compare_outside_the_profile_table():
    names = "|".join(re.escape(n) for n in profiles.NAMES)
    pattern = (rf'(==|!=) *"({names})"|"({names})" *(==|!=)|\bin \([^)]*"({names})"')
    out = subprocess.run(["git", "grep", "-nE", pattern, "--", "tdxmodel", "csrc", "proofs", "benchmarks",
                          "tests"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode == 128:
        pytest.skip("not a git checkout")
    assert out.stdout == ""


@pytest.mark.parametrize("name", profiles.NAMES)
def test_kernel_follows_its_profile(backend, name):
    prof = profiles.get(name)
    m = backend.Module(ModuleConfig(seed=1), memory_pages=96)  # room for a 128 KiB quote buffer
    k = backend.Kernel(m, name)
    assert k.device_path == prof.device_path
    assert k.injection_points() == list(prof.points)
    assert k.counters()["resident"] == prof.resident
    p = k.process()
    fd = p.open(prof.device_path)
    assert fd >= 3
    p.mmap(0x10000, 2 * abi.TDX_PAGE_SIZE, "rw")
    assert p.ioctl(fd, prof.other_report_cmd(), 0x10000) == -prof.unknown_cmd_errno
    assert p.ioctl(fd, prof.report.value, 0x10000) == 0
    tdr = prof.report.field("tdreport")
    report = p.peek(0x10000 + tdr.offset, tdr.size)
    assert report == m.report(bytes(abi.TDX_REPORTDATA_LEN))
    for d in prof.measurement_dirs:
        for mr in prof.measurements:
            mfd = p.open(f"{d}/{mr.name}", 0)
            assert mfd >= 3
            assert p.pread(mfd, 0x10000, abi.MEASUREMENT_LEN, 0) == abi.MEASUREMENT_LEN
            assert p.peek(0x10000, abi.MEASUREMENT_LEN) == report[mr.tdr_offset:mr.tdr_offset + 48]
            p.close(mfd)
    p.close(fd)


@pytest.mark.parametrize("name", profiles.NAMES)
def test_status_errno_follows_the_profile_map(name):
    prof = profiles.get(name)
    from tdxmodel import errors
    for cls, err in prof.errno_map:
        assert errors.status_errno(cls << 32, name) == err
    assert errors.status_errno(abi.TDX_INVALID_CPUSVN, name) == prof.errno_default
    assert errors.status_errno(abi.TDX_SUCCESS, name) == 0


def test_unknown_generation_is_a_value_error():
    with pytest.raises(ValueError, match="driver must be one of"):
        profiles.get("v5.0")


def test_layer_zero_values_have_one_home():
    from tdxmodel._reference import gk_alloc as ref_kernel
    text = _gen_abi.HEADER.read_text()
    assert ref_kernel.KERNEL_FIRST_PAGE == abi.KERNEL_FIRST_PAGE
    assert ref_kernel.SLAB_CLASSES == abi.SLAB_CLASSES
    assert "{" + ", ".join(map(str, abi.SLAB_CLASSES)) + "}" in text
    for knob, value in abi.FAULT_DEFAULTS.items():
        assert f"#define TDXM_FAULT_DEFAULT_{knob.upper()} ({value})" in text
    for name, _cap in profiles.POINTS:
        assert f'"{name}",' in text
