#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs the whole suite.
#
# - nvcc 13.0 from pinned PyPI wheels into ~/.cache/ferrotron (scripts/install-cuda-toolchain.sh),
#   so build.rs compiles and embeds every kernel;
# - libclang for the bindgen ABI freshness test (Debian: libclang-dev; installed when root).
# Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh --release`).
set -euo pipefail
cd "$(dirname "$0")/.."

if nvcc_path=$(bash scripts/install-cuda-toolchain.sh); then
  export FERROTRON_NVCC="$nvcc_path"
else
  echo "test.sh: could not install nvcc; kernels will not be built (GPU paths untested)" >&2
fi

if ! ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing libclang-dev (bindgen ABI freshness test)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libclang-dev) >&2
  else
    echo "test.sh: libclang not found; the ABI freshness test will skip (install libclang-dev)" >&2
  fi
fi

exec cargo test --workspace "$@"
