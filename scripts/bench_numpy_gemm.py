#!/usr/bin/env python3
"""Baseline for `cargo bench --bench ops`: numpy (OpenBLAS) f32 GEMM GFLOP/s on this machine.

    python3 scripts/bench_numpy_gemm.py [threads]

Per the environment notes, OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE slow a current numpy; unset both
in the command that runs this for a fair baseline.
"""
import os
import sys
import time

threads = sys.argv[1] if len(sys.argv) > 1 else "2"
os.environ.setdefault("OPENBLAS_NUM_THREADS", threads)
import numpy as np  # noqa: E402

for n in (1024, 2048):
    a = np.random.default_rng(1).uniform(-1, 1, (n, n)).astype(np.float32)
    b = a.copy()
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    print(f"numpy f32 gemm {n}^3 threads={threads}: {2 * n**3 / best / 1e9:.1f} GFLOP/s ({best * 1e3:.1f} ms)")
