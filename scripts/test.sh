#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs the whole suite.
#
# - nvcc 13.0 from pinned PyPI wheels into ~/.cache/ferrotron (scripts/install-cuda-toolchain.sh),
#   so build.rs compiles and embeds every kernel, and NVRTC 13.0 beside it (FERROTRON_NVRTC), so
#   the run-time fused kernels (tests/fused.rs) compile;
# - libclang and OpenMPI (scripts/install-system-deps.sh; installed when root), so the ABI
#   freshness test and the MPI communicator's mpirun tests run (features `mpi` and `nccl`).
# Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh --release`).
set -euo pipefail
cd "$(dirname "$0")/.."

if nvcc_path=$(bash scripts/install-cuda-toolchain.sh); then
  export FERROTRON_NVCC="$nvcc_path"
  # NVRTC (the fused kernels' run-time compiler) comes in the same venv, beside nvcc.
  nvrtc="$(dirname "$(dirname "$nvcc_path")")/lib/libnvrtc.so.13"
  if [ -n "${FERROTRON_NVRTC:-}" ]; then
    :
  elif [ -f "$nvrtc" ]; then
    export FERROTRON_NVRTC="$nvrtc"
  else
    echo "test.sh: no NVRTC at $nvrtc: the run-time fused kernels are not tested" >&2
  fi
else
  echo "test.sh: could not install nvcc; kernels will not be built (GPU paths untested)" >&2
fi

features="nccl"
if [ "$(bash scripts/install-system-deps.sh)" = "mpi=yes" ]; then
  features="nccl,mpi"
else
  echo "test.sh: no OpenMPI: the MPI communicator is not built or tested" >&2
fi

exec cargo test --workspace --features "$features" "$@"
