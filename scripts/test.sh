#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs the whole suite.
#
# - nvcc 13.0 from pinned PyPI wheels into ~/.cache/ferrotron (scripts/install-cuda-toolchain.sh),
#   so build.rs compiles and embeds every kernel;
# - libclang and OpenMPI (scripts/install-system-deps.sh; installed when root), so the ABI
#   freshness test and the MPI communicator's mpirun tests run (features `mpi` and `nccl`).
# Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh --release`).
set -euo pipefail
cd "$(dirname "$0")/.."

if nvcc_path=$(bash scripts/install-cuda-toolchain.sh); then
  export FERROTRON_NVCC="$nvcc_path"
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
