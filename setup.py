"""Build the Cython core (tdxmodel._core._ext) from csrc/*.c against OpenSSL libcrypto and libfuse3,
and the LD_PRELOAD library (tdxmodel/_lib/libtdxmodel_preload.so) from csrc/preload/*.c.

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


CFLAGS = ["-O2", "-g", "-std=gnu11", "-pthread", "-Wall", "-Wno-unused-function",
          # The low-level SHA256_/SHA512_ API lets us copy a hash midstate by value (no allocation);
          # OpenSSL 3 marks it deprecated but keeps it. See csrc/tdx_crypto.h.
          "-Wno-deprecated-declarations"]
if os.environ.get("TDXMODEL_DEBUG"):  # an unoptimised build for gdb; no code reads a macro
    CFLAGS += ["-O0"]

fuse_cflags = pkg_config("--cflags", "fuse3")
fuse_libs = pkg_config("--libs", "fuse3")
crypto_libs = pkg_config("--libs", "libcrypto")

core_sources = sorted(glob.glob("csrc/*.c"))
ext = Extension(
    "tdxmodel._core._ext",
    sources=["tdxmodel/_core/_ext.pyx"] + core_sources,
    include_dirs=["csrc", "tdxmodel/_core"] + [f[2:] for f in fuse_cflags if f.startswith("-I")],
    extra_compile_args=CFLAGS + [f for f in fuse_cflags if not f.startswith("-I")],
    extra_link_args=["-pthread"] + crypto_libs + fuse_libs,
    depends=glob.glob("csrc/*.h") + glob.glob("tdxmodel/_core/*.pxd") + glob.glob("tdxmodel/_core/*.pxi"),
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
            cmd = [os.environ.get("CC", "cc"), "-O2", "-g", "-fPIC", "-shared", "-Wall", "-Icsrc",
                   "-o", target, *sources, "-ldl", "-pthread"]
            self.announce(" ".join(cmd), level=2)
            subprocess.run(cmd, check=True)


setup(
    ext_modules=cythonize([ext], compiler_directives={"language_level": "3", "embedsignature": True},
                          include_path=["tdxmodel/_core"]),
    cmdclass={"build_ext": BuildExt},
)
