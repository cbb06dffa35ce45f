#!/usr/bin/env bash
# Compile-checks the NCCL backend of crates/bcl-dist on a machine without CUDA: installs the
# header-only CUDA wheels that c10d's ProcessGroupNCCL.hpp includes (nvidia-cuda-crt and
# nvidia-cuda-cccl, matching the torch wheel's CUDA 13.0) into target/cuda-headers, builds the
# crate's tests with the `nccl` feature and runs the NCCL test (on a GPU machine: two ranks
# all-reduce CUDA tensors; without a GPU: joining is refused with the reason).
set -euo pipefail
cd "$(dirname "$0")/.."
HDR="$PWD/target/cuda-headers"
if [ ! -d "$HDR/nvidia/cu13/include/crt" ]; then
  echo "check-nccl: installing CUDA's header wheels into $HDR"
  .venv/bin/pip install --quiet --disable-pip-version-check --target "$HDR" \
    "nvidia-cuda-crt<13.1" "nvidia-cuda-cccl<13.1"
fi
SP=$(.venv/bin/python -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))")/nvidia
export BCL_CUDA_INCLUDE="$HDR/nvidia/cu13/include:$SP/cu13/include:$SP/nccl/include"
cargo test --release -p bcl-dist --features nccl --test collectives nccl
