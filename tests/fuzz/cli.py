"""The CLI and state-directory fuzzer: seeded random cases run as `tdxmodel` subprocesses, each in a
fresh temporary directory, each checked for what a user would notice.

Case kinds (``KINDS``; each has variants, ``VARIANTS``):

* ``corrupt_state``: state.json replaced by random damage (random bytes, a truncated document,
  deeply nested JSON, integers past 64 bits in the seed, the generation or a field, wrong types), then
  `report`, `extend` or `verify`;
* ``out_target``: `report --out T` where T is a character device (mknod, as root), a FIFO with a
  reader, a symlink to a file elsewhere, a directory or ``-``;
* ``planted_symlink``: events.jsonl, lock or state.json in the state directory a symlink to a file
  elsewhere, then `extend`;
* ``config_source``: `--config` naming /dev/zero, a FIFO nobody writes, a directory, random bytes.

Checks: the command ends within ``TIMEOUT`` s; exit 0, or (1 for `verify` only) one line, or exit 2
with exactly one line ``tdxmodel: ...`` on stderr and no traceback; a corrupt state's line names the
state file; a node that is not a regular file is still the same kind of node afterwards; a file a
symlink points at is unchanged; ``-`` writes the report to stdout.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import random
import shutil
import stat
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
TIMEOUT = 20
KINDS = ("corrupt_state", "out_target", "planted_symlink", "config_source")


DAMAGES = ("bytes", "truncate", "nest", "nest_config", "big_seed", "big_generation", "big_field", "wrong_type",
           "negative_seed")
VARIANTS = tuple([f"corrupt_state:{d}" for d in DAMAGES]
                 + [f"out_target:{t}" for t in ("chardev", "fifo", "symlink", "directory", "stdout")]
                 + [f"planted_symlink:{n}" for n in ("events.jsonl", "lock", "state.json")]
                 + [f"config_source:{c}" for c in ("dev_zero", "fifo", "directory", "bytes")])


def generate(seed: int, n: int, without: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """``n`` cases; every variant (``VARIANTS``) not left out comes once before any repeats."""
    r = random.Random(seed)
    variants = [v for v in VARIANTS if v not in without and v.split(":")[0] not in without]
    out = []
    for i in range(n):
        variant = variants[i] if i < len(variants) else r.choice(variants)
        kind, what = variant.split(":")
        case: Dict[str, Any] = {"kind": kind, "seed": r.getrandbits(32)}
        if kind == "corrupt_state":
            case["damage"] = what
            case["command"] = r.choice(("report", "extend", "verify"))
        elif kind == "out_target":
            case["target"] = what
        elif kind == "planted_symlink":
            case["link"] = what
        else:
            case["config"] = what
        out.append(case)
    return out


def _damage(how: str, doc: Dict[str, Any], r: random.Random) -> bytes:
    raw = json.dumps(doc).encode()
    if how == "bytes":
        return r.randbytes(r.randrange(1, 400))
    if how == "truncate":
        return raw[:r.randrange(1, len(raw))]
    if how == "nest":
        depth = r.choice((5000, 100_000))
        return b"[" * depth + b"]" * depth
    if how == "nest_config":
        depth = r.choice((5000, 50_000))
        return raw.replace(b'"config": {', b'"config": {"x": ' + b"[" * depth + b"]" * depth + b", ", 1)
    if how == "big_generation":  # written as text: past 4300 digits Python will not print an int
        return raw.replace(b'"generation": ', b'"generation": 1' + b"0" * r.randrange(20, 6000) + b", \"was\": ", 1)
    d = json.loads(raw)
    if how == "big_seed":
        d["config"]["seed"] = r.choice((2 ** 64, 2 ** 64 + r.getrandbits(60), 10 ** 40))
    elif how == "big_field":
        d["config"][r.choice(("attributes", "xfam", "seam_attributes"))] = 2 ** r.randrange(64, 200)
    elif how == "wrong_type":
        d["config"][r.choice(("rtmr", "version", "mrtd", "cpusvn"))] = r.choice((1, [1, 2], {"a": 1}, None, 1.5))
    else:
        d["config"]["seed"] = -r.randrange(1, 1 << 40)
    return json.dumps(d).encode()


def _one_line_error(r: subprocess.CompletedProcess, problems: List[str], allowed=(0, 2)) -> None:
    if r.returncode not in allowed:
        problems.append(f"exit {r.returncode}: {r.stderr.strip()[-200:]!r}")
    if "Traceback" in r.stderr:
        problems.append("traceback on stderr")
    if r.returncode != 0 and (r.stderr.count("\n") != 1 or not r.stderr.startswith("tdxmodel")):
        problems.append(f"not one line: {r.stderr[:200]!r}")


def _tdxmodel(args: List[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdxmodel", *args], capture_output=True, env=ENV, cwd=cwd,
                          timeout=TIMEOUT, errors="replace")


def _kind(path: pathlib.Path) -> str:
    try:
        m = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    for name, test in (("link", stat.S_ISLNK), ("chardev", stat.S_ISCHR), ("fifo", stat.S_ISFIFO),
                       ("directory", stat.S_ISDIR), ("file", stat.S_ISREG)):
        if test(m):
            return name
    return "other"


def run_case(case: Dict[str, Any]) -> List[str]:
    """The problems one case shows (empty: it behaved)."""
    r = random.Random(case["seed"])
    work = pathlib.Path(tempfile.mkdtemp(prefix="tdxm-clifuzz-"))
    state = work / "state"
    problems: List[str] = []
    try:
        from tdxmodel.state import StateStore
        store = StateStore(str(state))
        store.extend(1, b"\xab" * 48)
        report = work / "good.bin"
        report.write_bytes(store.module().report(b""))  # what `tdxmodel report` gives for this TD
        kind = case["kind"]
        try:
            if kind == "corrupt_state":
                doc = json.loads((state / "state.json").read_text())
                (state / "state.json").write_bytes(_damage(case["damage"], doc, r))
                args = {"report": ["report"], "extend": ["extend", "--rtmr", "0", "--data", "cd" * 48],
                        "verify": ["verify", str(report)]}[case["command"]]
                res = _tdxmodel(args + ["--state", str(state)], work)
                _one_line_error(res, problems, (0, 1, 2) if case["command"] == "verify" else (0, 2))
                if res.returncode != 0 and "state.json" not in res.stderr:
                    problems.append(f"the error does not name state.json: {res.stderr.strip()[:200]!r}")
            elif kind == "out_target":
                target = work / "target"
                victim = work / "victim"
                victim.write_bytes(b"victim")
                reader = None
                how = case["target"]
                if how == "chardev":
                    os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
                elif how == "fifo":
                    os.mkfifo(target)
                    reader = subprocess.Popen(["cat", str(target)], stdout=subprocess.DEVNULL)
                elif how == "symlink":
                    target.symlink_to(victim)
                elif how == "directory":
                    target.mkdir()
                before = _kind(target)
                out = "-" if how == "stdout" else str(target)
                res = subprocess.run([sys.executable, "-m", "tdxmodel", "report", "--out", out, "--state", str(state)],
                                     capture_output=True, env=ENV, cwd=work, timeout=TIMEOUT)
                if reader is not None:
                    if reader.poll() is None and _kind(target) == "fifo":
                        with open(target, "wb"):  # a refused write left the reader waiting: end it
                            pass
                    if reader.poll() is None:
                        reader.kill()  # the FIFO was replaced under it
                    reader.wait(10)
                text = subprocess.CompletedProcess(res.args, res.returncode, "", res.stderr.decode(errors="replace"))
                _one_line_error(text, problems)
                if how == "stdout":
                    if res.returncode != 0 or report.read_bytes() not in res.stdout or (work / "-").exists():
                        problems.append(f"--out - gave exit {res.returncode}, {len(res.stdout)} bytes on stdout"
                                        + (", and a file named -" if (work / "-").exists() else ""))
                elif _kind(target) != before:
                    problems.append(f"--out replaced a {before} with a {_kind(target)}")
                if victim.read_bytes() != b"victim" and how == "symlink" and res.returncode != 0:
                    problems.append("a refused write changed the symlink's target")
            elif kind == "planted_symlink":
                victim = work / "victim"
                victim.write_bytes(b"victim\n")
                link = state / case["link"]
                link.unlink()
                link.symlink_to(victim)
                res = _tdxmodel(["extend", "--rtmr", "2", "--data", "ef" * 48, "--state", str(state)], work)
                _one_line_error(res, problems)
                if victim.read_bytes() != b"victim\n":
                    problems.append(f"following the planted {case['link']} symlink wrote its target")
                if _kind(link) != "link" and res.returncode != 0:
                    problems.append("a refused command removed the planted link")
            else:
                how = case["config"]
                if how == "dev_zero":
                    cfg = "/dev/zero"
                elif how == "fifo":
                    cfg = str(work / "fifo")
                    os.mkfifo(cfg)
                elif how == "directory":
                    cfg = str(work)
                else:
                    cfg = str(work / "cfg.toml")
                    pathlib.Path(cfg).write_bytes(r.randbytes(r.randrange(1, 300)))
                res = _tdxmodel(["report", "--config", cfg, "--state", str(work / "fresh")], work)
                _one_line_error(res, problems)
                if res.returncode != 2:
                    problems.append(f"--config {how} gave exit {res.returncode}")
        except subprocess.TimeoutExpired:
            problems.append(f"hung for {TIMEOUT} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return problems


def campaign(seed: int, n: int, without: Sequence[str] = (), workers: int = 2) -> List[Dict[str, Any]]:
    """Run ``n`` cases; the cases that showed a problem, with their problems."""
    cases = generate(seed, n, without)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(run_case, cases))
    return [dict(case, problems=p) for case, p in zip(cases, results) if p]


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.cli", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--without", default="", help="variants or kinds to leave out: " + ", ".join(VARIANTS))
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    bad = campaign(seed, args.cases, [w for w in args.without.split(",") if w])
    for b in bad:
        print(json.dumps(b))
    print(f"cli fuzz: seed {seed}: {args.cases} cases, {len(bad)} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
