"""``python -m proofs``: the table, --json, --replay, and bad arguments (exit 2, one line)."""

import json
import subprocess
import sys

import pytest

from proofs.__main__ import main
from proofs.drivers import DRIVERS
from proofs.quote_path import HOSTS
from proofs.quote_runner import QUOTE_DRIVERS
from proofs.quote_theorems import QUOTE_THEOREMS
from proofs.theorems import THEOREMS

pytestmark = pytest.mark.proof


def test_json_lists_every_theorem_and_driver(capsys):
    assert main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    ioctl = [r for r in rows if r["theorem"] in THEOREMS]
    assert {(r["theorem"], r["driver"]) for r in ioctl} == {(t, d) for t in THEOREMS for d in DRIVERS}
    # the quote path's: per generation with a quote path and per host assumption
    assert {(r["theorem"], r["driver"], r["host"]) for r in rows if r not in ioctl} == \
        {(t, d, h) for t in QUOTE_THEOREMS for d in QUOTE_DRIVERS for h in HOSTS}
    for r in rows:
        assert r["result"] in ("proved", "counterexample") and r["result"] == r["expected"]
        assert (r["counterexample"] is None) == (r["result"] == "proved")
    unknown_cmd = next(r for r in rows if (r["theorem"], r["driver"]) == ("errno_contract", "v4-2022-04"))
    assert unknown_cmd["counterexample"]["ret"] == 0


def test_table_for_one_driver(capsys):
    assert main(["--driver", "v6.16"]) == 0
    out = capsys.readouterr().out
    ioctl = [line for line in out.splitlines() if line.split()[:1] and line.split()[0] in THEOREMS]
    assert len(ioctl) == len(THEOREMS) and all("v6.16" in line for line in ioctl)
    assert not any("counterexample" in line for line in ioctl)
    n = len(THEOREMS) + len(QUOTE_THEOREMS) * len(HOSTS)
    assert f"{n}/{n} results as expected" in out


def test_replay_shows_the_same_outcome(capsys):
    assert main(["--replay", "errno_contract", "--driver", "v4-2022-04", "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "z3      : ret=0" in out and "reference: ret=0" in out and "replayed" in out


@pytest.mark.parametrize("argv", [["--driver", "v5"], ["--replay", "no_leak"],
                                  ["--replay", "nonsense", "--driver", "v6.2"], ["--timeout-ms", "0"]])
def test_bad_arguments_exit_2_with_one_line(argv):
    p = subprocess.run([sys.executable, "-m", "proofs", *argv], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
