#!/usr/bin/env bash
# GPU checks, in two halves (../shared/gpu.md): the GPU machine has the driver but no Rust
# toolchain and no network, so everything is built here and run there.
#
#   bash scripts/gpu-check.sh build   # here: release test binaries + CLI into .gpu/, packed
#                                     # into .gpu.tar.xz (~11 MB; .gpu/ itself is ~430 MB, over
#                                     # the device tool's 64 MiB carry limit: every binary
#                                     # embeds the kernel images)
#   tar -xJf .gpu.tar.xz && bash .gpu/run.sh   # there (device tool: carry [".gpu.tar.xz"]),
#                                              # logs under $OUT
#
# Without a GPU the run half says so and fails (FERROTRON_REQUIRE_GPU=1 is its default).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-build}" in
build)
  export FERROTRON_NVCC="$(bash scripts/install-cuda-toolchain.sh)"
  export FERROTRON_REQUIRE_KERNELS=1
  rm -rf .gpu && mkdir -p .gpu/tests
  cargo build --release --bin ferrotron
  cp target/release/ferrotron .gpu/
  # Test executables: every integration test plus the library's unit tests.
  cargo test --release --features nccl --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' \
    | while read -r exe; do cp "$exe" .gpu/tests/; done
  cat > .gpu/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine from the repository root; writes logs to ${OUT:-.gpu/out}.
set -uo pipefail
out="${OUT:-.gpu/out}"; mkdir -p "$out"
libdirs=$(ldconfig -p | awk '/libcuda\.so|libnccl\.so|libcublasLt\.so|libnvrtc\.so/ {print $NF}' | xargs -r -n1 dirname | sort -u | tr '\n' ':')
# The PyPI NCCL wheel ships only libnccl.so.2, which cudarc does not look for: link libnccl.so.
nccl=$(find / -name 'libnccl.so.2' 2>/dev/null | head -n 1)
if [ -n "$nccl" ]; then linkdir=$(mktemp -d); ln -s "$nccl" "$linkdir/libnccl.so"; libdirs="$linkdir:$libdirs"; export FERROTRON_REQUIRE_NCCL=1; fi
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:-}"
# NVRTC for the run-time code generator (Fused::compile): the machine's own (PyTorch ships one).
nvrtc=$(find / \( -name 'libnvrtc.so.13*' -o -name 'libnvrtc.so.12*' \) -not -name '*builtins*' 2>/dev/null | sort | head -n 1)
if [ -n "$nvrtc" ]; then export FERROTRON_NVRTC="$nvrtc" FERROTRON_REQUIRE_NVRTC=1; fi
export FERROTRON_REQUIRE_GPU="${FERROTRON_REQUIRE_GPU:-1}"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$out/nvidia-smi.txt"
status=0
.gpu/ferrotron check --backend cuda 2>&1 | tee "$out/check-cuda.txt" || status=1
for t in .gpu/tests/*; do
  echo "== $t" | tee -a "$out/tests.txt"
  "$t" 2>&1 | tee -a "$out/tests.txt" || status=1
done
.gpu/ferrotron bench kernels --gpu > "$out/bench-kernels-gpu.txt" 2>&1 || status=1
# The peer collectives' kernels (one rank per GPU, or 2 virtual ranks on a one-GPU machine)
# against a device-to-device copy measured in the same run.
for op in all_reduce all_gather reduce_scatter; do
  .gpu/ferrotron bench comm --backend peer-gpu --op "$op" --ranks 2 --min 64K --max 256M --dtype bf16 --iters 10 >> "$out/bench-comm-peer-gpu.txt" 2>&1 || status=1
done
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck .gpu/ferrotron check --backend cuda > "$out/memcheck.txt" 2>&1 || status=1
  compute-sanitizer --tool racecheck .gpu/ferrotron check --backend cuda > "$out/racecheck.txt" 2>&1 || status=1
else
  echo "compute-sanitizer not found" > "$out/memcheck.txt"
fi
date -u +%Y-%m-%dT%H:%MZ > "$out/date.txt"
exit $status
RUN
  chmod +x .gpu/run.sh
  du -sh .gpu
  # The binaries share most of their bytes (the embedded kernel images): one xz stream with a
  # dictionary larger than a binary stores them once.
  tar -cf - .gpu/ferrotron .gpu/tests .gpu/run.sh | xz -T2 -6 --lzma2=dict=256MiB > .gpu.tar.xz
  du -sh .gpu.tar.xz
  echo "built .gpu.tar.xz: on the GPU machine (carry .gpu.tar.xz) run: tar -xJf .gpu.tar.xz && bash .gpu/run.sh"
  ;;
*)
  echo "usage: scripts/gpu-check.sh build" >&2
  exit 2
  ;;
esac
