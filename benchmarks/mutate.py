"""A small mutation run: ``python benchmarks/mutate.py [--list] [--only N,...] [--full]``.

Each mutant is one hand-made single bug (C or Python) of a kind the reliability tools are meant to
catch. For each: copy the checkout into build/mutate/ (the working tree is never touched), apply
the bug, rebuild if C changed, run the tests named beside it (``--full``: the whole suite), and count
the mutant killed when they fail. Prints one line per mutant and the score; exit 1 if any survived.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutate"

# (name, file, old text, new text, tests that should kill it)
MUTANTS = [
    ("C copy_from_user leaves the kernel tail", "csrc/gk_usermem.c",
     "memset((uint8_t *)dst + (n - left), 0, left); /* Linux zero-fills the kernel tail */", "(void)left;",
     ["tests/test_driver_v616.py"]),
    ("reference copy_from_user leaves the kernel tail", "tdxmodel/_reference/gk_usermem.py",
     "memory.write_memory(kdst, data + bytes(n - len(data)))", "memory.write_memory(kdst, data)",
     ["tests/test_driver_v616.py"]),
    ("C 6.16 copy-in fault returns with mr_lock held", "csrc/tdx_driver.c",
     "        ret = -TDXM_EFAULT;\n        goto unlock;\n    }\n    /* 3: REPORT -> -ENXIO / -EBUSY / -EIO */",
     "        return -TDXM_EFAULT;\n    }\n    /* 3: REPORT -> -ENXIO / -EBUSY / -EIO */",
     ["tests/test_driver_v616.py", "-x"]),
    ("C fault times never used up", "csrc/gk_fault.c", "        a->times--;", "        (void)0;",
     ["tests/test_kernel_faults.py", "tests/fuzz/test_differential_fuzz.py"]),
    ("reference fd limit off by ten", "tdxmodel/_reference/kernel.py",
     "if fd >= abi.FD_LIMIT:  # RLIMIT_NOFILE", "if fd >= abi.FD_LIMIT + 10:  # RLIMIT_NOFILE",
     ["tests/fuzz/test_differential_fuzz.py"]),
    ("state: extend reports success but commits nothing", "tdxmodel/state.py",
     "            txn.extend(index, bytes(data48), value)",
     "            pass  # the module extended, nothing committed",
     ["tests/crash/test_crash_consistency.py", "tests/test_state.py"]),
    ("reference MAC check always passes", "tdxmodel/_reference/module.py",
     "if not hmac.compare_digest(self._mac(covered), tag):", "if False:",
     ["tests/fuzz/test_differential_fuzz.py"]),
    ("state.json rewritten in place, not renamed (a reader can see it half-written)", "tdxmodel/state.py",
     "        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)\n",
     "        src = os.open(tmp, os.O_RDONLY, dir_fd=dir_fd)\n"
     "        data = os.read(src, 1 << 24)\n"
     "        os.close(src)\n"
     "        os.unlink(tmp, dir_fd=dir_fd)\n"
     "        dst = os.open(name, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o600, dir_fd=dir_fd)\n"
     "        for i in range(0, len(data), 64):\n"
     "            os.write(dst, data[i:i + 64])\n"
     "        os.close(dst)\n",
     ["tests/test_state_atomicity.py"]),
    ("state: a number past 4300 digits escapes as a bare ValueError", "tdxmodel/state.py",
     "        except ValueError:  # an integer past", "        except KeyError:  # an integer past",
     ["tests/test_state.py"]),
    ("C 7.0 out_len bound (quote.md P9) dropped", "csrc/tsm_report.c",
     "        if (out_len > prof->quote_buf_size - QUOTE_HDR_LEN)", "        if (0)",
     ["tests/test_configfs_tsm.py", "tests/test_configfs_differential.py"]),
    ("reference 7.0 out_len bound (quote.md P9) dropped", "tdxmodel/_reference/tsm_report.py",
     "            if out_len > q.max_out_len:", "            if False:",
     ["tests/test_configfs_tsm.py", "tests/test_configfs_differential.py"]),
    ("C init trace not kept", "csrc/tdx_driver.c",
     "    tk->ninit_trace = ic.ntrace;", "    tk->ninit_trace = 0;",
     ["tests/test_kernel_api.py", "tests/fuzz/test_coverage.py"]),
]


def copy_tree(dest: pathlib.Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for f in files:
        if not f:
            continue
        src = ROOT / f.decode()
        if src.is_file():
            out = dest / f.decode()
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)
    shared = (ROOT.parent / "shared").resolve()
    link = dest.parent / "shared"
    if not link.exists():
        link.symlink_to(shared)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--only", help="comma-separated mutant numbers (from --list)")
    ap.add_argument("--full", action="store_true", help="run the whole suite against every mutant")
    args = ap.parse_args()
    chosen = list(enumerate(MUTANTS, 1))
    if args.only:
        keep = {int(x) for x in args.only.split(",")}
        chosen = [(i, m) for i, m in chosen if i in keep]
    if args.list:
        for i, (name, path, *_rest) in chosen:
            print(f"{i:2d}  {path}: {name}")
        return 0
    tree = WORK / "tree"
    killed = 0
    t0 = time.monotonic()
    for i, (name, path, old, new, tests) in chosen:
        copy_tree(tree)
        target = tree / path
        text = target.read_text()
        if text.count(old) != 1:
            print(f"{i:2d}  STALE     {name}: its text is not in {path} once; update the mutant")
            continue
        target.write_text(text.replace(old, new))
        env = dict(os.environ, PYTHONPATH=str(tree))
        build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, env=env,
                               capture_output=True, text=True)
        if build.returncode != 0:
            print(f"{i:2d}  KILLED    {name} (does not build)")
            killed += 1
            continue
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-o", "timeout=120"] + ([] if args.full else tests)
        r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        verdict = "KILLED  " if r.returncode != 0 else "SURVIVED"
        killed += r.returncode != 0
        last = (r.stdout.strip().splitlines() or [""])[-1]
        print(f"{i:2d}  {verdict}  {name}  [{last}]", flush=True)
    print(f"mutation score: {killed}/{len(chosen)} killed ({time.monotonic() - t0:.0f} s)")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
