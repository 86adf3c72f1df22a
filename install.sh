#!/usr/bin/env bash
# Install tdxmodel and everything it needs on a fresh Debian/Ubuntu machine:
#   system packages (OpenSSL and libfuse3 headers, fuse3, pkg-config, a C compiler), then the Python
#   package with its test extras, built in place (editable) so tests run against the built core.
# Usage: ./install.sh            (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
SYSTEM_PACKAGES=(libssl-dev libfuse3-dev fuse3 pkg-config gcc)

missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

echo "install.sh: installing Python build requirements"
$PY -m pip install -q --disable-pip-version-check "setuptools>=65" wheel "Cython>=3,<4" "numpy>=1.24"
echo "install.sh: building and installing tdxmodel (editable, with test and plot extras)"
$PY -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test,plot]"
$PY -c "import tdxmodel._core; print('install.sh: tdxmodel core built:', tdxmodel._core.__file__)"
$PY -c "import cryptography, dcap_qvl; print('install.sh: cryptography', cryptography.__version__, '/ dcap-qvl', dcap_qvl.__version__)"
