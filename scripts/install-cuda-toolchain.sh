#!/usr/bin/env bash
# Installs nvcc (CUDA 13.0) from NVIDIA's pinned PyPI wheels into a per-user cache, idempotently.
#
#   scripts/install-cuda-toolchain.sh            # installs (or finds) the toolchain, prints nvcc's path
#   FERROTRON_CUDA_CACHE=/some/dir scripts/...   # another cache root
#
# No GPU and no system CUDA are needed: nvcc, ptxas, fatbinary and the CUDA headers all come from
# the wheels. The five pins must move together: nvidia-cuda-nvcc alone pulls a newer nvvm whose PTX
# the 13.0 ptxas rejects ("Unsupported .version 9.5"). See ../shared/gpu.md.
set -euo pipefail

PINS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-cuda-nvrtc==13.0.88"
)
CACHE="${FERROTRON_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrotron/cuda-13.0}"
VENV="$CACHE/venv"
STAMP="$CACHE/.installed"
WANT="$(printf '%s\n' "${PINS[@]}")"

find_nvcc() {
  local n
  n=$(ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n 1)
  [ -n "$n" ] && [ -x "$n" ] && printf '%s\n' "$n"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && nvcc_path=$(find_nvcc); then
  echo "$nvcc_path"
  exit 0
fi

command -v gcc >/dev/null || { echo "install-cuda-toolchain: nvcc needs gcc on PATH (apt-get install gcc g++)" >&2; exit 1; }
PY="${FERROTRON_PYTHON:-python3}"
mkdir -p "$CACHE"
rm -f "$STAMP"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" >&2
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${PINS[@]}" >&2
nvcc_path=$(find_nvcc) || { echo "install-cuda-toolchain: nvcc not found under $VENV after install" >&2; exit 1; }
# Sanity: the compiler runs and reports the pinned release.
"$nvcc_path" --version | grep -q "release 13.0" || { echo "install-cuda-toolchain: unexpected nvcc version" >&2; "$nvcc_path" --version >&2; exit 1; }
printf '%s' "$WANT" > "$STAMP"
echo "$nvcc_path"
