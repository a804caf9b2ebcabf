/*
 * ferrotron_params.h: the parameter structs of every ferrotron CUDA kernel.
 *
 * THIS FILE IS THE ABI'S SINGLE SOURCE. Kernels (kernels/<family>/<name>.cu) take these structs
 * BY VALUE as their only argument; Rust reads the very same definitions through bindgen, whose
 * output is committed as src/kernels/abi.rs. Never hand-edit src/kernels/abi.rs: change this
 * header, then regenerate it with
 *
 *     FERROTRON_BLESS=1 cargo test --test kernel_abi
 *
 * (bindgen needs libclang: `apt-get install libclang-dev`). Without FERROTRON_BLESS that test
 * fails when the committed file is stale, so the two cannot drift apart silently. A new struct
 * also needs its `unsafe impl DeviceRepr` in src/kernels/mod.rs.
 *
 * Rules, so that one layout holds for nvcc, clang/bindgen and the PTX emulator alike:
 *   - plain C only (no C++ features, no CUDA types): this header is also parsed as C by bindgen;
 *   - device pointers are `const void*` (inputs) / `void*` (outputs): the element type is the
 *     kernel's suffix (_f32, _bf16), not the struct's;
 *   - sizes and counts are uint64_t; order fields so that no padding is needed;
 *   - matrices are row-major and dense: element (r, c) is at index r * cols + c.
 */
#ifndef FERROTRON_PARAMS_H
#define FERROTRON_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Parameters of `ft_bias_gelu_fwd_{f32,bf16}`: `y[r, c] = gelu(x[r, c] + bias[c])`.
 *
 * GeLU is Megatron's tanh approximation, evaluated in f32 on `z = x + bias` (formed in f32), the
 * result rounded once to the element type. `y == x` (in place) is allowed; `y` may not overlap
 * `bias`.
 */
typedef struct FtBiasGeluFwdParams {
    /** Input, `[rows, cols]` row-major. */
    const void* x;
    /** Bias, `[cols]`. */
    const void* bias;
    /** Output, `[rows, cols]` row-major. */
    void* y;
    /** Number of rows (e.g. tokens). */
    uint64_t rows;
    /** Number of columns (e.g. hidden / tp); the bias length. */
    uint64_t cols;
} FtBiasGeluFwdParams;

/**
 * Parameters of `ft_bias_gelu_bwd_{f32,bf16}`: `dx[r, c] = dy[r, c] * gelu'(x[r, c] + bias[c])`.
 *
 * `x` and `bias` are the forward inputs; dbias comes from `FtBiasGeluDbiasParams`'s kernel.
 * `dx == dy` (in place) is allowed.
 */
typedef struct FtBiasGeluBwdParams {
    /** Gradient of the output, `[rows, cols]` row-major. */
    const void* dy;
    /** The forward input, `[rows, cols]` row-major. */
    const void* x;
    /** The forward bias, `[cols]`. */
    const void* bias;
    /** Gradient of the input (of `x + bias`), `[rows, cols]` row-major. */
    void* dx;
    /** Number of rows. */
    uint64_t rows;
    /** Number of columns; the bias length. */
    uint64_t cols;
} FtBiasGeluBwdParams;

/**
 * Parameters of `ft_bias_gelu_dbias_{f32,bf16}`:
 * `dbias[c] = dy[0, c] * gelu'(x[0, c] + bias[c]) + ... + dy[rows - 1, c] * gelu'(...)`.
 *
 * The products are the f32 values `ft_bias_gelu_bwd` computes for dx, summed BEFORE any rounding
 * to the element type (summing a bf16 dx would add one bf16 rounding error per row), rows in
 * order with an f32 accumulator, rounded once: bitwise the same run after run. `dbias` may not
 * overlap the inputs. Launch it before the dx kernel when `dx == dy`.
 */
typedef struct FtBiasGeluDbiasParams {
    /** Gradient of the output, `[rows, cols]` row-major. */
    const void* dy;
    /** The forward input, `[rows, cols]` row-major. */
    const void* x;
    /** The forward bias, `[cols]`. */
    const void* bias;
    /** Gradient of the bias, `[cols]`. */
    void* dbias;
    /** Number of rows. */
    uint64_t rows;
    /** Number of columns; the bias length. */
    uint64_t cols;
} FtBiasGeluDbiasParams;

/**
 * Parameters of every `ft_gemm_<layout>_<epilogue>_<out>[_small|_unaligned]` kernel
 * (kernels/gemm/gemm.cu): `c[M, N] = epilogue(op(a)[M, K] * op(b)[K, N])`, bf16 `a`/`b`, f32
 * accumulation, `c` of the kernel's output type (`_bf16` or `_f32`).
 *
 * Storage (row-major, dense): layout `nt`: `a` is `[m, k]`, `b` is `[n, k]`; `nn`: `a` is
 * `[m, k]`, `b` is `[k, n]`; `tn`: `a` is `[k, m]`, `b` is `[k, n]`. `bias` and `pre` have the
 * output's element type. `c` may not overlap `a`, `b`, `bias` or `pre`.
 */
typedef struct FtGemmParams {
    /** A operand (bf16), `[m, k]` (`nt`, `nn`) or `[k, m]` (`tn`). */
    const void* a;
    /** B operand (bf16), `[n, k]` (`nt`) or `[k, n]` (`nn`, `tn`). */
    const void* b;
    /** Output `[m, n]`; also read by the `accum` epilogue (`c += acc`). */
    void* c;
    /** Bias `[n]` (`bias`, `bias_gelu` epilogues), else unused (may be NULL). */
    const void* bias;
    /** `[m, n]`: written with the pre-activation `acc + bias` by `bias_gelu` when non-NULL; the
     *  GeLU input read by `dgelu`; else unused (may be NULL). */
    void* pre;
    /** Rows of `op(a)` and `c`. */
    uint64_t m;
    /** Columns of `op(b)` and `c`. */
    uint64_t n;
    /** The reduction dimension. */
    uint64_t k;
} FtGemmParams;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FERROTRON_PARAMS_H */
