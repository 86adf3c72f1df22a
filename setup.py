"""Build tdxmodel's compiled parts:

* the Cython core ``tdxmodel._core._ext`` from csrc/*.c, against OpenSSL libcrypto (no libfuse);
* the transports ``tdxmodel.transport._server`` from csrc/transport/*.c, against libfuse3 (no core:
  the core lends its nogil ioctl path at run time, through a capsule);
* the LD_PRELOAD library tdxmodel/_lib/libtdxmodel_preload.so from csrc/preload/*.c and the
  transport's copy helpers.

System packages: libssl-dev, libfuse3-dev, pkg-config (./install.sh installs them).
"""

import glob
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    import Cython
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover
    sys.exit("tdxmodel needs Cython>=3 to build: pip install 'Cython>=3,<4' (./install.sh does this)")
if int(Cython.__version__.split(".")[0]) < 3:
    sys.exit(f"tdxmodel needs Cython>=3, found {Cython.__version__}: pip install -U 'Cython>=3,<4'")


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"pkg-config {' '.join(args)} failed ({e}); install the system packages: ./install.sh")
    return shlex.split(out)


def split_cflags(flags):
    """pkg-config --cflags -> (include dirs, other compile flags)."""
    return [f[2:] for f in flags if f.startswith("-I")], [f for f in flags if not f.startswith("-I")]


# Flags for every C file we build (the extensions and the preload library); extend them here.
CFLAGS = ["-O2", "-g", "-std=gnu11", "-pthread", "-Wall", "-Wno-unused-function",
          # The low-level SHA256_/SHA512_ API lets us copy a hash midstate by value (no allocation);
          # OpenSSL 3 marks it deprecated but keeps it. See csrc/tdx_crypto.h.
          "-Wno-deprecated-declarations"]
if os.environ.get("TDXMODEL_DEBUG"):  # an unoptimised build for gdb; no code reads a macro
    CFLAGS += ["-O0"]
LDFLAGS = ["-pthread"]

fuse_includes, fuse_cflags = split_cflags(pkg_config("--cflags", "fuse3"))
fuse_libs = pkg_config("--libs", "fuse3")
crypto_libs = pkg_config("--libs", "libcrypto")

USERCOPY = ["csrc/transport/tdx_usercopy.c"]  # shared by the transports and the preload library

core = Extension(
    "tdxmodel._core._ext",
    sources=["tdxmodel/_core/_ext.pyx"] + sorted(glob.glob("csrc/*.c")),
    include_dirs=["csrc", "tdxmodel/_core"],
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS + crypto_libs,
    depends=glob.glob("csrc/*.h") + glob.glob("csrc/transport/tdx_ops.h")
    + glob.glob("tdxmodel/_core/*.pxd") + glob.glob("tdxmodel/_core/*.pxi"),
)

transport = Extension(
    "tdxmodel.transport._server",
    sources=["tdxmodel/transport/_server.pyx"] + sorted(glob.glob("csrc/transport/*.c")),
    include_dirs=["csrc/transport", "csrc"] + fuse_includes,
    extra_compile_args=CFLAGS + fuse_cflags,
    extra_link_args=LDFLAGS + fuse_libs,
    depends=glob.glob("csrc/transport/*.h") + ["csrc/tdx_abi.h"]
    + glob.glob("tdxmodel/transport/*.pxd"),
)


class BuildExt(build_ext):
    """Also build the LD_PRELOAD shared library (not a Python module) into tdxmodel/_lib/."""

    def run(self):
        super().run()
        sources = sorted(glob.glob("csrc/preload/*.c"))
        if not sources:
            return
        for out_dir in {os.path.join("tdxmodel", "_lib"),
                        os.path.join(self.build_lib, "tdxmodel", "_lib")}:
            os.makedirs(out_dir, exist_ok=True)
            target = os.path.join(out_dir, "libtdxmodel_preload.so")
            cmd = [os.environ.get("CC", "cc"), *CFLAGS, "-fPIC", "-shared", "-Icsrc", "-Icsrc/transport",
                   "-o", target, *sources, *USERCOPY, *LDFLAGS, "-ldl"]
            self.announce(" ".join(cmd), level=2)
            subprocess.run(cmd, check=True)


setup(
    ext_modules=cythonize([core, transport],
                          compiler_directives={"language_level": "3", "embedsignature": True},
                          include_path=["tdxmodel/_core", "."]),
    cmdclass={"build_ext": BuildExt},
)
