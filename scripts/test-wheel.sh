#!/usr/bin/env bash
# The Python package as a wheel: `maturin build` makes it, pip installs it into a fresh virtual
# environment that has only the torch release it links (and numpy), and scripts/wheel_smoke.py
# runs there (metadata pin, a loss with a gradient, metrics, a gallery round trip).
# The wheel is tagged linux_x86_64, not manylinux: it links libtorch from the torch wheel,
# which auditwheel cannot (and should not) bundle; `import bcl` imports torch first and refuses
# another torch release.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=$(.venv/bin/python -c "import re; print(re.search(r'torch==([0-9.]+)', open('crates/bcl-py/pyproject.toml').read()).group(1))")
OUT=target/wheels
VENV=target/wheel-venv
rm -rf "$OUT"
echo "test-wheel: building the wheel (maturin build)"
BCL_PY_WHEEL=1 PATH="$PWD/.venv/bin:$PATH" CARGO_TARGET_DIR="$PWD/target" \
  .venv/bin/maturin build --release --quiet -m crates/bcl-py/Cargo.toml \
  --interpreter .venv/bin/python --auditwheel skip --compatibility linux --out "$OUT"
WHEEL=$(ls "$OUT"/bcl-*.whl)
# A fresh environment, created anew each run (torch: a download unless pip has it cached).
rm -rf "$VENV"
python3 -m venv "$VENV"
echo "test-wheel: installing torch==$TORCH_VERSION into a fresh venv (about 4.7 GB from PyPI unless pip has it cached)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy
echo "test-wheel: pip install $WHEEL"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$WHEEL"
# run from outside the source tree, so that `import bcl` finds the installed wheel
(cd "$VENV" && bin/python "$OLDPWD/scripts/wheel_smoke.py")
