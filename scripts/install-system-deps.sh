#!/usr/bin/env bash
# System packages the tests need beyond Rust and gcc (Debian/Ubuntu names):
#   libclang-dev   bindgen: the kernel-ABI freshness test and the mpi crate's bindings
#   libopenmpi-dev openmpi-bin   the MPI communicator (feature `mpi`) and its mpirun tests
# Installs what is missing when run as root with apt-get; otherwise says what to install.
# Prints `mpi=yes` or `mpi=no` on stdout (whether the mpi feature can be built and run).
set -euo pipefail

missing=()
ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' || missing+=(libclang-dev)
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: installing ${missing[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >&2
  else
    echo "install-system-deps: missing ${missing[*]} (install them to run every test)" >&2
  fi
fi

if command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1; then
  echo mpi=yes
else
  echo mpi=no
fi
