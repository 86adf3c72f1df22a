"""``tdxmodel report | extend | verify | show`` (tdxmodel/cli/td.py): outputs, exit codes, and one-line
errors for bad input. Most calls run in-process through ``tdxmodel.cli.main``; a few run
``python -m tdxmodel`` to check what a shell user sees."""

import hashlib
import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from tdxmodel import abi
from tdxmodel.cli import main
from tdxmodel.report import TdReport

ROOT = pathlib.Path(__file__).resolve().parents[1]
ZERO48 = bytes(abi.TDX_SHA384_LEN)


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, backend):
    """cli(*argv) -> (exit code, stdout, stderr), on the backend under test and a fresh state."""
    monkeypatch.setenv("TDXMODEL_BACKEND", backend.BACKEND_NAME)
    monkeypatch.setenv("TDXMODEL_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("TDXMODEL_CONFIG", raising=False)

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_module(*argv, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    env.pop("TDXMODEL_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "tdxmodel", *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=60)


def flip(path, byte_index, bit=0):
    b = bytearray(path.read_bytes())
    b[byte_index] ^= 1 << bit
    out = path.with_name(f"flip-{byte_index}-{bit}.bin")
    out.write_bytes(bytes(b))
    return out


# ------------------------------------------------------------------ report
def test_report_out_writes_a_genuine_report_and_prints_a_summary(cli, tmp_path):
    out = tmp_path / "r.bin"
    code, stdout, _ = cli("report", "--reportdata", "0xC0FFEE", "--out", out)
    assert code == 0
    raw = out.read_bytes()
    assert len(raw) == abi.TDX_REPORT_LEN
    r = TdReport.from_bytes(raw)
    assert r.reportdata == b"\xc0\xff\xee" + bytes(61)
    assert r.check_hashes() == {"TEE_TCB_INFO_HASH": True, "TEE_INFO_HASH": True}
    assert f"reportdata         {r.reportdata.hex()}" in stdout
    assert "type 0x81 subtype 0 version 0" in stdout and "(matches)" in stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    assert cli("verify", out)[0] == 0


def test_report_defaults_to_zero_reportdata_and_json_has_fields_and_raw(cli):
    code, stdout, _ = cli("report", "--json")
    assert code == 0
    j = json.loads(stdout)
    assert j["reportdata"] == "00" * 64
    assert j["report_type"] == {"type": 0x81, "subtype": 0, "version": 0}
    assert TdReport.from_bytes(bytes.fromhex(j["raw"])).to_json() == j


def test_report_accepts_exactly_64_bytes_of_reportdata(cli):
    code, stdout, _ = cli("report", "--json", "--reportdata", "ab" * 64)
    assert code == 0 and json.loads(stdout)["reportdata"] == "ab" * 64


# ------------------------------------------------------------------ extend
def test_extend_chain_matches_hashlib_and_reaches_the_report(cli):
    data = [bytes([i]) * 48 for i in range(1, 6)]
    code, stdout, _ = cli("report", "--json")  # a new state: RTMRs from the default boot event log
    expected = [bytes.fromhex(v) for v in json.loads(stdout)["rtmr"]]
    from tdxmodel import eventlog
    assert expected == eventlog.replay(eventlog.default_boot_events())
    for i, d in enumerate(data):
        index = (3 * i) % 4  # 0, 3, 2, 1, 0: every RTMR is writable (ref §4.6)
        code, stdout, _ = cli("extend", "--rtmr", index, "--data", d.hex())
        expected[index] = hashlib.sha384(expected[index] + d).digest()
        assert code == 0
        assert stdout.split() == [f"rtmr{index}", expected[index].hex()]
    code, stdout, _ = cli("report", "--json")
    assert json.loads(stdout)["rtmr"] == [v.hex() for v in expected]


# ------------------------------------------------------------------ verify
def test_verify_names_the_part_a_flip_breaks(cli, tmp_path):
    """A sample of single-bit flips through the CLI (the API test covers all of them)."""
    good = tmp_path / "good.bin"
    cli("report", "--reportdata", "01", "--out", good)
    code, stdout, _ = cli("verify", good)
    assert code == 0 and "genuine" in stdout
    cases = {0: "MAC", 40: "MAC", 150: "MAC", 223: "MAC", 224: "MAC", 255: "MAC",
             256: "TEE_TCB_INFO_HASH", 400: "TEE_TCB_INFO_HASH", 494: "TEE_TCB_INFO_HASH",
             512: "TEE_INFO_HASH", 800: "TEE_INFO_HASH", 1023: "TEE_INFO_HASH"}
    for byte_index, part in cases.items():
        code, stdout, stderr = cli("verify", flip(good, byte_index, byte_index % 8))
        assert code == 1, byte_index
        assert stderr.count("\n") == 1 and f": {part}: " in stderr, (byte_index, stderr)
    for byte_index in (495, 503, 511):  # covered by nothing (ref §4.4), as on hardware
        assert cli("verify", flip(good, byte_index, 7))[0] == 0


def test_verify_on_another_state_says_another_platform(cli, tmp_path):
    report = tmp_path / "r.bin"
    cli("report", "--out", report)
    code, _, stderr = cli("verify", report, "--state", tmp_path / "other-platform")
    assert code == 1
    assert ": MAC: " in stderr and "another platform" in stderr


# ------------------------------------------------------------------ show
def test_show_decodes_a_file_without_any_state(cli, tmp_path, monkeypatch):
    report = tmp_path / "r.bin"
    cli("report", "--reportdata", "ee" * 8, "--out", report)
    monkeypatch.setenv("TDXMODEL_STATE", str(tmp_path / "never-made"))
    code, stdout, _ = cli("show", report, "--json")
    assert code == 0
    assert json.loads(stdout) == TdReport.from_bytes(report.read_bytes()).to_json()
    code, stdout, _ = cli("show", report)
    assert code == 0 and "reportdata" in stdout and "rtmr3" in stdout
    assert not (tmp_path / "never-made").exists()


def test_show_marks_a_broken_hash(cli, tmp_path):
    report = tmp_path / "r.bin"
    cli("report", "--out", report)
    code, stdout, _ = cli("show", flip(report, 600))
    assert code == 0
    line = next(l for l in stdout.splitlines() if l.startswith("tee_info_hash"))
    assert line.endswith("(MISMATCH)")


# ------------------------------------------------------------------ bad input: exit 2, one line
def bad_inputs(tmp_path):
    (tmp_path / "short.bin").write_bytes(bytes(1023))
    (tmp_path / "long.bin").write_bytes(bytes(1025))
    (tmp_path / "adir").mkdir()
    return [
        (["report", "--reportdata", "xyz"], "--reportdata: not a hex string"),
        (["report", "--reportdata", "abc"], "--reportdata: odd number"),
        (["report", "--reportdata", "00" * 65], "--reportdata: 65 bytes; at most 64"),
        (["extend", "--rtmr", "4", "--data", "00" * 48], "--rtmr: index 4 out of range 0..3"),
        (["extend", "--rtmr", "-1", "--data", "00" * 48], "--rtmr: index -1 out of range"),
        (["extend", "--rtmr", "two", "--data", "00" * 48], "--rtmr: not an RTMR index"),
        (["extend", "--rtmr", "2", "--data", "00" * 47], "--data: 47 bytes; an RTMR extend takes exactly 48"),
        (["extend", "--rtmr", "2", "--data", "0g" * 48], "--data: not a hex string"),
        (["extend", "--rtmr", "2"], "required: --data"),
        (["verify", tmp_path / "missing.bin"], "missing.bin: no such file"),
        (["verify", tmp_path / "short.bin"], "short.bin: 1023 bytes; a TDREPORT is exactly 1024 bytes"),
        (["show", tmp_path / "long.bin"], "long.bin: more than 1024 bytes"),
        (["show", tmp_path / "adir"], "adir: is a directory"),
        (["show"], "required: FILE"),
        (["report", "--out", tmp_path / "no-such-dir" / "r.bin"], "r.bin: cannot write"),
        (["report", "--out", tmp_path / "adir"], "adir: cannot write"),
        (["frobnicate"], "invalid choice"),
    ]


def test_bad_input_exits_2_with_one_line(cli, tmp_path, capsys):
    for argv, message in bad_inputs(tmp_path):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's own errors
            code = e.code
        _, err = capsys.readouterr()
        assert code == 2, argv
        assert err.startswith("tdxmodel") and err.count("\n") == 1 and message in err, (argv, err)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_corrupt_state_exits_2_naming_the_file(cli, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text("{ half a state")
    for argv in (["report"], ["extend", "--rtmr", "0", "--data", "00" * 48]):
        code, _, err = cli(*argv)
        assert code == 2 and err.count("\n") == 1
        assert f"{state / 'state.json'}: corrupt state" in err


def test_config_seeds_a_new_state_and_a_changed_one_is_refused(cli, tmp_path):
    toml = tmp_path / "td.toml"
    toml.write_text('seed = 5\nmrowner = "{}"\n'.format("0e" * 48))
    code, stdout, _ = cli("report", "--json", "--config", toml, "--state", tmp_path / "s")
    assert code == 0 and json.loads(stdout)["mrowner"] == "0e" * 48
    toml.write_text('seed = 5\nmrowner = "{}"\n'.format("0f" * 48))
    code, _, err = cli("report", "--config", toml, "--state", tmp_path / "s")
    assert code == 2 and "this state was made from" in err and err.count("\n") == 1


# ------------------------------------------------------------------ as a shell user runs it
def test_python_m_tdxmodel_round_trip_and_clean_errors(tmp_path):
    env = {"TDXMODEL_STATE": str(tmp_path / "state")}
    out = tmp_path / "r.bin"
    assert run_module("report", "--out", out, env_extra=env).returncode == 0
    ok = run_module("verify", out, env_extra=env)
    assert ok.returncode == 0, ok.stderr
    bad = run_module("extend", "--rtmr", "9", "--data", "00", env_extra=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    tampered = run_module("verify", flip(out, 300), env_extra=env)
    assert tampered.returncode == 1 and "TEE_TCB_INFO_HASH" in tampered.stderr
    assert "Traceback" not in tampered.stderr


# ------------------------------------------------------------------ --out onto what is not a regular file
def private_null(directory):
    """A char device like /dev/null (1, 3), made in a temp dir: never the real one."""
    node = directory / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return node


def test_report_out_onto_a_device_writes_in_place_and_keeps_the_node(cli, tmp_path):
    node = private_null(tmp_path)
    code, _, err = cli("report", "--out", node)
    assert code == 0, err
    st = os.lstat(node)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_report_out_into_a_fifo_writes_the_report_to_its_reader(cli, tmp_path):
    """The FIFO is written in place. Its reader is open before the command runs (a non-blocking open
    for reading needs no writer), so nothing waits on a thread being scheduled: the command's open
    finds the reader, its 1024 bytes fit the pipe, and the reader sees them, then EOF."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        code, _, err = cli("report", "--reportdata", "ab", "--out", fifo)
        assert code == 0, err
        os.set_blocking(rfd, True)
        got = b""
        while True:  # the writer has closed: read to EOF
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            got += chunk
    finally:
        os.close(rfd)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert len(got) == abi.TDX_REPORT_LEN and TdReport.from_bytes(got).reportdata[:1] == b"\xab"


def test_report_out_through_a_symlink(cli, tmp_path):
    """A link is never replaced: through it only a non-regular file is written (a device, a FIFO,
    /dev/stdout on a terminal or pipe); a link to a regular file or to nothing is refused, exit 2."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file\n")
    (tmp_path / "to-file").symlink_to(victim)
    (tmp_path / "dangling").symlink_to(tmp_path / "not-there")
    (tmp_path / "to-device").symlink_to(private_null(tmp_path))
    for name, message in (("to-file", "symbolic link to a regular file"),
                          ("dangling", "dangling symbolic link")):
        code, _, err = cli("report", "--out", tmp_path / name)
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert os.path.islink(tmp_path / name)
    assert victim.read_bytes() == b"root's file\n" and not os.path.lexists(tmp_path / "not-there")
    code, _, err = cli("report", "--out", tmp_path / "to-device")
    assert code == 0, err
    assert os.path.islink(tmp_path / "to-device") and stat.S_ISCHR(os.stat(tmp_path / "to-device").st_mode)


def test_report_out_dash_is_stdout(tmp_path):
    env = {"TDXMODEL_STATE": str(tmp_path / "state")}
    r = subprocess.run([sys.executable, "-m", "tdxmodel", "report", "--reportdata", "cd", "--out", "-"],
                       env=dict(os.environ, PYTHONPATH=str(ROOT), **env), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == abi.TDX_REPORT_LEN and TdReport.from_bytes(r.stdout).reportdata[:1] == b"\xcd"
    assert not (pathlib.Path.cwd() / "-").exists()
    bad = run_module("report", "--out", "-", "--json", env_extra=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--json" in bad.stderr


# ------------------------------------------------------------------ hostile state and config
CORRUPT_STATES = {
    "deep-json": "[" * 100000 + "]" * 100000,
    "huge-seed": '{"format": 1, "generation": 1, "config": {"seed": 18446744073709551616}}',
}


@pytest.mark.parametrize("kind", sorted(CORRUPT_STATES))
def test_a_corrupt_state_never_ends_in_a_traceback(tmp_path, kind):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(CORRUPT_STATES[kind])
    report = tmp_path / "r.bin"
    report.write_bytes(bytes(abi.TDX_REPORT_LEN))
    for argv in (["report"], ["extend", "--rtmr", "0", "--data", "00" * 48], ["verify", report]):
        r = run_module(*argv, "--state", state)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (argv, r.stderr[-300:])
        assert r.stderr.startswith(f"tdxmodel: {state / 'state.json'}: "), r.stderr


@pytest.mark.parametrize("kind", ["zero-device", "fifo"])
def test_config_that_is_not_a_regular_file_exits_2(tmp_path, kind):
    path = tmp_path / "cfg"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # a private /dev/zero
    r = run_module("report", "--config", path, "--state", tmp_path / "s")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-300:]
    assert f"{path}: not a regular file" in r.stderr


def test_planted_link_in_the_state_directory_exits_2(cli, tmp_path):
    assert cli("extend", "--rtmr", "0", "--data", "11" * 48)[0] == 0
    log = tmp_path / "state" / "events.jsonl"
    log.unlink()
    log.symlink_to(tmp_path / "victim")
    code, _, err = cli("extend", "--rtmr", "0", "--data", "11" * 48)
    assert code == 2 and err.count("\n") == 1 and "symbolic link" in err
    assert not os.path.lexists(tmp_path / "victim")
