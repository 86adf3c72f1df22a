"""A small mutation run: ``python benchmarks/mutate.py [--list] [--check] [--only N,...] [--full]``.

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
    # ---- C core: the ioctl quote paths, the host, fault injection, user copies, module leaves
    ("C downstream GET_QUOTE accepts len 0", "csrc/tdx_driver.c",
     "    /* 2: a zero length */\n    if (len == 0)\n", "    /* 2: a zero length */\n    if (0)\n",
     ["tests/test_quote_ioctl_downstream.py", "-x"]),
    ("C downstream buffer fault leaks the entry", "csrc/tdx_driver.c",
     "GK_PT_QUOTE_DATA_COPY_FROM_USER, e->buf, ubuf, len)) {\n        entry_free(tk, c, e);\n        return -TDXM_EFAULT;",
     "GK_PT_QUOTE_DATA_COPY_FROM_USER, e->buf, ubuf, len)) {\n        return -TDXM_EFAULT;",
     ["tests/test_quote_ioctl_downstream.py", "-x"]),
    ("C downstream GetQuote failure returns with quote_lock held", "csrc/tdx_driver.c",
     "    if (get_quote_hcall(tk, e) != TDVMCALL_STATUS_SUCCESS) {\n        qlock_unlock(tk);\n",
     "    if (get_quote_hcall(tk, e) != TDVMCALL_STATUS_SUCCESS) {\n",
     ["tests/test_quote_ioctl_downstream.py", "-x"]),
    ("C downstream signal frees a buffer the host still owns", "csrc/tdx_driver.c",
     "        if (entry_status(e) == GET_QUOTE_IN_FLIGHT) {\n            e->valid = 0;",
     "        if (0) {\n            e->valid = 0;",
     ["tests/test_quote_ioctl_downstream.py", "-x"]),
    ("C v4 copies len bytes back, not PAGE_ALIGN(len)", "csrc/tdx_driver.c",
     "GK_PT_QUOTE_DATA_COPY_TO_USER, ubuf, e->buf, e->buf_len)) {",
     "GK_PT_QUOTE_DATA_COPY_TO_USER, ubuf, e->buf, len)) {",
     ["tests/test_quote_ioctl_v4.py", "-x"]),
    ("C v4 -EINVAL early return releases quote_lock (the posted defect 'fixed')", "csrc/tdx_driver.c",
     "    if (len == 0 || timeout_ms == 0) {\n        atomic_store(&tk->quote_leaked, 1);\n        return -TDXM_EINVAL;\n    }",
     "    if (len == 0 || timeout_ms == 0) {\n        ret = -TDXM_EINVAL;\n        goto unlock;\n    }",
     ["tests/test_quote_ioctl_v4.py", "-x"]),
    ("C host H4 in_len bound one byte loose", "csrc/vmm_host.c",
     "in_len > size - QUOTE_HDR_LEN)", "in_len > size - QUOTE_HDR_LEN + 1)",
     ["tests/test_host_quote.py", "tests/test_host_differential.py", "-x"]),
    ("C host H6 admits a 17th request", "csrc/vmm_host.c",
     "h->c.in_flight >= HOST_MAX_GET_QUOTE_REQUESTS", "h->c.in_flight > HOST_MAX_GET_QUOTE_REQUESTS",
     ["tests/test_host_quote.py", "tests/test_host_differential.py", "-x"]),
    ("C host completion forgets num--", "csrc/vmm_host.c",
     "    h->c.in_flight--;                                                /* 6: num-- */",
     "    /* 6: num-- forgotten */",
     ["tests/test_host_quote.py", "-x"]),
    ("C host no_interrupt still injects the vector", "csrc/vmm_host.c",
     "r->fault.kind != HOST_FAULT_NO_INTERRUPT) {  /* 5 */", "1) {  /* 5 */",
     ["tests/test_host_quote.py", "tests/test_quote_ioctl_downstream.py", "-x"]),
    ("C fault interval counts from one too late", "csrc/gk_fault.c",
     "        if (a->count % a->interval)", "        if ((a->count + 1) % a->interval)",
     ["tests/test_kernel_faults.py", "tests/fuzz/test_differential_fuzz.py", "-x"]),
    ("C fault space compared with >=", "csrc/gk_fault.c",
     "    if (a->space > size) { /* 6 */", "    if (a->space >= size) { /* 6 */",
     ["tests/test_kernel_faults.py", "tests/fuzz/test_differential_fuzz.py", "-x"]),
    ("C copy_to_user partial copy reports the uncopied rest as copied", "csrc/gk_usermem.c",
     "    return left + (n - limit);", "    return left;",
     ["tests/test_kernel_faults.py", "tests/test_driver_v616.py", "-x"]),
    ("C RTMR.EXTEND index bound off by one", "csrc/tdx_module.c",
     "    if (index >= TDX_NUM_RTMRS)                                   /* step 3: full 64-bit compare */",
     "    if (index > TDX_NUM_RTMRS)                                   /* step 3: full 64-bit compare */",
     ["tests/test_module_leaves.py", "-x"]),
    ("C VERIFYREPORT refuses an equal CPUSVN", "csrc/tdx_module.c",
     "        if (rms[TDR_OFF_CPUSVN + i] > m->cpusvn[i])", "        if (rms[TDR_OFF_CPUSVN + i] >= m->cpusvn[i])",
     ["tests/test_module_leaves.py", "-x"]),
    ("C timed quote wait: the saturated deadline dropped (wraps)", "csrc/tdx_driver.c",
     "    uint64_t deadline = vmm_clock_add_ns(start, timeout_ns);", "    uint64_t deadline = start + timeout_ns;",
     ["tests/test_quote_ioctl_v4.py", "-x"]),
    # ---- C transports
    ("C socket server: IOCTL writable > readable accepted", "csrc/transport/tdx_socket.c",
     "q.readable > q.window || q.writable > q.readable)", "q.readable > q.window)",
     ["tests/test_transport_daemon.py", "-x"]),
    ("C socket server: a wrong protocol version accepted", "csrc/transport/tdx_socket.c",
     "        if (h.version != TDXW_VERSION)\n", "        if (0)\n",
     ["tests/test_transport_daemon.py", "-x"]),
    # ---- the reference model
    ("reference downstream GET_QUOTE accepts len 0", "tdxmodel/_reference/drivers.py",
     "        # 2: a zero length\n        if length == 0:", "        # 2: a zero length\n        if False:",
     ["tests/test_quote_ioctl_downstream.py", "-x"]),
    ("reference v4 copies len bytes back, not PAGE_ALIGN(len)", "tdxmodel/_reference/drivers.py",
     '"quote_data:copy_to_user", ubuf, e.buf, e.buf_len)', '"quote_data:copy_to_user", ubuf, e.buf, length)',
     ["tests/test_quote_ioctl_v4.py", "-x"]),
    ("reference host H6 admits a 17th request", "tdxmodel/_reference/host.py",
     'if c["in_flight"] >= abi.HOST_MAX_GET_QUOTE_REQUESTS', 'if c["in_flight"] > abi.HOST_MAX_GET_QUOTE_REQUESTS',
     ["tests/test_host_quote.py", "tests/test_host_differential.py", "-x"]),
    ("reference fault space compared with >=", "tdxmodel/_reference/gk_fault.py",
     "        if self._space > size:", "        if self._space >= size:",
     ["tests/test_kernel_faults.py", "tests/fuzz/test_differential_fuzz.py", "-x"]),
    ("reference downstream EXTEND_RTMR lets RTMR 1 through", "tdxmodel/_reference/drivers.py",
     '        if index[0] < self.p.traits["extend_min_index"]:', '        if index[0] < self.p.traits["extend_min_index"] - 1:',
     ["tests/test_driver_intel_downstream.py", "-x"]),
    ("reference timed quote wait: the saturated deadline dropped", "tdxmodel/_reference/drivers.py",
     "        deadline = min(start + timeout_ns, NEVER - 1)", "        deadline = start + timeout_ns",
     ["tests/test_quote_ioctl_v4.py", "-x"]),
    # ---- host: QGS, TDQE, verifier, PCCS
    ("QGS accepts a request with a nonzero error_code", "tdxmodel/host/qgs.py",
     "    if code != 0:\n        raise QgsError(qa.QGS_MSG_ERROR_INVALID_CODE, f\"error_code {code:#x} in a request\")",
     "    if False:\n        raise QgsError(qa.QGS_MSG_ERROR_INVALID_CODE, f\"error_code {code:#x} in a request\")",
     ["tests/test_qgs.py", "tests/fuzz/test_qgs_fuzz.py", "-x"]),
    ("QGS raw mode skips the legitimate-report zero checks", "tdxmodel/host/qgs.py",
     "    return not any(any(data[o:o + n]) for o, n in qa.QGS_RAW_ZERO_RANGES)", "    return True",
     ["tests/test_qgs.py", "tests/fuzz/test_qgs_fuzz.py", "-x"]),
    ("QGS reads a frame 4 bytes past its buffer", "tdxmodel/host/qgs.py",
     "        if total > qa.QGS_READ_BUFFER:", "        if total > qa.QGS_READ_BUFFER + 4:",
     ["tests/test_qgs.py", "tests/fuzz/test_qgs_fuzz.py", "-x"]),
    ("QGS server's per-connection timeout ten times too long", "tdxmodel/transport/qgs_server.py",
     "        deadline = time.monotonic() + srv.timeout_s", "        deadline = time.monotonic() + 10 * srv.timeout_s",
     ["tests/test_qgs.py", "tests/fuzz/test_qgs_fuzz.py", "-x"]),
    ("TDQE quotes a report whose MAC does not check", "tdxmodel/host/qe.py",
     "        ok, part, reason = verify_report(r, self.module)\n        if not ok:",
     "        ok, part, reason = verify_report(r, self.module)\n        if False:",
     ["tests/test_tdqe.py", "-x"]),
    ("verifier skips the QE report signature", "tdxmodel/quote.py",
     "    if not _signed_by(c.pck_leaf, c.quote.qe_report_signature, c.quote.qe_report):",
     "    if False:",
     ["tests/test_quote_verify.py", "-x"]),
    ("PCCS answers TCB info for any FMSPC", "tdxmodel/host/pccs.py",
     '        if fmspc.upper() != platform.meta()["fmspc"].upper():', "        if False:",
     ["tests/test_key_release_and_pccs.py", "tests/fuzz/test_net_fuzz.py", "-x"]),
    # ---- the state store
    ("state: the writers' flock not taken", "tdxmodel/state.py",
     "                fcntl.flock(fd, fcntl.LOCK_EX)", "                pass",
     ["tests/test_state.py", "tests/test_state_atomicity.py", "tests/crash/test_crash_consistency.py", "-x"]),
    ("state: the temp file not fsynced before the rename", "tdxmodel/state.py",
     "            os.fchmod(fd, mode)\n            os.fsync(fd)\n", "            os.fchmod(fd, mode)\n",
     ["tests/test_state.py", "tests/test_state_atomicity.py", "tests/crash/test_crash_consistency.py"]),
    ("state: a config change keeps the generation", "tdxmodel/state.py",
     "generation=txn.generation + 1, config=new.to_dict()", "generation=txn.generation, config=new.to_dict()",
     ["tests/test_state.py", "-x"]),
    ("state: files opened without O_NOFOLLOW", "tdxmodel/state.py",
     "_OPEN = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK",
     "_OPEN = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK",
     ["tests/test_state.py", "tests/fuzz/test_cli_fuzz.py", "-x"]),
    # ---- Python transports
    ("socket client accepts a reply with a wrong magic", "tdxmodel/transport/protocol.py",
     "    if magic != MAGIC or version != VERSION:", "    if magic != MAGIC and version != VERSION:",
     ["tests/test_transport_daemon.py", "-x"]),
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
    ap.add_argument("--check", action="store_true", help="only check that every mutant's text is in its file once")
    args = ap.parse_args()
    chosen = list(enumerate(MUTANTS, 1))
    if args.only:
        keep = {int(x) for x in args.only.split(",")}
        chosen = [(i, m) for i, m in chosen if i in keep]
    if args.list:
        for i, (name, path, *_rest) in chosen:
            print(f"{i:2d}  {path}: {name}")
        return 0
    if args.check:
        stale = [(i, name, path) for i, (name, path, old, *_r) in chosen if (ROOT / path).read_text().count(old) != 1]
        for i, name, path in stale:
            print(f"{i:2d}  STALE     {name}: its text is not in {path} once")
        print(f"{len(chosen) - len(stale)}/{len(chosen)} mutants apply")
        return 1 if stale else 0
    ccache = shutil.which("ccache")
    if ccache:  # unchanged C sources compile once: ccache in front of gcc/cc on PATH
        shims = WORK / "ccache-bin"
        shims.mkdir(parents=True, exist_ok=True)
        for name in ("gcc", "cc"):
            if not (shims / name).exists():
                (shims / name).symlink_to(ccache)
        os.environ["PATH"] = f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"
    base, tree = WORK / "base", WORK / "tree"
    killed = 0
    t0 = time.monotonic()
    # one build of the unmutated checkout; each mutant starts from a copy of it (timestamps kept, so
    # a rebuild after a C change compiles only what the change touches)
    copy_tree(base)
    env = dict(os.environ, PYTHONPATH=str(base))
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=base, env=env,
                           capture_output=True, text=True)
    if build.returncode != 0:
        print(build.stdout[-2000:], build.stderr[-2000:])
        return 2
    for i, (name, path, old, new, tests) in chosen:
        if tree.exists():
            shutil.rmtree(tree)
        shutil.copytree(base, tree, symlinks=True)
        target = tree / path
        text = target.read_text()
        if text.count(old) != 1:
            print(f"{i:2d}  STALE     {name}: its text is not in {path} once; update the mutant")
            continue
        target.write_text(text.replace(old, new))
        env = dict(os.environ, PYTHONPATH=str(tree))
        if path.endswith((".c", ".h", ".pyx", ".pxi", ".pxd")):
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
    if tree.exists():
        shutil.rmtree(tree)
    print(f"mutation score: {killed}/{len(chosen)} killed ({time.monotonic() - t0:.0f} s)")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
